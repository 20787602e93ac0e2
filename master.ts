/**
 * termite master: run in the root of the build tree. Wrappers find it through
 * `.termite-socket`.
 *
 *   deno run -A master.ts --secret secret.txt --coordinator host:1230 [--jobs 4]
 */
import { parseArgs } from "node:util";
import { startMaster } from "./master/mod.ts";
import { DEFAULT_EXCLUSIONS } from "./master/paths.ts";
import { loadSecret } from "./rpc/mod.ts";
import { defaultCacheDir, die, parseDurationMs, untilSignal } from "./common/cli.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    secret: { type: "string", default: "secret.txt" },
    coordinator: { type: "string" },
    jobs: { type: "string", default: "4" },
    socket: { type: "string" },
    exclude: { type: "string", multiple: true },
    "cache-dir": { type: "string" },
    retries: { type: "string", default: "2" },
    "job-timeout": { type: "string", default: "10m" },
    "job-silence": { type: "string", default: "30s" },
    "keep-alive": { type: "string", default: "0" },
    "status-port": { type: "string" },
    "no-local-fallback": { type: "boolean", default: false },
    help: { type: "boolean", default: false },
  },
});
if (values.help) {
  console.log(`usage: master.ts [--secret FILE] [--coordinator HOST:PORT] [--jobs N]
  [--socket PATH] (its folder is the writable root; default ./.termite-socket)
  [--exclude PREFIX]... (default ${DEFAULT_EXCLUSIONS.join(",")})
  [--cache-dir DIR] [--retries N] [--job-timeout 10m] [--keep-alive 0 (= forever)]
  [--job-silence 30s] (give up on a worker silent this long during a job)
  [--status-port N] [--no-local-fallback]`);
  Deno.exit(0);
}
try {
  const secret = await loadSecret(values.secret);
  const socketPath = values.socket ?? `${Deno.cwd()}/.termite-socket`;
  const root = await Deno.realPath(socketPath.slice(0, socketPath.lastIndexOf("/")) || "/");
  const exclusions = values.exclude
    ? values.exclude.flatMap((e) => e.split(",")).filter((e) => e !== "")
    : DEFAULT_EXCLUSIONS;
  const running = await startMaster({
    root,
    secret,
    onSecretMismatch: () =>
      die(
        `termite master: the coordinator at ${values.coordinator} holds another secret than ` +
          `${values.secret}: use the same secret file on every host`,
      ),
    coordinator: values.coordinator,
    jobs: Number(values.jobs),
    socketPath: `${root}/${socketPath.slice(socketPath.lastIndexOf("/") + 1)}`,
    exclusions,
    cacheDir: values["cache-dir"] ?? defaultCacheDir("master"),
    retries: Number(values.retries),
    jobTimeoutMs: parseDurationMs(values["job-timeout"]),
    jobSilenceMs: parseDurationMs(values["job-silence"]),
    localFallback: !values["no-local-fallback"],
    statusPort: values["status-port"] ? Number(values["status-port"]) : undefined,
  });
  console.error(
    `termite master: serving ${root} on ${running.socketPath}` +
      (running.statusPort ? `, status on http://127.0.0.1:${running.statusPort}/` : ""),
  );
  const keepAliveMs = parseDurationMs(values["keep-alive"]);
  const idle = keepAliveMs > 0
    ? new Promise<void>((resolve) => {
      let last = running.master.stats.jobs;
      const timer = setInterval(() => {
        if (running.master.stats.jobsRunning > 0 || running.master.stats.jobs !== last) {
          last = running.master.stats.jobs;
          return;
        }
        clearInterval(timer);
        console.error("termite master: idle, exiting");
        resolve();
      }, keepAliveMs);
    })
    : new Promise<void>(() => {});
  await Promise.race([untilSignal(), idle]);
  await running.close();
  Deno.exit(0);
} catch (err) {
  die(`termite master: ${(err as Error).message}`);
}
