/**
 * A real coordinator and master whose only worker is a test double: for tests
 * of what the master does with what a worker sends it.
 */
import assert from "node:assert/strict";
import { registerWorker, startCoordinator } from "../coordinator/mod.ts";
import { VERSION } from "../common/protocol.ts";
import { Master, type MasterOptions } from "../master/master.ts";
import { type Handlers, listen, type RpcPeer, secretFromBytes } from "../rpc/mod.ts";

/**
 * Starts the double (serving `handlers`), a coordinator and a master on
 * `root` (no retries, log kept), waits until the master has reserved the
 * double's slots, runs `fn`, then stops everything.
 */
export async function withWorkerDouble<T>(
  options: {
    root: string;
    handlers: Handlers | ((peer: RpcPeer) => Handlers);
    master?: Partial<MasterOptions>;
  },
  fn: (master: Master, logs: string[]) => Promise<T>,
): Promise<T> {
  const secret = await secretFromBytes(crypto.getRandomValues(new Uint8Array(32)));
  const cache = await Deno.makeTempDir({ prefix: "termite-double-cache-" });
  const worker = listen({
    transport: "tcp",
    hostname: "127.0.0.1",
    port: 0,
    secret,
    role: "worker",
    log: () => {},
    handlers: options.handlers,
  });
  const coordinator = await startCoordinator({
    hostname: "127.0.0.1",
    port: 0,
    secret,
    log: () => {},
  });
  const registration = registerWorker({
    coordinator: `127.0.0.1:${coordinator.port}`,
    secret,
    info: () => ({
      id: "double",
      address: `127.0.0.1:${worker.port}`,
      hostname: "double",
      slots: 4,
      jobsRunning: 0,
      load: 0,
      version: VERSION,
    }),
    log: () => {},
  });
  const logs: string[] = [];
  const master = await Master.start({
    root: options.root,
    secret,
    cacheDir: cache,
    coordinator: `127.0.0.1:${coordinator.port}`,
    retries: 0,
    log: (m) => logs.push(m),
    ...options.master,
  });
  try {
    for (let i = 0; i < 200 && master.workers.length === 0; i++) {
      await new Promise((r) => setTimeout(r, 25));
    }
    assert.equal(master.workers.length, 1, logs.join("\n"));
    return await fn(master, logs);
  } finally {
    await master.close();
    await registration.close();
    await coordinator.close();
    await worker.close();
    await Deno.remove(cache, { recursive: true });
  }
}

/** Runs `sh -c script` through the master in `cwd`; its status and stdout. */
export async function runScript(
  master: Master,
  script: string,
  cwd: string,
): Promise<{ code: number; out: string }> {
  let out = "";
  const decoder = new TextDecoder();
  const result = await master.run(
    { argv: ["sh", "-c", script], cwd, env: { PATH: "/usr/bin:/bin" } },
    {
      stdout: (b) => {
        out += decoder.decode(b);
        return Promise.resolve();
      },
      stderr: () => Promise.resolve(),
      stdin: null,
      signal: new AbortController().signal,
    },
  );
  return { code: result.code, out };
}
