/**
 * termite worker: runs as root on each build machine.
 *
 *   deno run -A worker.ts --secret secret.txt --coordinator host:1230 --jobs 4
 *
 * The worker keeps its FUSE mounts in a mount namespace of its own: started
 * outside one, it re-executes itself under `unshare --mount --propagation private`.
 */
import { parseArgs } from "node:util";
import { startWorker } from "./worker/worker.ts";
import { loadSecret } from "./rpc/mod.ts";
import { defaultCacheDir, die, parseBytes, parseDurationMs, untilSignal } from "./common/cli.ts";

if (Deno.env.get("TERMITE_WORKER_NS") !== "1") {
  const child = new Deno.Command("unshare", {
    args: [
      "--mount",
      "--propagation",
      "private",
      Deno.execPath(),
      "run",
      "-A",
      new URL(import.meta.url).pathname,
      ...Deno.args,
    ],
    env: { TERMITE_WORKER_NS: "1" },
    stdin: "inherit",
    stdout: "inherit",
    stderr: "inherit",
  }).spawn();
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    Deno.addSignalListener(signal, () => {
      try {
        child.kill(signal);
      } catch {
        // Already gone.
      }
    });
  }
  Deno.exit((await child.status).code);
}

const { values } = parseArgs({
  args: Deno.args,
  options: {
    secret: { type: "string", default: "secret.txt" },
    coordinator: { type: "string" },
    jobs: { type: "string", default: String(navigator.hardwareConcurrency) },
    host: { type: "string", default: "0.0.0.0" },
    port: { type: "string", default: "1232" },
    advertise: { type: "string" },
    "cache-dir": { type: "string" },
    "store-max": { type: "string", default: "8G" },
    "mirror-idle": { type: "string", default: "10m" },
    "mirrors-max": { type: "string", default: "64" },
    "job-timeout-max": { type: "string", default: "1h" },
    "memory-max": { type: "string", default: "4G" },
    "processes-max": { type: "string", default: "512" },
    "job-disk-max": { type: "string", default: "8G" },
    "no-favor-dynmods": { type: "boolean", default: false },
    help: { type: "boolean", default: false },
  },
});
if (values.help) {
  console.log(`usage: worker.ts [--secret FILE] [--coordinator HOST:PORT] [--jobs N]
  [--host H] [--port N] [--advertise HOST:PORT] [--cache-dir DIR] [--store-max 8G]
  [--mirror-idle 10m] [--mirrors-max 64] [--job-timeout-max 1h] [--memory-max 4G] [--processes-max 512]
  [--job-disk-max 8G] (bytes a job may write: files in its writable layer and /tmp)
  [--no-favor-dynmods] (do not mount a favordynmods cgroup hierarchy: each job then waits
  for an RCU grace period when it moves into its cgroup)`);
  Deno.exit(0);
}
if (Deno.uid() !== 0) die("termite worker: must run as root (FUSE mounts, chroot, setuid)");
try {
  const secret = await loadSecret(values.secret);
  const worker = await startWorker({
    secret,
    onSecretMismatch: () =>
      die(
        `termite worker: the coordinator at ${values.coordinator} holds another secret than ` +
          `${values.secret}: use the same secret file on every host`,
      ),
    jobs: Number(values.jobs),
    hostname: values.host,
    port: Number(values.port),
    advertise: values.advertise,
    coordinator: values.coordinator,
    cacheDir: values["cache-dir"] ?? defaultCacheDir("worker"),
    storeBytesMax: parseBytes(values["store-max"]),
    mirrorIdleMs: parseDurationMs(values["mirror-idle"]),
    mirrorsMax: Number(values["mirrors-max"]),
    jobTimeoutMsMax: parseDurationMs(values["job-timeout-max"]),
    memoryBytesMax: parseBytes(values["memory-max"]),
    processesMax: Number(values["processes-max"]),
    jobDiskBytesMax: parseBytes(values["job-disk-max"]),
    favorCgroupMigrations: !values["no-favor-dynmods"],
  });
  console.error(`termite worker: ${values.jobs} slots, listening as ${worker.address}`);
  await untilSignal();
  await worker.close();
  Deno.exit(0);
} catch (err) {
  die(`termite worker: ${(err as Error).message}`);
}
