/**
 * The real master against a test-double worker that returns hostile result
 * sets: every set is refused whole, the tree is untouched, the worker is set
 * aside and the job still completes (locally) with the right output.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { type JobParams, WorkerMethods } from "../common/protocol.ts";
import type { CallContext } from "../rpc/mod.ts";
import { runScript, withWorkerDouble } from "./_worker_double.ts";

const enc = new TextEncoder();

for (const which of [0, 1, 2]) {
  Deno.test(`master refuses a hostile result set (case ${which}) and runs the job locally`, async () => {
    const root = await Deno.realPath(await Deno.makeTempDir({ prefix: "termite-hostile-" }));
    await Deno.chmod(root, 0o755);
    const outside = await Deno.makeTempDir({ prefix: "termite-hostile-out-" });
    await Deno.symlink(outside, `${root}/link`);
    await Deno.writeTextFile(`${root}/keep.c`, "int keep;\n");
    const payload = enc.encode("pwned");
    const hash = createHash("sha256").update(payload).digest("hex");
    const sets = [
      { path: `${root}/../escaped`, what: ".." },
      { path: "/etc/termite-pwned", what: "absolute outside" },
      { path: `${root}/link/pwned`, what: "symlink escape" },
    ];
    let served = 0;
    const attempts: string[] = [];
    try {
      const result = await withWorkerDouble({
        root,
        handlers: {
          [WorkerMethods.mirrorOpen]: () => ({ slots: 4, workerId: "double" }),
          [WorkerMethods.jobRun]: (params: JobParams) => {
            served++;
            const bad = sets[which];
            attempts.push(`${bad.what}: ${params.argv.join(" ")}`);
            return {
              exitCode: 0,
              resultSet: {
                deletions: [`${root}/keep.c`],
                dirs: [],
                files: [{ path: bad.path, hash, size: payload.length, mode: 0o644, mtimeMs: 0 }],
                symlinks: [],
              },
            };
          },
          [WorkerMethods.blobGet]: async (_p: unknown, ctx: CallContext) => {
            await ctx.sendBytes(payload);
            return { size: payload.length };
          },
        },
      }, async (master, logs) => {
        const result = await runScript(master, "echo built > out.txt; echo done", root);
        assert.ok(logs.some((m) => /Refusing result set/.test(m)), logs.join("\n"));
        return result;
      });
      assert.equal(attempts.length, 1, "the hostile worker was tried once");
      assert.equal(result.code, 0);
      assert.equal(result.out, "done\n", "the job ran locally after the refusal");
      assert.equal(await Deno.readTextFile(`${root}/out.txt`), "built\n");
      assert.equal(
        await Deno.readTextFile(`${root}/keep.c`),
        "int keep;\n",
        "deletion not applied",
      );
      assert.deepEqual([...Deno.readDirSync(outside)], []);
      await assert.rejects(Deno.stat(`${root}/../escaped`), Deno.errors.NotFound);
    } finally {
      await Deno.remove(root, { recursive: true });
      await Deno.remove(outside, { recursive: true });
    }
  });
}
