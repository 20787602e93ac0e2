/**
 * `.termite-localrc` from the attacker's side: a rule runs commands on the
 * master, unsandboxed, so the file is policy. Catastrophic regexps, regexps
 * RE2 cannot compile, a file others may write or own, a symlink, a FIFO.
 */
import assert from "node:assert/strict";
import { closeSync, constants, openSync } from "node:fs";
import { Master } from "../master/master.ts";
import { DEFAULT_RULES, LOCALRC_NAME, LocalRules } from "../master/local_rules.ts";
import { secretFromBytes } from "../rpc/mod.ts";

const NOBODY = 65534;

async function withTree(fn: (root: string, rc: string) => Promise<void>): Promise<void> {
  const root = await Deno.realPath(await Deno.makeTempDir({ prefix: "termite-localrc-" }));
  try {
    await fn(root, `${root}/${LOCALRC_NAME}`);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
}

async function writeRules(path: string, rules: unknown, mode = 0o644): Promise<void> {
  await Deno.writeTextFile(path, JSON.stringify(rules));
  await Deno.chmod(path, mode);
}

/** Settles within `ms`, or fails the test instead of hanging it. */
async function within<T>(ms: number, what: string, promise: Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what}: still waiting after ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

Deno.test("LocalRules: a catastrophic regexp (^(a+)+$) matches a 29-character command at once", async () => {
  await withTree(async (root, rc) => {
    await writeRules(rc, [{ regexp: "^(a+)+$", local: true }]);
    const rules = await LocalRules.load(root);
    const started = performance.now();
    assert.equal(rules.match("a".repeat(28) + "!"), undefined);
    assert.equal(rules.match("a".repeat(100_000))?.regexp, "^(a+)+$");
    const ms = performance.now() - started;
    assert.ok(ms < 1_000, `matching took ${ms.toFixed(0)} ms`);
  });
});

Deno.test("LocalRules: a rule RE2 cannot compile is an error naming the file and the rule", async () => {
  await withTree(async (root, rc) => {
    for (const regexp of ["^(a)\\1$", "^(?=gcc)", "a{1001}"]) {
      await writeRules(rc, [{ regexp: "^make( |$)" }, { regexp, local: true }]);
      await assert.rejects(
        LocalRules.load(root),
        (err: Error) => {
          assert.match(err.message, new RegExp(`^Cannot use ${rc}: rule 1 .*not an RE2 regexp`));
          return true;
        },
      );
    }
    // The defaults are RE2 and still match what they did.
    const defaults = new LocalRules(DEFAULT_RULES);
    assert.ok(defaults.match("/usr/bin/make -j4"));
    assert.ok(defaults.match("./config.status --recheck"));
    assert.equal(defaults.match("gcc -c make.c"), undefined);
  });
});

Deno.test("LocalRules: a .termite-localrc others or its group may write is refused", async () => {
  await withTree(async (root, rc) => {
    for (
      const [mode, who] of [[0o666, "its group and others"], [0o646, "others"], [
        0o664,
        "its group",
      ]] as const
    ) {
      await writeRules(rc, [{ regexp: ".", local: true }], mode);
      await assert.rejects(
        LocalRules.load(root),
        new RegExp(
          `^LocalRulesError: Refusing ${rc}: it is writable by ${who} \\(mode 0${
            mode.toString(8)
          }\\)`,
        ),
      );
    }
    await Deno.chmod(rc, 0o644);
    assert.ok((await LocalRules.load(root)).match("anything"));
  });
});

Deno.test("LocalRules: a .termite-localrc owned by another user is refused", async () => {
  await withTree(async (root, rc) => {
    await writeRules(rc, [{ regexp: ".", local: true }]);
    await Deno.chown(rc, NOBODY, NOBODY);
    await assert.rejects(
      LocalRules.load(root),
      new RegExp(
        `^LocalRulesError: Refusing ${rc}: it belongs to uid ${NOBODY}, not to the master's user`,
      ),
    );
    // Root's own file is trusted by a master running as another user.
    await Deno.chown(rc, 0, 0);
    assert.ok((await LocalRules.load(root, 1000)).match("x"));
  });
});

Deno.test("LocalRules: a .termite-localrc that is a symlink or a directory is refused", async () => {
  await withTree(async (root, rc) => {
    const elsewhere = `${root}/rules.json`;
    await writeRules(elsewhere, [{ regexp: ".", local: true }]);
    await Deno.symlink(elsewhere, rc);
    await assert.rejects(
      LocalRules.load(root),
      new RegExp(`^LocalRulesError: Refusing ${rc}: it is a symlink`),
    );
    await Deno.remove(rc);
    await Deno.mkdir(rc);
    await assert.rejects(
      LocalRules.load(root),
      new RegExp(`^LocalRulesError: Refusing ${rc}: it is a directory`),
    );
  });
});

Deno.test("LocalRules: a .termite-localrc that is a FIFO is refused at once, never read", async () => {
  await withTree(async (root, rc) => {
    const mkfifo = await new Deno.Command("mkfifo", { args: [rc] }).output();
    assert.ok(mkfifo.success);
    try {
      await within(
        5_000,
        "loading a FIFO",
        assert.rejects(
          LocalRules.load(root),
          new RegExp(`^LocalRulesError: Refusing ${rc}: it is a FIFO`),
        ),
      );
    } finally {
      // Lets a reader stuck on the FIFO (the code before the fix) go.
      try {
        closeSync(openSync(rc, constants.O_WRONLY | constants.O_NONBLOCK));
      } catch {
        // Nobody was waiting.
      }
    }
  });
});

Deno.test("master: refuses to start on an untrusted .termite-localrc; a running one fails each job with the reason until it is fixed", async () => {
  await withTree(async (root, rc) => {
    const cacheDir = await Deno.makeTempDir({ prefix: "termite-localrc-cache-" });
    const secret = await secretFromBytes(crypto.getRandomValues(new Uint8Array(32)));
    try {
      await writeRules(rc, [{ regexp: "^true", local: true }], 0o666);
      await assert.rejects(
        Master.start({ root, secret, cacheDir, log: () => {} }),
        new RegExp(`Refusing ${rc}: it is writable by its group and others`),
      );
      await Deno.chmod(rc, 0o644);
      const logs: string[] = [];
      const master = await Master.start({ root, secret, cacheDir, log: (m) => logs.push(m) });
      try {
        // Another user (the tree is theirs to write, say) puts in their own rules.
        await Deno.remove(rc);
        await writeRules(rc, [{ regexp: ".", local: true }]);
        await Deno.chown(rc, NOBODY, NOBODY);
        const io = {
          stdout: () => Promise.resolve(),
          stderr: () => Promise.resolve(),
          stdin: null,
          signal: new AbortController().signal,
        };
        // Every job then fails at its wrapper, saying why, until the file is fixed.
        const refused = await master.run({ argv: ["true"], cwd: root, env: {} }, io);
        assert.equal(refused.code, 255);
        assert.match(refused.error ?? "", new RegExp(`Refusing ${rc}: .*uid 65534`));
        assert.ok(logs.some((m) => m.startsWith(`Refusing ${rc}`)), logs.join("\n"));
        await Deno.chown(rc, 0, 0);
        const { code } = await master.run({ argv: ["true"], cwd: root, env: {} }, io);
        assert.equal(code, 0);
      } finally {
        await master.close();
      }
    } finally {
      await Deno.remove(cacheDir, { recursive: true });
    }
  });
});

Deno.test("default rules keep recursive make, configure and the archivers local in their common spellings", () => {
  const rules = new LocalRules(DEFAULT_RULES);
  for (
    const line of [
      "make -j4",
      "/usr/bin/make all",
      "gmake",
      "cd src && make linux",
      "(cd src; make)",
      "MAKEFLAGS= make -C x",
      "if true; then make; fi",
      "env CC=gcc make",
      "cd build && ../configure --prefix=/x",
      "./config.status",
      "ar rcs liblua.a lapi.o lcode.o",
      "/usr/bin/ar cr x.a y.o",
      "ranlib liblua.a",
      "cd lib && x86_64-linux-gnu-ar rc libx.a a.o",
      "gcc-ar-12 rcs x.a a.o",
      "llvm-ar-14 rc x.a a.o",
      "(cd lib; ranlib libx.a)",
    ]
  ) assert.ok(rules.match(line)?.local, line);
  for (
    const line of [
      "echo make",
      "automake",
      "cmake --build .",
      "/usr/bin/cmake x",
      "gcc -c make.c",
      "gcc -c ar.c -o ar.o",
      "echo ar",
      "tar cf x.tar y",
      "arm-none-eabi-gcc -c x.c",
      "./ranlib.sh",
      "cp x.a ar",
    ]
  ) assert.equal(rules.match(line), undefined, line);
  // A .termite-localrc rule sends them to the workers again.
  const remote = new LocalRules([
    { regexp: String.raw`^(?:\S*/)?(?:ar|ranlib)\s`, local: false },
    ...DEFAULT_RULES,
  ]);
  assert.equal(remote.match("ar rcs liblua.a lapi.o")?.local, false);
  assert.ok(remote.match("make -j4")?.local);
});

Deno.test("a .termite-localrc adds to the default rules; a rule of its own may turn one off", async () => {
  await withTree(async (root, rc) => {
    await writeRules(rc, [{ regexp: "^gen-", local: true }]);
    const rules = await LocalRules.load(root);
    assert.ok(rules.match("gen-header x.h")?.local);
    assert.ok(rules.match("cd src && make")?.local, "the defaults still apply");
    await writeRules(rc, [{ regexp: "make", local: false }]);
    assert.equal((await LocalRules.load(root)).match("make -C sub")?.local, false);
  });
});
