/**
 * Coordinator figures: registration round trips, push latency to a
 * watching master, and status.json with many workers.
 *
 * Run alone: `deno run -A bench/coordinator_bench.ts [--quick]`.
 */

import { connect, secretFromBytes } from "../rpc/mod.ts";
import { startCoordinator, watchWorkers, type WorkerInfo } from "../coordinator/mod.ts";

export type BenchResult = { name: string; value: number; unit: string; note?: string };

const HOST = "127.0.0.1";

function info(i: number, jobsRunning = 0): Omit<WorkerInfo, "lastContactMs" | "draining"> {
  return {
    id: `w${i}`,
    address: `10.0.${i >> 8}.${i & 255}:4100`,
    hostname: `build-${i}`,
    slots: 8,
    jobsRunning,
    load: 1.25,
    version: "bench",
  };
}

export async function run(options: { quick: boolean }): Promise<BenchResult[]> {
  const results: BenchResult[] = [];
  const secret = await secretFromBytes(crypto.getRandomValues(new Uint8Array(32)));
  await using coordinator = await startCoordinator({
    hostname: HOST,
    port: 0,
    httpPort: 0,
    httpHostname: HOST,
    secret,
    pushDelayMs: 0,
  });
  const peer = await connect({
    transport: "tcp",
    hostname: HOST,
    port: coordinator.port,
    secret,
    role: "worker",
  });
  let latest: WorkerInfo[] = [];
  let wake: (() => void) | undefined;
  await using watch = watchWorkers({
    coordinator: `${HOST}:${coordinator.port}`,
    secret,
    onChange: (workers) => {
      latest = workers;
      wake?.();
    },
  });
  await watch.ready;
  try {
    // Registration round trips (unchanged figures: no push).
    const rounds = options.quick ? 500 : 5000;
    await peer.call("register", info(0));
    let start = performance.now();
    for (let i = 0; i < rounds; i++) await peer.call("register", info(0));
    let ms = performance.now() - start;
    results.push({
      name: "coordinator register round trip",
      value: (ms * 1000) / rounds,
      unit: "µs",
    });

    // Change → master sees it.
    const changes = options.quick ? 100 : 1000;
    start = performance.now();
    for (let i = 1; i <= changes; i++) {
      const seen = new Promise<void>((resolve) => wake = resolve);
      await peer.call("register", info(0, i % 1000));
      while (latest[0]?.jobsRunning !== i % 1000) await seen;
    }
    ms = performance.now() - start;
    results.push({
      name: "coordinator change to master notified",
      value: (ms * 1000) / changes,
      unit: "µs",
      note: "register call + push, pushDelayMs 0",
    });

    // status.json with many workers.
    const many = options.quick ? 200 : 1000;
    for (let i = 1; i < many; i++) await peer.call("register", info(i));
    const fetches = options.quick ? 20 : 100;
    start = performance.now();
    for (let i = 0; i < fetches; i++) {
      const response = await fetch(`http://${HOST}:${coordinator.httpPort}/status.json`);
      await response.arrayBuffer();
    }
    ms = performance.now() - start;
    results.push({
      name: `coordinator status.json (${many} workers)`,
      value: ms / fetches,
      unit: "ms",
    });
  } finally {
    peer.close();
    await peer.closed;
  }
  return results;
}

if (import.meta.main) {
  const results = await run({ quick: Deno.args.includes("--quick") });
  console.table(results);
}
