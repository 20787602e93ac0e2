/**
 * A job's silence limit counts the worker's silence, not the master's: when
 * the master's own event loop was held up past the limit (a long synchronous
 * apply of another job, GC, a loaded host), a reply that arrived meanwhile is
 * read before the worker is given up on; a worker that stays silent still is.
 */
import assert from "node:assert/strict";
import { WorkerMethods } from "../common/protocol.ts";
import { runScript, withWorkerDouble } from "./_worker_double.ts";

const EMPTY_SET = { deletions: [], dirs: [], files: [], symlinks: [] };

function blockFor(ms: number): void {
  const until = performance.now() + ms;
  while (performance.now() < until) {
    // The master and the double share this event loop: nothing else runs.
  }
}

Deno.test("master: a reply that came while the master itself was held up past the silence limit is taken; a silent worker is still given up on", async () => {
  const root = await Deno.realPath(await Deno.makeTempDir({ prefix: "termite-silence-" }));
  await Deno.chmod(root, 0o755);
  let mode: "block" | "silent" = "block";
  let release = () => {};
  const released = new Promise<void>((r) => release = r);
  try {
    await withWorkerDouble({
      root,
      master: { jobSilenceMs: 300 },
      handlers: {
        [WorkerMethods.mirrorOpen]: () => ({ slots: 4, workerId: "double" }),
        [WorkerMethods.jobRun]: async () => {
          if (mode === "block") {
            blockFor(1_200); // four times the limit, then the reply at once
          } else {
            await released; // silent until the master gave up
          }
          return { exitCode: 7, resultSet: EMPTY_SET };
        },
      },
    }, async (master, logs) => {
      const held = await runScript(master, "exit 0", root);
      assert.equal(held.code, 7, `the worker's exit status: ${logs.join("\n")}`);
      assert.equal(master.stats.jobsRemote, 1);
      assert.ok(!logs.some((l) => /silent for/.test(l)), logs.join("\n"));
      mode = "silent";
      const silent = await runScript(master, "exit 0", root);
      assert.equal(silent.code, 0, "given up on, then run here");
      assert.ok(logs.some((l) => /silent for 300 ms/.test(l)), logs.join("\n"));
      release();
    });
  } finally {
    release();
    await Deno.remove(root, { recursive: true });
  }
});
