/**
 * termite coordinator: keeps the list of live workers.
 *
 *   deno run -A coordinator.ts --secret /etc/termite/secret [--port 1230] [--http-port 1231]
 */
import { startCoordinator } from "./coordinator/mod.ts";
import {
  type FlagSpecs,
  loadSecretFile,
  loadTlsFlags,
  parseRoleFlags,
  type PortFlag,
  runRole,
  secretFlag,
  tlsFlagSpecs,
  untilSignal,
} from "./common/cli.ts";
import { VERSION } from "./common/protocol.ts";
import { formatHostPort } from "./common/address.ts";

const FLAGS: FlagSpecs = {
  secret: secretFlag("coordinator"),
  host: { type: "string", value: "ADDR", default: "0.0.0.0", help: "address to listen on" },
  port: {
    type: "string",
    value: "N",
    default: "1230",
    help: "port for workers and masters (--coordinator HOST:PORT on theirs)",
  },
  "http-host": {
    type: "string",
    value: "ADDR",
    default: "127.0.0.1",
    help: "address of the status page",
  },
  "http-port": {
    type: "string",
    value: "N|none",
    default: "1231",
    help: "port of the status page (HTML, /status.json); none for no page",
  },
  "worker-timeout": {
    type: "string",
    value: "DURATION",
    default: "30s",
    help: "drop a worker not heard from this long",
  },
  ...tlsFlagSpecs("the status page (--http-port)"),
};

const flags = parseRoleFlags("coordinator", Deno.args, {
  usage: "deno run -A coordinator.ts [flags]",
  about: "Keeps the list of live workers of one farm and pushes it to masters.",
  flags: FLAGS,
});
const ports: PortFlag[] = [];
await runRole("coordinator", ports, async () => {
  const hostname = flags.string("host")!;
  const port = flags.port("port")!;
  const httpHostname = flags.string("http-host")!;
  const httpPort = flags.string("http-port") === "none" ? undefined : flags.port("http-port");
  ports.push({ flag: "--port", hostFlag: "--host", hostname, port });
  if (httpPort !== undefined) {
    ports.push({
      flag: "--http-port",
      hostFlag: "--http-host",
      hostname: httpHostname,
      port: httpPort,
    });
  }
  const workerTimeoutMs = flags.durationMs("worker-timeout");
  const secretPath = flags.path("secret")!;
  const tls = await loadTlsFlags(flags);
  const secret = await loadSecretFile(secretPath);
  const here = new URL(".", import.meta.url).pathname;
  const quote = (s: string) => /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replaceAll("'", `'\\''`)}'`;
  const coordinator = await startCoordinator({
    hostname,
    port,
    httpHostname,
    httpPort,
    secret,
    tls,
    workerTimeoutMs,
    version: VERSION,
    tokenCommand: `deno run -A ${quote(`${here}token.ts`)} --secret ${quote(secretPath)}`,
    log: (m) => console.error(`termite coordinator: ${m}`),
  });
  console.error(
    `termite coordinator: listening on port ${coordinator.port}` +
      (coordinator.httpPort
        ? `, status page on ${tls ? "https" : "http"}://` +
          `${formatHostPort(httpHostname, coordinator.httpPort)}/`
        : ""),
  );
  await untilSignal();
  await coordinator.close();
});
