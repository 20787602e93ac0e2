/**
 * The master's dispatch through real connections: a worker the coordinator
 * lists but the master cannot reach makes jobs run locally, and the master
 * says so once, with the reason and what to change (issue "real hosts": a
 * farm must never build everything locally in silence).
 */
import assert from "node:assert/strict";
import { registerWorker, startCoordinator } from "../coordinator/mod.ts";
import { VERSION } from "../common/protocol.ts";
import { Master } from "../master/master.ts";
import { secretFromBytes } from "../rpc/mod.ts";
import { runScript } from "./_worker_double.ts";

Deno.test("master: jobs run locally when no listed worker is reachable, and it says why once", async () => {
  const secret = await secretFromBytes(crypto.getRandomValues(new Uint8Array(32)));
  const root = await Deno.makeTempDir({ prefix: "termite-dispatch-" });
  await Deno.chmod(root, 0o755); // servable: /tmp lets everyone in
  const cache = await Deno.makeTempDir({ prefix: "termite-dispatch-cache-" });
  // A port nobody listens on: bind one, note it, close it.
  const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const deadPort = (probe.addr as Deno.NetAddr).port;
  probe.close();
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
      id: "unreachable",
      address: `127.0.0.1:${deadPort}`,
      hostname: "far",
      slots: 2,
      jobsRunning: 0,
      load: 0,
      version: VERSION,
    }),
    log: () => {},
  });
  // Listed before the master asks (else its jobs run here for want of any worker).
  for (let i = 0; coordinator.workers().length === 0; i++) {
    assert.ok(i < 300, "the worker never registered");
    await new Promise((r) => setTimeout(r, 20));
  }
  const logs: string[] = [];
  const master = await Master.start({
    root,
    secret,
    cacheDir: cache,
    coordinator: `127.0.0.1:${coordinator.port}`,
    log: (m) => logs.push(m),
  });
  try {
    for (let i = 0; i < 3; i++) {
      const { code, out } = await runScript(master, `echo job${i} > out${i}; echo ran${i}`, root);
      assert.equal(code, 0);
      assert.equal(out, `ran${i}\n`);
      assert.equal(await Deno.readTextFile(`${root}/out${i}`), `job${i}\n`);
    }
    assert.equal(master.stats.jobsLocal, 3);
    assert.equal(master.stats.jobsRemote, 0);
    assert.equal(master.stats.localByCause.unusable, 3, JSON.stringify(master.stats));
    const notes = logs.filter((l) => l.startsWith("running jobs locally"));
    assert.equal(notes.length, 1, logs.join("\n"));
    assert.match(notes[0], new RegExp(`127\\.0\\.0\\.1:${deadPort}`));
    assert.match(notes[0], /--advertise/);
  } finally {
    await master.close();
    await registration.close();
    await coordinator.close();
    await Deno.remove(root, { recursive: true });
    await Deno.remove(cache, { recursive: true });
  }
});

Deno.test("master: with local fallback off, a job no worker can take fails with the reason", async () => {
  const secret = await secretFromBytes(crypto.getRandomValues(new Uint8Array(32)));
  const root = await Deno.makeTempDir({ prefix: "termite-dispatch-" });
  await Deno.chmod(root, 0o755); // servable: /tmp lets everyone in
  const cache = await Deno.makeTempDir({ prefix: "termite-dispatch-cache-" });
  const coordinator = await startCoordinator({
    hostname: "127.0.0.1",
    port: 0,
    secret,
    log: () => {},
  });
  const master = await Master.start({
    root,
    secret,
    cacheDir: cache,
    coordinator: `127.0.0.1:${coordinator.port}`,
    localFallback: false,
    startWaitMs: 200,
    log: () => {},
  });
  try {
    const result = await master.run(
      { argv: ["sh", "-c", "touch made"], cwd: root, env: { PATH: "/usr/bin:/bin" } },
      {
        stdout: () => Promise.resolve(),
        stderr: () => Promise.resolve(),
        stdin: null,
        signal: new AbortController().signal,
      },
    );
    assert.equal(result.code, 255);
    assert.match(result.error ?? "", /local fallback is off.*lists no workers/);
    await assert.rejects(Deno.stat(`${root}/made`), Deno.errors.NotFound);
  } finally {
    await master.close();
    await coordinator.close();
    await Deno.remove(root, { recursive: true });
    await Deno.remove(cache, { recursive: true });
  }
});

Deno.test("master: a tree other users cannot enter is reported at start, with the chmod that fixes it", async () => {
  const secret = await secretFromBytes(crypto.getRandomValues(new Uint8Array(32)));
  const home = await Deno.makeTempDir({ prefix: "termite-home-" }); // 0700, like /root
  const root = `${home}/proj`;
  await Deno.mkdir(root, { mode: 0o755 });
  const cache = await Deno.makeTempDir({ prefix: "termite-dispatch-cache-" });
  const coordinator = await startCoordinator({
    hostname: "127.0.0.1",
    port: 0,
    secret,
    log: () => {},
  });
  const logs: string[] = [];
  const master = await Master.start({
    root,
    secret,
    cacheDir: cache,
    coordinator: `127.0.0.1:${coordinator.port}`,
    startWaitMs: 200,
    log: (m) => logs.push(m),
  });
  try {
    const start = logs.find((l) => l.startsWith("the workers cannot see this tree"));
    assert.ok(start, logs.join("\n"));
    assert.match(start, new RegExp(`${home} \\(mode 0700\\).*chmod o\\+x ${home}`));
    assert.equal((await runScript(master, "echo a > a", root)).code, 0);
    assert.equal(master.stats.localByCause.unservable, 1);
    // Fixed while the master runs: the next job is the farm's again.
    await Deno.chmod(home, 0o711);
    assert.equal((await runScript(master, "echo b > b", root)).code, 0);
    assert.equal(master.stats.localByCause.unservable, 1);
    assert.equal(master.stats.localByCause["no-workers"], 1);
  } finally {
    await master.close();
    await coordinator.close();
    await Deno.remove(home, { recursive: true });
    await Deno.remove(cache, { recursive: true });
  }
});
