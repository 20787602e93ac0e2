/**
 * termite coordinator: keeps the list of live workers.
 *
 *   deno run -A coordinator.ts --secret secret.txt [--port 1230] [--http-port 1231]
 */
import { parseArgs } from "node:util";
import { startCoordinator } from "./coordinator/mod.ts";
import { loadSecret } from "./rpc/mod.ts";
import { die, parseDurationMs, untilSignal } from "./common/cli.ts";
import { VERSION } from "./common/protocol.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    secret: { type: "string", default: "secret.txt" },
    host: { type: "string", default: "0.0.0.0" },
    port: { type: "string", default: "1230" },
    "http-host": { type: "string", default: "127.0.0.1" },
    "http-port": { type: "string", default: "1231" },
    "worker-timeout": { type: "string", default: "30s" },
    help: { type: "boolean", default: false },
  },
});
if (values.help) {
  console.log(
    "usage: coordinator.ts [--secret FILE] [--host H] [--port N] [--http-host H] [--http-port N] [--worker-timeout 30s]",
  );
  Deno.exit(0);
}
try {
  const secret = await loadSecret(values.secret);
  const coordinator = await startCoordinator({
    hostname: values.host,
    port: Number(values.port),
    httpHostname: values["http-host"],
    httpPort: values["http-port"] === "none" ? undefined : Number(values["http-port"]),
    secret,
    workerTimeoutMs: parseDurationMs(values["worker-timeout"]),
    version: VERSION,
    log: (m) => console.error(`termite coordinator: ${m}`),
  });
  console.error(
    `termite coordinator: listening on port ${coordinator.port}` +
      (coordinator.httpPort
        ? `, status page on http://${values["http-host"]}:${coordinator.httpPort}/`
        : ""),
  );
  await untilSignal();
  await coordinator.close();
} catch (err) {
  die(`termite coordinator: ${(err as Error).message}`);
}
