/**
 * termite master: run in the root of the build tree. Wrappers find it through
 * `.termite-socket`.
 *
 *   deno run -A master.ts --secret /etc/termite/secret --coordinator host:1230 [--jobs 4]
 */
import { startMaster } from "./master/mod.ts";
import { DEFAULT_EXCLUSIONS } from "./master/paths.ts";
import {
  defaultCacheDir,
  dieOnSecretMismatch,
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

const FLAGS: FlagSpecs = {
  secret: secretFlag("master"),
  coordinator: {
    type: "string",
    value: "HOST:PORT",
    defaultText: "none: every job runs here",
    help: "the coordinator listing the workers",
  },
  jobs: {
    type: "string",
    value: "N",
    default: "4",
    help:
      "jobs to run at once on each worker, at most its slots; a worker holds nothing for an idle master and shares its slots in turn between the masters whose jobs wait (make -j should be about workers × this)",
  },
  socket: {
    type: "string",
    value: "PATH",
    defaultText: "./.termite-socket",
    help: "the wrappers' socket; its folder is the build tree, the only place jobs may write",
  },
  exclude: {
    type: "string",
    value: "PREFIX",
    multiple: true,
    defaultText: DEFAULT_EXCLUSIONS.join(","),
    help: "paths never served to workers (repeat the flag or separate with commas)",
  },
  "cache-dir": {
    type: "string",
    value: "DIR",
    defaultText: "$XDG_CACHE_HOME/termite/master, else ~/.cache/termite/master",
    help: "the path → SHA-256 cache",
  },
  retries: {
    type: "string",
    value: "N",
    default: "2",
    help: "tries on other workers before a failed job runs here",
  },
  "job-timeout": {
    type: "string",
    value: "DURATION",
    default: "10m",
    help: "longest remote job",
  },
  "job-silence": {
    type: "string",
    value: "DURATION",
    default: "30s",
    help: "give up on a worker silent this long during a job",
  },
  "keep-alive": {
    type: "string",
    value: "DURATION",
    default: "0",
    help: "exit after this long without jobs; 0 = run until stopped",
  },
  "status-port": {
    type: "string",
    value: "N",
    defaultText: "none",
    help: "serve a status page (jobs run remotely and locally, per worker) on 127.0.0.1:N",
  },
  "no-action-cache": {
    type: "boolean",
    help: "run every command again, even when its inputs are unchanged (no action cache)",
  },
  "action-cache-max": {
    type: "string",
    help: "bytes the action cache may take in the cache dir",
    defaultText: "2G",
  },
  "no-local-fallback": {
    type: "boolean",
    help: "fail a job that no worker could run instead of running it here",
  },
  ...tlsFlagSpecs(),
};

const flags = parseRoleFlags("master", Deno.args, {
  usage: "deno run -A /path/to/termite/master.ts --coordinator HOST:PORT [flags]",
  about: "Serves the build tree to workers and runs the wrappers' commands on them; start it " +
    "in the root of the build tree.",
  flags: FLAGS,
});
const ports: PortFlag[] = [];
await runRole("master", ports, async () => {
  const coordinator = flags.hostPort("coordinator");
  const secretPath = flags.path("secret")!;
  const socketPath = flags.path("socket") ?? `${Deno.cwd()}/.termite-socket`;
  const statusPort = flags.port("status-port");
  if (statusPort !== undefined) {
    ports.push({ flag: "--status-port", hostname: "127.0.0.1", port: statusPort });
  }
  const options = {
    jobs: flags.integer("jobs", { min: 1, max: 4096 })!,
    retries: flags.integer("retries", { min: 0, max: 100 })!,
    jobTimeoutMs: flags.durationMs("job-timeout")!,
    jobSilenceMs: flags.durationMs("job-silence")!,
    keepAliveMs: flags.durationMs("keep-alive")!,
    cacheDir: flags.path("cache-dir") ?? defaultCacheDir("master"),
  };
  const tls = await loadTlsFlags(flags);
  const secret = await loadSecretFile(secretPath);
  const root = await Deno.realPath(socketPath.slice(0, socketPath.lastIndexOf("/")) || "/");
  const excluded = flags.list("exclude");
  const exclusions = excluded
    ? excluded.flatMap((e) => e.split(",")).filter((e) => e !== "")
    : DEFAULT_EXCLUSIONS;
  const running = await startMaster({
    root,
    secret,
    tls,
    onSecretMismatch: dieOnSecretMismatch("master", coordinator, secretPath),
    coordinator,
    jobs: options.jobs,
    socketPath: `${root}/${socketPath.slice(socketPath.lastIndexOf("/") + 1)}`,
    exclusions,
    cacheDir: options.cacheDir,
    retries: options.retries,
    jobTimeoutMs: options.jobTimeoutMs,
    jobSilenceMs: options.jobSilenceMs,
    localFallback: !flags.boolean("no-local-fallback"),
    actionCache: !flags.boolean("no-action-cache"),
    actionCacheBytesMax: flags.bytes("action-cache-max"),
    statusPort,
  });
  console.error(
    `termite master: serving ${root} on ${running.socketPath}` +
      (running.statusPort ? `, status on http://127.0.0.1:${running.statusPort}/` : ""),
  );
  const keepAliveMs = options.keepAliveMs;
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
});
