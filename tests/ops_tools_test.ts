/**
 * The operator's commands: token.ts (drain and stop tokens) and monitor.ts
 * (the terminal view), run as processes against an in-process coordinator.
 */
import assert from "node:assert/strict";
import { connect, secretFromBytes } from "../rpc/mod.ts";
import { registerWorker, startCoordinator, verifyAdminToken } from "../coordinator/mod.ts";
import { farmLines, slotBar, statusLines, terminalSafe } from "../common/monitor_text.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const dec = new TextDecoder();

async function run(script: string, args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${ROOT}${script}`, ...args],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

async function secretFile(): Promise<{ path: string; key: CryptoKey; dir: string }> {
  const dir = await Deno.makeTempDir({ prefix: "termite-ops-" });
  const bytes = crypto.getRandomValues(new Uint8Array(32));
  const path = `${dir}/secret`;
  await Deno.writeFile(path, bytes, { mode: 0o600 });
  return { path, key: await secretFromBytes(bytes), dir };
}

async function waitFor(condition: () => boolean, what: string, limitMs = 10_000): Promise<void> {
  const deadline = Date.now() + limitMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`Timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

Deno.test("token.ts prints a token the coordinator accepts, and --post drains a worker", async () => {
  const { path, key, dir } = await secretFile();
  try {
    const printed = await run("token.ts", [
      "--secret",
      path,
      "--action",
      "drain",
      "--worker",
      "w1",
    ]);
    assert.equal(printed.code, 0, printed.stderr);
    const token = printed.stdout.trim();
    const nowS = Math.floor(Date.now() / 1000);
    assert.ok(await verifyAdminToken(token, { secret: key, action: "drain", id: "w1", nowS }));
    assert.equal(
      await verifyAdminToken(token, { secret: key, action: "stop", id: "w1", nowS }),
      undefined,
    );

    await using coordinator = await startCoordinator({
      hostname: "127.0.0.1",
      port: 0,
      httpPort: 0,
      httpHostname: "127.0.0.1",
      secret: key,
    });
    let drained = false;
    await using worker = registerWorker({
      coordinator: `127.0.0.1:${coordinator.port}`,
      secret: key,
      info: () => ({
        id: "w1",
        address: "127.0.0.1:4100",
        hostname: "h",
        slots: 2,
        jobsRunning: 0,
        load: 0,
        version: "t",
      }),
      onDrain: () => drained = true,
      intervalMs: 50,
    });
    await waitFor(() => worker.registered, "w1 to register");
    const page = `http://127.0.0.1:${coordinator.httpPort}/`;
    const posted = await run("token.ts", [
      "--secret",
      path,
      "--action",
      "drain",
      "--worker",
      "w1",
      "--post",
      page,
    ]);
    assert.equal(posted.code, 0, posted.stderr);
    assert.match(posted.stdout, /drain sent to worker w1/);
    assert.ok(drained);
    assert.equal(coordinator.workers()[0].draining, true);

    const unknown = await run("token.ts", [
      "--secret",
      path,
      "--action",
      "stop",
      "--worker",
      "w9",
      "--post",
      page,
    ]);
    assert.equal(unknown.code, 1);
    assert.match(unknown.stderr, /termite token: .* answered 404: No such worker/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("token.ts refuses a bad action or worker id, and a missing flag, in one line", async () => {
  const { path, dir } = await secretFile();
  try {
    const bad = await run("token.ts", ["--secret", path, "--action", "reboot", "--worker", "w1"]);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /^termite token: Flag --action is reboot, want drain or stop\n$/);
    const badId = await run("token.ts", ["--secret", path, "--action", "stop", "--worker", "a b"]);
    assert.equal(badId.code, 1);
    assert.match(badId.stderr, /not a worker id/);
    const missing = await run("token.ts", ["--secret", path, "--action", "stop"]);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /--worker/);
    const help = await run("token.ts", ["--help"]);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /--post URL/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("monitor.ts prints the farm every interval from the coordinator's page", async () => {
  const key = await secretFromBytes(crypto.getRandomValues(new Uint8Array(32)));
  await using coordinator = await startCoordinator({
    hostname: "127.0.0.1",
    port: 0,
    httpPort: 0,
    httpHostname: "127.0.0.1",
    secret: key,
  });
  await using worker = registerWorker({
    coordinator: `127.0.0.1:${coordinator.port}`,
    secret: key,
    info: () => ({
      id: "w1",
      address: "127.0.0.1:4100",
      hostname: "h",
      slots: 4,
      jobsRunning: 1,
      load: 0,
      version: "t",
    }),
    intervalMs: 50,
  });
  await waitFor(() => worker.registered, "w1 to register");
  const master = await connect({
    transport: "tcp",
    hostname: "127.0.0.1",
    port: coordinator.port,
    secret: key,
    role: "master",
  });
  try {
    await master.call("report", {
      master: { id: "m1", root: "/src/\x1b[31mred", hostname: "b", version: "t" },
      build: {
        jobsInFlight: 2,
        jobsOnWorkers: 2,
        jobsFinished: 5,
        jobsFailed: 0,
        jobsExitNonZero: 0,
        jobsRemote: 5,
        jobsLocal: 0,
        retries: 0,
        bytesFetched: 0,
        workers: [{ address: "127.0.0.1:4100", running: 2, done: 5, failed: 0, busyMs: 2500 }],
        running: [],
      },
    }).catch((e) => e);
    // The escape sequence is refused (a control character in the root).
    assert.equal(coordinator.masters().length, 0);
    await master.call("report", {
      master: { id: "m1", root: "/src/lua", hostname: "b", version: "t" },
      build: {
        jobsInFlight: 2,
        jobsOnWorkers: 2,
        jobsFinished: 5,
        jobsFailed: 0,
        jobsExitNonZero: 0,
        jobsRemote: 5,
        jobsLocal: 0,
        retries: 0,
        bytesFetched: 0,
        workers: [{ address: "127.0.0.1:4100", running: 2, done: 5, failed: 0, busyMs: 2500 }],
        running: [],
      },
    });
    const out = await run("monitor.ts", [
      "--url",
      `http://127.0.0.1:${coordinator.httpPort}`,
      "--interval",
      "100ms",
      "--count",
      "2",
    ]);
    assert.equal(out.code, 0, out.stderr);
    const blocks = out.stdout.trim().split("\n\n");
    assert.equal(blocks.length, 2);
    assert.match(blocks[0], /^termite farm \d\d:\d\d:\d\d: 1 workers, 2\/4 slots busy/);
    assert.match(
      blocks[0],
      /\n {2}127\.0\.0\.1:4100 \[##\.\.\] 2\/4 {2}\/src\/lua: 2 \(busy 2\.50 s\)/,
    );
  } finally {
    master.close();
    await master.closed.catch(() => {});
  }
  const down = await run("monitor.ts", ["--url", "http://127.0.0.1:1/", "--count", "1"]);
  assert.equal(down.code, 0);
  assert.match(down.stdout, /cannot read http:\/\/127\.0\.0\.1:1\/status\.json/);
});

Deno.test("monitor text: slot bars, no terminal escapes, either status shape", () => {
  assert.equal(slotBar(2, 4), "[##..]");
  assert.equal(slotBar(5, 4), "[#####]");
  assert.equal(terminalSafe("a\x1b[31mb\u009bc"), "a?[31mb?c");
  assert.match(statusLines({})[0], /not a Termite status/);
  const lines = farmLines({
    version: "t",
    nowMs: 0,
    workers: [],
    masters: [],
    farm: {
      workers: 0,
      drained: 0,
      slots: 0,
      slotsBusy: 0,
      masters: 0,
      jobsInFlight: 0,
      jobsPerSecond: 0,
      jobsFinished: 0,
      attemptsFailed: 0,
      jobsFailed: 0,
    },
  });
  assert.deepEqual(lines.slice(1), ["  (no workers)"]);
});
