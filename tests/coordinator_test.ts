import assert from "node:assert/strict";
import { connect, RpcError, type RpcPeer, secretFromBytes } from "../rpc/mod.ts";
import { reachableAddress } from "../common/address.ts";
import {
  adminToken,
  type Coordinator,
  type CoordinatorOptions,
  formatHostPort,
  parseHostPort,
  registerWorker,
  startCoordinator,
  validateRegisterParams,
  verifyAdminToken,
  watchWorkers,
  type WorkerInfo,
} from "../coordinator/mod.ts";

const HOST = "127.0.0.1";

async function randomSecret(): Promise<{ key: CryptoKey; hex: string }> {
  const bytes = crypto.getRandomValues(new Uint8Array(32));
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return { key: await secretFromBytes(bytes), hex };
}

/** Polls `condition` until it holds; fails after `limitMs` (a liveness bound, not a timing check). */
async function waitFor(condition: () => boolean, what: string, limitMs = 10_000): Promise<void> {
  const deadline = Date.now() + limitMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`Timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function workerInfo(
  id: string,
  overrides: Partial<WorkerInfo> = {},
): Omit<WorkerInfo, "lastContactMs" | "draining"> {
  return {
    id,
    address: `127.0.0.1:${4100 + id.length}`,
    hostname: `host-${id}`,
    slots: 4,
    jobsRunning: 0,
    load: 0.5,
    version: "test",
    ...overrides,
  };
}

interface Harness extends AsyncDisposable {
  coordinator: Coordinator;
  logs: string[];
  address: string;
  /** An authenticated connection to the coordinator in `role`. */
  connect(role: "worker" | "master"): Promise<RpcPeer>;
}

async function startHarness(
  secret: CryptoKey,
  options: Partial<CoordinatorOptions> = {},
): Promise<Harness> {
  const logs: string[] = [];
  const coordinator = await startCoordinator({
    hostname: HOST,
    port: 0,
    secret,
    log: (m) => logs.push(m),
    ...options,
  });
  return {
    coordinator,
    logs,
    address: `${HOST}:${coordinator.port}`,
    connect: (role) =>
      connect({ transport: "tcp", hostname: HOST, port: coordinator.port, secret, role }),
    [Symbol.asyncDispose]: () => coordinator.close(),
  };
}

Deno.test("parseHostPort() accepts host:port forms and rejects others", () => {
  assert.deepEqual(parseHostPort("127.0.0.1:80"), { hostname: "127.0.0.1", port: 80 });
  assert.deepEqual(parseHostPort("[::1]:4100"), { hostname: "::1", port: 4100 });
  assert.deepEqual(parseHostPort("build-1.example:65535"), {
    hostname: "build-1.example",
    port: 65535,
  });
  for (const bad of ["", "host", ":80", "host:", "host:0", "host:65536", "::1:80", "a b:1"]) {
    assert.throws(() => parseHostPort(bad), /Cannot parse address/, bad);
  }
});

Deno.test("reachableAddress() puts the connection's host in place of a wildcard host", () => {
  assert.equal(reachableAddress("0.0.0.0:1232", "10.213.5.2:40112"), "10.213.5.2:1232");
  assert.equal(reachableAddress("[::]:1232", "[fd00::2]:40112"), "[fd00::2]:1232");
  assert.equal(reachableAddress("[::]:1232", "[::ffff:10.0.0.2]:40112"), "10.0.0.2:1232");
  assert.equal(reachableAddress("[0:0:0:0:0:0:0:0]:9", "10.0.0.2:1"), "10.0.0.2:9");
  // An address that names a host stays as announced (e.g. --advertise behind NAT).
  assert.equal(reachableAddress("build-7.example:1232", "10.0.0.2:40112"), "build-7.example:1232");
  assert.equal(reachableAddress("10.0.0.9:1232", "10.0.0.2:40112"), "10.0.0.9:1232");
  assert.equal(reachableAddress("0.0.0.0:1232", "unix"), "0.0.0.0:1232");
  for (const [host, port] of [["::1", 80], ["10.0.0.1", 1232], ["build-1", 65535]] as const) {
    assert.deepEqual(parseHostPort(formatHostPort(host, port)), { hostname: host, port });
  }
});

Deno.test("validateRegisterParams() rejects each bad field", () => {
  const good = { ...workerInfo("w1"), extra: "dropped" };
  assert.deepEqual(validateRegisterParams(good), { ...workerInfo("w1"), draining: false });
  const cases: [string, Record<string, unknown>][] = [
    ["id", { id: "" }],
    ["id", { id: "x".repeat(65) }],
    ["id", { id: "a/b" }],
    ["address", { address: "nowhere" }],
    ["hostname", { hostname: "x".repeat(256) }],
    ["hostname", { hostname: "line\nbreak" }],
    ["slots", { slots: -1 }],
    ["slots", { slots: 1.5 }],
    ["slots", { slots: 1e9 }],
    ["jobsRunning", { jobsRunning: "3" }],
    ["load", { load: Number.NaN }],
    ["load", { load: -1 }],
    ["version", { version: 7 }],
    ["draining", { draining: "yes" }],
  ];
  for (const [field, patch] of cases) {
    assert.throws(
      () => validateRegisterParams({ ...good, ...patch }),
      new RegExp(`Cannot accept worker info: ${field} `),
      JSON.stringify(patch),
    );
  }
  assert.throws(() => validateRegisterParams(null), /params is not an object/);
  assert.throws(() => validateRegisterParams([1]), /params is not an object/);
});

Deno.test("verifyAdminToken() accepts its own token only for the same action, id and time", async () => {
  const { key } = await randomSecret();
  const { key: other } = await randomSecret();
  const nowS = 1_700_000_000;
  const token = await adminToken(key, "drain", "w1", nowS);
  assert.match(token, /^Termite 1700000000:[0-9a-f]{64}$/);
  const verify = (
    header: string | null,
    patch: Partial<{ action: "drain" | "stop"; id: string; nowS: number; secret: CryptoKey }> = {},
  ) => verifyAdminToken(header, { secret: key, action: "drain", id: "w1", nowS, ...patch });
  assert.equal(await verify(token), nowS);
  assert.equal(await verify(token, { nowS: nowS + 60 }), nowS);
  assert.equal(await verify(token, { nowS: nowS - 60 }), nowS);
  assert.equal(await verify(token, { nowS: nowS + 61 }), undefined);
  assert.equal(await verify(token, { action: "stop" }), undefined);
  assert.equal(await verify(token, { id: "w2" }), undefined);
  assert.equal(await verify(token, { secret: other }), undefined);
  assert.equal(await verify(null), undefined);
  assert.equal(await verify(token.replace("Termite", "Bearer")), undefined);
  assert.equal(await verify(token.slice(0, -1) + (token.endsWith("0") ? "1" : "0")), undefined);
});

Deno.test("a registered worker reaches a watching master, and re-registration updates it", async () => {
  const { key } = await randomSecret();
  await using h = await startHarness(key);
  let jobsRunning = 0;
  const changes: WorkerInfo[][] = [];
  await using watch = watchWorkers({
    coordinator: h.address,
    secret: key,
    onChange: (workers) => changes.push(workers),
  });
  await watch.ready;
  assert.equal(watch.workers.length, 0);
  await using worker = registerWorker({
    coordinator: h.address,
    secret: key,
    info: () => workerInfo("w1", { jobsRunning }),
    intervalMs: 30,
  });
  await waitFor(() => watch.workers.length === 1, "watcher to see w1");
  assert.equal(worker.registered, true);
  const seen = watch.workers[0];
  assert.equal(seen.id, "w1");
  assert.equal(seen.hostname, "host-w1");
  assert.equal(seen.slots, 4);
  assert.equal(seen.jobsRunning, 0);
  assert.equal(seen.draining, false);
  assert.equal(h.coordinator.workers().length, 1);
  jobsRunning = 3;
  await waitFor(() => watch.workers[0]?.jobsRunning === 3, "watcher to see jobsRunning 3");
  assert.equal(h.coordinator.workers()[0].jobsRunning, 3);
  assert.ok(changes.length >= 3);
});

Deno.test("a worker announcing 0.0.0.0:PORT is listed at the address its connection came from", async () => {
  const { key } = await randomSecret();
  await using h = await startHarness(key);
  await using watch = watchWorkers({ coordinator: h.address, secret: key, onChange: () => {} });
  await using _worker = registerWorker({
    coordinator: h.address,
    secret: key,
    info: () => workerInfo("wild", { address: "0.0.0.0:1232" }),
  });
  await waitFor(() => watch.workers.length === 1, "watcher to see the worker");
  assert.equal(watch.workers[0].address, "127.0.0.1:1232");
  assert.equal(h.coordinator.workers()[0].address, "127.0.0.1:1232");
  assert.ok(
    h.logs.some((m) => /registered: 127\.0\.0\.1:1232 .*announced 0\.0\.0\.0:1232/.test(m)),
    h.logs.join("\n"),
  );
  // Loopback: reachable only from the coordinator's host, which is worth a word.
  assert.ok(h.logs.some((m) => /loopback address.*--advertise/.test(m)), h.logs.join("\n"));
});

Deno.test("a worker that stops re-registering is dropped after workerTimeoutMs", async () => {
  const { key } = await randomSecret();
  await using h = await startHarness(key, { workerTimeoutMs: 300 });
  await using watch = watchWorkers({ coordinator: h.address, secret: key, onChange: () => {} });
  const peer = await h.connect("worker");
  try {
    await peer.call("register", workerInfo("silent"));
    assert.equal(h.coordinator.workers().length, 1);
    await waitFor(() => watch.workers.length === 1, "watcher to see the worker");
    await waitFor(() => h.coordinator.workers().length === 0, "the silent worker to be dropped");
    await waitFor(() => watch.workers.length === 0, "watcher to see the drop");
    assert.ok(
      h.logs.some((m) => /silent dropped: not heard from in 300 ms/.test(m)),
      h.logs.join("\n"),
    );
    // The coordinator also closes the stale connection.
    await peer.closed;
  } finally {
    peer.close();
    await peer.closed;
  }
});

Deno.test("the injected clock decides when a worker times out", async () => {
  const { key } = await randomSecret();
  let nowMs = 1_000_000;
  await using h = await startHarness(key, { workerTimeoutMs: 40, now: () => nowMs });
  const peer = await h.connect("worker");
  try {
    await peer.call("register", workerInfo("clocked"));
    assert.equal(h.coordinator.workers()[0].lastContactMs, 1_000_000);
    // Several sweeps pass in real time, but the clock stands still.
    await delay(150);
    assert.equal(h.coordinator.workers().length, 1);
    nowMs += 41;
    await waitFor(() => h.coordinator.workers().length === 0, "the clocked worker to be dropped");
  } finally {
    peer.close();
    await peer.closed;
  }
});

Deno.test("closing a worker's connection drops it at once", async () => {
  const { key } = await randomSecret();
  await using h = await startHarness(key, { workerTimeoutMs: 600_000 });
  await using watch = watchWorkers({ coordinator: h.address, secret: key, onChange: () => {} });
  const worker = registerWorker({
    coordinator: h.address,
    secret: key,
    info: () => workerInfo("w1"),
    intervalMs: 600_000,
  });
  try {
    await waitFor(() => watch.workers.length === 1, "watcher to see w1");
  } finally {
    await worker.close();
  }
  assert.equal(worker.registered, false);
  await waitFor(() => h.coordinator.workers().length === 0, "coordinator to drop w1");
  await waitFor(() => watch.workers.length === 0, "watcher to see the drop");
  assert.ok(h.logs.some((m) => /w1 dropped: connection closed/.test(m)), h.logs.join("\n"));
});

Deno.test("after a coordinator restart on the same port, worker and watcher come back", async () => {
  const { key } = await randomSecret();
  const first = await startHarness(key);
  const port = first.coordinator.port;
  let jobsRunning = 1;
  let changes = 0;
  const watchLogs: string[] = [];
  await using watch = watchWorkers({
    coordinator: first.address,
    secret: key,
    onChange: () => changes++,
    log: (m) => watchLogs.push(m),
    backoffMaxMs: 200,
  });
  await using worker = registerWorker({
    coordinator: first.address,
    secret: key,
    info: () => workerInfo("w1", { jobsRunning }),
    intervalMs: 30,
    backoffMaxMs: 200,
  });
  let second: Harness | undefined;
  try {
    await waitFor(() => watch.workers[0]?.jobsRunning === 1, "watcher to see w1");
    await first.coordinator.close();
    await waitFor(() => !worker.registered, "worker to notice the coordinator is gone");
    await waitFor(
      () => watchLogs.some((m) => /closed|Cannot watch/.test(m)),
      "watcher to notice the coordinator is gone",
    );
    // The watcher keeps the last known list meanwhile.
    assert.equal(watch.workers.length, 1);
    jobsRunning = 2;
    const changesBefore = changes;
    second = await startHarness(key, { port });
    assert.equal(second.coordinator.port, port);
    await waitFor(() => second!.coordinator.workers().length === 1, "w1 to re-register");
    await waitFor(
      () => changes > changesBefore && watch.workers[0]?.jobsRunning === 2,
      "watcher to pick up the list from the new coordinator",
    );
    assert.equal(worker.registered, true);
  } finally {
    await first.coordinator.close();
    await second?.coordinator.close();
  }
});

Deno.test("a worker with the wrong secret is refused, logged and not listed", async () => {
  const { key } = await randomSecret();
  const { key: wrong } = await randomSecret();
  await using h = await startHarness(key);
  const logsAtStart = h.logs.length;
  const workerLogs: string[] = [];
  await using worker = registerWorker({
    coordinator: h.address,
    secret: wrong,
    info: () => workerInfo("intruder"),
    intervalMs: 30,
    log: (m) => workerLogs.push(m),
  });
  await waitFor(
    () => workerLogs.some((m) => /Cannot register/.test(m)),
    "worker to log the refusal",
  );
  await waitFor(
    () => h.logs.slice(logsAtStart).some((m) => /Rejected peer 127\.0\.0\.1:[0-9]+: ./.test(m)),
    "coordinator to log the refusal",
  );
  assert.equal(worker.registered, false);
  assert.deepEqual(h.coordinator.workers(), []);
});

Deno.test("bad register params are refused with BAD_REQUEST and logged", async () => {
  const { key } = await randomSecret();
  await using h = await startHarness(key);
  const peer = await h.connect("worker");
  try {
    for (const patch of [{ slots: -1 }, { hostname: "x".repeat(1000) }, { id: 42 }]) {
      await assert.rejects(
        peer.call("register", { ...workerInfo("w1"), ...patch }),
        (error: unknown) => error instanceof RpcError && error.code === "BAD_REQUEST",
      );
    }
    await assert.rejects(
      peer.call("register", "not an object"),
      (error: unknown) => error instanceof RpcError && error.code === "BAD_REQUEST",
    );
    assert.equal(h.logs.filter((m) => /Refusing registration/.test(m)).length, 4);
    assert.deepEqual(h.coordinator.workers(), []);
  } finally {
    peer.close();
    await peer.closed;
  }
});

Deno.test("workersMax limits the listed workers and a master cannot register", async () => {
  const { key } = await randomSecret();
  await using h = await startHarness(key, { workersMax: 1 });
  const a = await h.connect("worker");
  const b = await h.connect("worker");
  const m = await h.connect("master");
  try {
    await a.call("register", workerInfo("a"));
    await a.call("register", workerInfo("a", { jobsRunning: 1 }));
    await assert.rejects(
      b.call("register", workerInfo("b")),
      (error: unknown) => error instanceof RpcError && error.code === "LIMIT",
    );
    await assert.rejects(m.call("register", workerInfo("m")));
    assert.deepEqual(h.coordinator.workers().map((w) => w.id), ["a"]);
  } finally {
    for (const peer of [a, b, m]) {
      peer.close();
      await peer.closed;
    }
  }
});

Deno.test("status page lists workers as JSON and escapes a hostile hostname in HTML", async () => {
  const { key, hex } = await randomSecret();
  await using h = await startHarness(key, { httpPort: 0, httpHostname: HOST, version: "9.9.9" });
  const hostile = `<script>alert("x")</script>&'`;
  await using worker = registerWorker({
    coordinator: h.address,
    secret: key,
    info: () => workerInfo("w1", { hostname: hostile, jobsRunning: 2 }),
    intervalMs: 30,
  });
  await waitFor(() => worker.registered, "w1 to register");
  const base = `http://${HOST}:${h.coordinator.httpPort}`;

  const json = await fetch(`${base}/status.json`);
  assert.equal(json.status, 200);
  assert.match(json.headers.get("content-type")!, /^application\/json/);
  const status = await json.json();
  assert.equal(status.version, "9.9.9");
  assert.equal(status.workers.length, 1);
  assert.equal(status.workers[0].id, "w1");
  assert.equal(status.workers[0].hostname, hostile);
  assert.equal(status.workers[0].jobsRunning, 2);

  const page = await fetch(`${base}/`);
  assert.equal(page.status, 200);
  assert.match(page.headers.get("content-type")!, /^text\/html/);
  const html = await page.text();
  assert.ok(!html.includes("<script>"), html);
  assert.ok(html.includes("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;"), html);
  assert.ok(html.includes("127.0.0.1:4102"));
  assert.match(html, /<td>[0-9.]+ m?s ago<\/td>/);
  assert.ok(!html.includes(hex) && !JSON.stringify(status).includes(hex));

  const missing = await fetch(`${base}/nothing`);
  assert.equal(missing.status, 404);
  await missing.body?.cancel();
  const post = await fetch(`${base}/status.json`, { method: "POST" });
  assert.equal(post.status, 405);
  await post.body?.cancel();
});

Deno.test("drain needs a valid token; with one it reaches the worker and the list", async () => {
  const { key } = await randomSecret();
  const { key: wrong } = await randomSecret();
  await using h = await startHarness(key, { httpPort: 0, httpHostname: HOST });
  let drains = 0;
  let stops = 0;
  await using watch = watchWorkers({ coordinator: h.address, secret: key, onChange: () => {} });
  await using _worker = registerWorker({
    coordinator: h.address,
    secret: key,
    info: () => workerInfo("w1"),
    intervalMs: 30,
    onDrain: () => drains++,
    onStop: () => stops++,
  });
  await waitFor(() => watch.workers.length === 1, "watcher to see w1");
  const url = `http://${HOST}:${h.coordinator.httpPort}/workers/w1/drain`;
  const nowS = Math.floor(Date.now() / 1000);
  const refused: (string | undefined)[] = [
    undefined,
    "Termite nonsense",
    await adminToken(wrong, "drain", "w1"),
    await adminToken(key, "stop", "w1"),
    await adminToken(key, "drain", "w2"),
    await adminToken(key, "drain", "w1", nowS - 120),
    await adminToken(key, "drain", "w1", nowS + 120),
  ];
  for (const authorization of refused) {
    const response = await fetch(url, {
      method: "POST",
      headers: authorization === undefined ? {} : { authorization },
    });
    assert.equal(response.status, 403, authorization);
    await response.body?.cancel();
  }
  const get = await fetch(url, {
    headers: { authorization: await adminToken(key, "drain", "w1") },
  });
  assert.equal(get.status, 405);
  await get.body?.cancel();
  assert.equal(drains, 0);
  assert.equal(h.coordinator.workers()[0].draining, false);
  assert.equal(watch.workers[0].draining, false);

  const token = await adminToken(key, "drain", "w1");
  const ok = await fetch(url, { method: "POST", headers: { authorization: token } });
  assert.equal(ok.status, 200);
  assert.deepEqual(await ok.json(), { ok: true });
  assert.equal(drains, 1);
  assert.equal(h.coordinator.workers()[0].draining, true);
  await waitFor(() => watch.workers[0]?.draining === true, "watcher to see w1 draining");
  // Later registrations keep it draining.
  await delay(100);
  assert.equal(h.coordinator.workers()[0].draining, true);

  const replay = await fetch(url, { method: "POST", headers: { authorization: token } });
  assert.equal(replay.status, 403);
  await replay.body?.cancel();

  const stop = await fetch(`http://${HOST}:${h.coordinator.httpPort}/workers/w1/stop`, {
    method: "POST",
    headers: { authorization: await adminToken(key, "stop", "w1") },
  });
  assert.equal(stop.status, 200);
  await stop.body?.cancel();
  assert.equal(stops, 1);
  assert.equal(drains, 1);

  const unknown = await fetch(`http://${HOST}:${h.coordinator.httpPort}/workers/w9/drain`, {
    method: "POST",
    headers: { authorization: await adminToken(key, "drain", "w9") },
  });
  assert.equal(unknown.status, 404);
  await unknown.body?.cancel();
});

Deno.test("a worker told to drain stays draining after a coordinator restart", async () => {
  const { key } = await randomSecret();
  const first = await startHarness(key, { httpPort: 0, httpHostname: HOST });
  const port = first.coordinator.port;
  let second: Harness | undefined;
  await using worker = registerWorker({
    coordinator: first.address,
    secret: key,
    info: () => workerInfo("w1"),
    intervalMs: 30,
    backoffMaxMs: 200,
  });
  try {
    await waitFor(() => worker.registered, "w1 to register");
    const response = await fetch(`http://${HOST}:${first.coordinator.httpPort}/workers/w1/drain`, {
      method: "POST",
      headers: { authorization: await adminToken(key, "drain", "w1") },
    });
    assert.equal(response.status, 200);
    await response.body?.cancel();
    await first.coordinator.close();
    second = await startHarness(key, { port });
    await waitFor(() => second!.coordinator.workers().length === 1, "w1 to re-register");
    assert.equal(second.coordinator.workers()[0].draining, true);
  } finally {
    await first.coordinator.close();
    await second?.coordinator.close();
  }
});

Deno.test("stop is answered even when onStop closes the registration at once", async () => {
  const { key } = await randomSecret();
  await using h = await startHarness(key, { httpPort: 0, httpHostname: HOST });
  let stops = 0;
  const worker = registerWorker({
    coordinator: h.address,
    secret: key,
    info: () => workerInfo("w1"),
    intervalMs: 30,
    onStop: () => {
      stops++;
      void worker.close();
    },
  });
  try {
    await waitFor(() => worker.registered, "w1 to register");
    const response = await fetch(`http://${HOST}:${h.coordinator.httpPort}/workers/w1/stop`, {
      method: "POST",
      headers: { authorization: await adminToken(key, "stop", "w1") },
    });
    const body = await response.text();
    assert.equal(response.status, 200, body);
    assert.equal(stops, 1);
    await waitFor(() => h.coordinator.workers().length === 0, "w1 to leave");
  } finally {
    await worker.close();
  }
});
