/**
 * Masters on the coordinator: who they are (with "subscribe"), how their
 * build goes ("report"), validated, limited, and safe with older peers.
 */
import assert from "node:assert/strict";
import { connect, listen, RpcError, type RpcPeer, secretFromBytes } from "../rpc/mod.ts";
import {
  type Coordinator,
  type CoordinatorOptions,
  type MasterReport,
  reportToCoordinator,
  startCoordinator,
  validateMasterReport,
  watchWorkers,
} from "../coordinator/mod.ts";

const HOST = "127.0.0.1";

async function randomKey(): Promise<CryptoKey> {
  return await secretFromBytes(crypto.getRandomValues(new Uint8Array(32)));
}

async function waitFor(condition: () => boolean, what: string, limitMs = 10_000): Promise<void> {
  const deadline = Date.now() + limitMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`Timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

function report(id: string, overrides: Partial<MasterReport["build"]> = {}): MasterReport {
  return {
    master: { id, root: `/home/josé/${id}`, hostname: "build-1", version: "test" },
    build: {
      jobsInFlight: 3,
      jobsOnWorkers: 2,
      jobsFinished: 10,
      jobsFailed: 0,
      jobsExitNonZero: 1,
      jobsRemote: 9,
      jobsLocal: 1,
      retries: 1,
      bytesFetched: 4096,
      workers: [{ address: "10.0.0.2:1232", running: 2, done: 9, failed: 1, busyMs: 1500 }],
      running: [{ command: "gcc -c big.c -o big.o", elapsedMs: 2300 }],
      ...overrides,
    },
  };
}

async function withCoordinator(
  options: Partial<CoordinatorOptions>,
  fn: (
    c: Coordinator,
    peer: (role?: "master") => Promise<RpcPeer>,
    logs: string[],
  ) => Promise<void>,
): Promise<void> {
  const secret = options.secret ?? await randomKey();
  const logs: string[] = [];
  const coordinator = await startCoordinator({
    hostname: HOST,
    port: 0,
    secret,
    log: (m) => logs.push(m),
    ...options,
  });
  const peers: RpcPeer[] = [];
  try {
    await fn(coordinator, async () => {
      const p = await connect({
        transport: "tcp",
        hostname: HOST,
        port: coordinator.port,
        secret,
        role: "master",
      });
      peers.push(p);
      return p;
    }, logs);
  } finally {
    for (const p of peers) p.close();
    await coordinator.close();
  }
}

Deno.test("masters: subscribe with {master} lists it by id; without params, by address", async () => {
  await withCoordinator({}, async (c, peer, logs) => {
    const named = await peer();
    await named.call("subscribe", { master: report("m1").master });
    const old = await peer();
    await old.call("subscribe", {});
    const bad = await peer();
    await bad.call("subscribe", { master: { id: "x y", root: "/t" } });
    const masters = c.masters();
    assert.equal(masters.length, 3);
    assert.equal(masters[0].id, "m1");
    assert.equal(masters[0].root, "/home/josé/m1");
    assert.equal(masters[0].subscribed, true);
    assert.equal(masters[0].build, undefined, "no report yet");
    assert.ok(masters.slice(1).every((m) => m.id === undefined && m.subscribed));
    assert.ok(logs.some((l) => /Listing master .* by address: .*master\.id/.test(l)), logs.join());
    named.close();
    await named.closed.catch(() => {});
    await waitFor(() => c.masters().length === 2, "m1 to go");
  });
});

Deno.test("masters: a report lists the build; jobs per second come from successive reports", async () => {
  let nowMs = 1_000_000;
  await withCoordinator({ now: () => nowMs, httpPort: 0, httpHostname: HOST }, async (c, peer) => {
    const p = await peer();
    const reply = await p.call<{ version: string; statusPage?: { port: number } }>(
      "report",
      report("m1"),
    );
    assert.deepEqual(reply.statusPage, { hostname: HOST, port: c.httpPort });
    nowMs += 2000;
    await p.call("report", report("m1", { jobsFinished: 30 }));
    const [m] = c.masters();
    assert.equal(m.id, "m1");
    assert.equal(m.subscribed, false);
    assert.equal(m.build?.jobsInFlight, 3);
    assert.equal(m.build?.workers[0].address, "10.0.0.2:1232");
    assert.equal(m.lastReportMs, nowMs);
    assert.equal(m.jobsPerSecond, 10);
  });
});

Deno.test("masters: a bad report is refused with BAD_REQUEST and changes nothing", async () => {
  await withCoordinator({}, async (c, peer, logs) => {
    const p = await peer();
    const bads: unknown[] = [
      null,
      {},
      { ...report("m1"), master: { ...report("m1").master, root: "/a\nb" } },
      { ...report("m1"), master: { ...report("m1").master, statusUrl: "javascript:alert(1)" } },
      report("m1", { jobsInFlight: -1 }),
      report("m1", { bytesFetched: 1.5 }),
      report("m1", { running: [{ command: "", elapsedMs: 1 }] }),
      report("m1", { running: Array(65).fill({ command: "x", elapsedMs: 1 }) }),
      report("m1", { workers: [{ address: "<b>", running: 1, done: 0, failed: 0 }] as never }),
    ];
    for (const bad of bads) {
      await assert.rejects(
        p.call("report", bad),
        (e: unknown) => e instanceof RpcError && e.code === "BAD_REQUEST",
        JSON.stringify(bad),
      );
    }
    assert.equal(c.masters().length, 0);
    assert.ok(logs.every((l) => !l.includes("\n")), "no raw newline reaches the log");
  });
});

Deno.test("masters: at most mastersMax are listed; a further one gets LIMIT", async () => {
  await withCoordinator({ mastersMax: 2 }, async (c, peer) => {
    const p = await peer();
    await p.call("report", report("m1"));
    await p.call("report", report("m2"));
    await assert.rejects(
      p.call("report", report("m3")),
      (e: unknown) => e instanceof RpcError && e.code === "LIMIT",
    );
    await p.call("report", report("m1"), {}); // a listed one still reports
    assert.deepEqual(c.masters().map((m) => m.id), ["m1", "m2"]);
  });
});

Deno.test("masters: validateMasterReport drops unknown fields and caps workers", () => {
  const clean = validateMasterReport({ ...report("m1"), extra: 1 }, 1024);
  assert.equal("extra" in clean, false);
  assert.throws(
    () =>
      validateMasterReport(
        report("m1", { workers: Array(3).fill(report("m1").build.workers[0]) }),
        2,
      ),
    /at most 2/,
  );
});

Deno.test("masters: reportToCoordinator reports each interval; the watch says who it is", async () => {
  const secret = await randomKey();
  await withCoordinator({ secret, httpPort: 0, httpHostname: HOST }, async (c) => {
    let finished = 0;
    await using reporter = reportToCoordinator({
      coordinator: `${HOST}:${c.port}`,
      secret,
      intervalMs: 20,
      report: () => report("m1", { jobsFinished: ++finished }),
    });
    await using watch = watchWorkers({
      coordinator: `${HOST}:${c.port}`,
      secret,
      onChange: () => {},
      master: report("m1").master,
    });
    await watch.ready;
    await waitFor(() => finished >= 3 && reporter.lastReply !== undefined, "three reports");
    assert.equal(reporter.lastReply?.statusPage?.port, c.httpPort);
    const masters = c.masters();
    assert.equal(masters.length, 1, "one master over two connections");
    assert.equal(masters[0].subscribed, true);
    assert.ok(masters[0].build!.jobsFinished >= 2);
  });
});

Deno.test("masters: a coordinator without 'report' (older) is left alone after one log line", async () => {
  const secret = await randomKey();
  let calls = 0;
  const old = listen({
    transport: "tcp",
    hostname: HOST,
    port: 0,
    secret,
    role: "coordinator",
    handlers: () => ({
      subscribe: () => {
        calls++;
        return { seq: 1, workers: [] };
      },
    }),
  });
  try {
    const logs: string[] = [];
    await using reporter = reportToCoordinator({
      coordinator: `${HOST}:${old.port}`,
      secret,
      intervalMs: 10,
      report: () => report("m1"),
      log: (m) => logs.push(m),
    });
    await waitFor(() => logs.some((l) => l.includes("takes no reports")), "the log line");
    await new Promise((resolve) => setTimeout(resolve, 100));
    assert.equal(logs.filter((l) => l.includes("takes no reports")).length, 1);
    assert.equal(reporter.lastReply, undefined);
    // And a watch with {master} still gets its list from the older coordinator.
    await using watch = watchWorkers({
      coordinator: `${HOST}:${old.port}`,
      secret,
      onChange: () => {},
      master: report("m1").master,
    });
    await watch.ready;
    assert.equal(calls, 1);
  } finally {
    await old.close();
  }
});
