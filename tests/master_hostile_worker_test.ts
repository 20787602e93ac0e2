/**
 * The real master against a test-double worker that returns hostile result
 * sets: every set is refused whole, the tree is untouched, the worker is set
 * aside and the job still completes (locally) with the right output.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { registerWorker, startCoordinator } from "../coordinator/mod.ts";
import { type JobParams, VERSION, WorkerMethods } from "../common/protocol.ts";
import { Master } from "../master/master.ts";
import { type CallContext, listen, secretFromBytes } from "../rpc/mod.ts";

const enc = new TextEncoder();

for (const which of [0, 1, 2]) {
  Deno.test(`master refuses a hostile result set (case ${which}) and runs the job locally`, async () => {
    const root = await Deno.realPath(await Deno.makeTempDir({ prefix: "termite-hostile-" }));
    await Deno.chmod(root, 0o755);
    const cache = await Deno.makeTempDir({ prefix: "termite-hostile-cache-" });
    const outside = await Deno.makeTempDir({ prefix: "termite-hostile-out-" });
    await Deno.symlink(outside, `${root}/link`);
    await Deno.writeTextFile(`${root}/keep.c`, "int keep;\n");
    const secret = await secretFromBytes(crypto.getRandomValues(new Uint8Array(32)));
    const payload = enc.encode("pwned");
    const hash = createHash("sha256").update(payload).digest("hex");
    const sets = [
      { path: `${root}/../escaped`, what: ".." },
      { path: "/etc/termite-pwned", what: "absolute outside" },
      { path: `${root}/link/pwned`, what: "symlink escape" },
    ];
    let served = 0;
    const attempts: string[] = [];
    const worker = listen({
      transport: "tcp",
      hostname: "127.0.0.1",
      port: 0,
      secret,
      role: "worker",
      log: () => {},
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
    });
    await using coordinator = await startCoordinator({
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
      root,
      secret,
      cacheDir: cache,
      coordinator: `127.0.0.1:${coordinator.port}`,
      retries: 0,
      log: (m) => logs.push(m),
    });
    try {
      // Wait for the master to reserve slots on the double.
      for (let i = 0; i < 100 && master.workers.length === 0; i++) {
        await new Promise((r) => setTimeout(r, 50));
      }
      assert.equal(master.workers.length, 1);
      let out = "";
      const result = await master.run(
        {
          argv: ["sh", "-c", "echo built > out.txt; echo done"],
          cwd: root,
          env: { PATH: "/usr/bin:/bin" },
        },
        {
          stdout: (b) => {
            out += new TextDecoder().decode(b);
            return Promise.resolve();
          },
          stderr: () => Promise.resolve(),
          stdin: null,
          signal: new AbortController().signal,
        },
      );
      assert.equal(attempts.length, 1, "the hostile worker was tried once");
      assert.equal(result.code, 0);
      assert.equal(out, "done\n", "the job ran locally after the refusal");
      assert.equal(await Deno.readTextFile(`${root}/out.txt`), "built\n");
      assert.equal(
        await Deno.readTextFile(`${root}/keep.c`),
        "int keep;\n",
        "deletion not applied",
      );
      assert.deepEqual([...Deno.readDirSync(outside)], []);
      await assert.rejects(Deno.stat(`${root}/../escaped`), Deno.errors.NotFound);
      assert.ok(logs.some((m) => /Refusing result set/.test(m)), logs.join("\n"));
    } finally {
      await master.close();
      await registration.close();
      await worker.close();
      await Deno.remove(root, { recursive: true });
      await Deno.remove(cache, { recursive: true });
      await Deno.remove(outside, { recursive: true });
    }
  });
}
