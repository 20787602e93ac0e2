/**
 * termite worker: runs as root on each build machine.
 *
 *   deno run -A worker.ts --secret /etc/termite/secret --coordinator host:1230 --jobs 4
 *
 * The worker keeps its FUSE mounts in a mount namespace of its own: started
 * outside one, it re-executes itself under `unshare --mount --propagation private`.
 */
import { startWorker } from "./worker/worker.ts";
import { isUnspecifiedHost } from "./common/address.ts";
import {
  defaultCacheDir,
  die,
  dieOnSecretMismatch,
  effectiveUid,
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
  secret: secretFlag("worker"),
  coordinator: {
    type: "string",
    value: "HOST:PORT",
    required: true,
    help: "the coordinator to register with (its --port, 1230 unless changed)",
  },
  jobs: {
    type: "string",
    value: "N",
    default: String(navigator.hardwareConcurrency),
    defaultText: `the number of CPUs, ${navigator.hardwareConcurrency} here`,
    help: "job slots: jobs this worker runs at once, shared among masters",
  },
  host: {
    type: "string",
    value: "ADDR",
    default: "0.0.0.0",
    help: "address masters connect to; on 0.0.0.0 the coordinator lists the worker at the " +
      "address its connection came from",
  },
  port: { type: "string", value: "N", default: "1232", help: "port masters connect to" },
  advertise: {
    type: "string",
    value: "HOST:PORT",
    defaultText: "--host:--port, or the address the coordinator sees for 0.0.0.0",
    help: "address masters should use, when not the one the coordinator sees (NAT, a proxy)",
  },
  "metrics-host": {
    type: "string",
    value: "ADDR",
    default: "127.0.0.1",
    help: "address of the Prometheus /metrics listener; 0.0.0.0 (or an address Prometheus " +
      "reaches) to scrape it from another host",
  },
  "metrics-port": {
    type: "string",
    value: "N|none",
    default: "1234",
    help: "port of the Prometheus /metrics listener; none for no listener",
  },
  "cache-dir": {
    type: "string",
    value: "DIR",
    defaultText: "$XDG_CACHE_HOME/termite/worker, else ~/.cache/termite/worker",
    help: "content store, mirrors and job scratch",
  },
  "store-max": { type: "string", value: "SIZE", default: "8G", help: "content store size" },
  "mirror-idle": {
    type: "string",
    value: "DURATION",
    default: "10m",
    help: "unmount a master's mirror unused this long",
  },
  "mirrors-max": {
    type: "string",
    value: "N",
    default: "64",
    help: "mirrors (masters served) at once",
  },
  "job-timeout-max": {
    type: "string",
    value: "DURATION",
    default: "1h",
    help: "longest job, whatever its master asks",
  },
  "memory-max": { type: "string", value: "SIZE", default: "4G", help: "memory per job" },
  "processes-max": { type: "string", value: "N", default: "512", help: "processes per job" },
  "job-disk-max": {
    type: "string",
    value: "SIZE",
    default: "8G",
    help: "disk a job's files may take; their apparent size is capped at the same or 4G, " +
      "its /tmp at the same or 1G",
  },
  "no-favor-dynmods": {
    type: "boolean",
    help: "do not mount a favordynmods cgroup hierarchy (each job then waits for an RCU " +
      "grace period when it moves into its cgroup)",
  },
  "no-host-files": {
    type: "boolean",
    help: "always fetch file contents: never copy them from this host's own files (public " +
      "system files under /usr, /opt and the like, at the same path and of the same SHA-256)",
  },
  "job-network": {
    type: "boolean",
    help: "jobs share this host's network (by default each has only a loopback of its own)",
  },
  "record-reads": {
    type: "boolean",
    help: "record what jobs read (one bpftrace, needs tracefs and BTF), so that masters can " +
      "cache their results (the action cache)",
  },
  ...tlsFlagSpecs("/metrics (--metrics-port)"),
};

const flags = parseRoleFlags("worker", Deno.args, {
  usage: "deno run -A worker.ts --coordinator HOST:PORT [flags]   (as root)",
  about: "Runs jobs for masters in sandboxes over FUSE mirrors of their file systems.",
  flags: FLAGS,
});
if (effectiveUid() !== 0) {
  die(
    "termite worker: must run as root (it mounts FUSE mirrors and overlays, chroots and " +
      "switches each job to nobody): start it with sudo",
  );
}

if (Deno.env.get("TERMITE_WORKER_NS") !== "1") {
  // A binary made by `deno compile` runs itself; a script runs through deno.
  const self = Deno.build.standalone
    ? [Deno.execPath()]
    : [Deno.execPath(), "run", "-A", new URL(import.meta.url).pathname];
  const child = new Deno.Command("unshare", {
    args: ["--mount", "--propagation", "private", ...self, ...Deno.args],
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

const ports: PortFlag[] = [];
await runRole("worker", ports, async () => {
  flags.required("coordinator");
  const coordinator = flags.hostPort("coordinator")!;
  const hostname = flags.string("host")!;
  const port = flags.port("port")!;
  ports.push({ flag: "--port", hostFlag: "--host", hostname, port });
  const metricsHostname = flags.string("metrics-host")!;
  const metricsPort = flags.string("metrics-port") === "none"
    ? undefined
    : flags.port("metrics-port");
  if (metricsPort !== undefined) {
    ports.push({
      flag: "--metrics-port",
      hostFlag: "--metrics-host",
      hostname: metricsHostname,
      port: metricsPort,
    });
  }
  const advertise = flags.hostPort("advertise");
  const secretPath = flags.path("secret")!;
  const options = {
    jobs: flags.integer("jobs", { min: 1, max: 4096 })!,
    cacheDir: flags.path("cache-dir") ?? defaultCacheDir("worker"),
    storeBytesMax: flags.bytes("store-max"),
    mirrorIdleMs: flags.durationMs("mirror-idle"),
    mirrorsMax: flags.integer("mirrors-max", { min: 1, max: 4096 }),
    jobTimeoutMsMax: flags.durationMs("job-timeout-max"),
    memoryBytesMax: flags.bytes("memory-max"),
    processesMax: flags.integer("processes-max", { min: 1, max: 1 << 22 }),
    jobDiskBytesMax: flags.bytes("job-disk-max"),
    favorCgroupMigrations: !flags.boolean("no-favor-dynmods"),
    jobNetwork: flags.boolean("job-network"),
    recordReads: flags.boolean("record-reads"),
    hostFiles: !flags.boolean("no-host-files"),
  };
  const tls = await loadTlsFlags(flags);
  const secret = await loadSecretFile(secretPath);
  const worker = await startWorker({
    ...options,
    secret,
    tls,
    onSecretMismatch: dieOnSecretMismatch("worker", coordinator, secretPath),
    hostname,
    port,
    advertise,
    coordinator,
    metricsHostname,
    metricsPort,
  });
  const wildcard = advertise === undefined && isUnspecifiedHost(hostname);
  console.error(
    `termite worker: ${options.jobs} slots, ` +
      (worker.metricsUrl ? `metrics on ${worker.metricsUrl}, ` : "") +
      `listening as ${worker.address}` +
      (wildcard ? " (masters get the address the coordinator sees it connect from)" : ""),
  );
  await untilSignal();
  await worker.close();
  Deno.exit(0);
});
