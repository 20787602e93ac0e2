/**
 * Real mounts in temp dirs (always unmounted in `finally`): a POSIX table run
 * against a LoopbackFs mirror, error handling, concurrency, killed clients,
 * stale mounts, and compiling through the mirror.
 *
 * The test process serves the mount on its JS thread, so it touches the mount
 * only through async Deno APIs (they run on other threads) or subprocesses.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { FuseSession } from "../fuse/session.ts";
import { cleanStaleMount, setReadahead } from "../fuse/mounts.ts";
import { LoopbackFs, type LoopbackOptions } from "../fuse/loopback.ts";
import { EIO, ELOOP, ENOENT, EROFS } from "../fuse/errno.ts";
import type { FileSystem, MountOptions } from "../fuse/types.ts";

const BIG_BYTES = 20 * 1024 * 1024;

function sha256(data: Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

function pseudoRandom(size: number, seed: number): Uint8Array {
  const out = new Uint8Array(size);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < size; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

async function sh(
  script: string,
  env: Record<string, string> = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command("sh", { args: ["-c", script], env }).output();
  const text = new TextDecoder();
  return { code: out.code, stdout: text.decode(out.stdout), stderr: text.decode(out.stderr) };
}

/** A source tree with every kind of entry the table checks. */
async function makeSource(dir: string): Promise<void> {
  await Deno.writeTextFile(`${dir}/hello.txt`, "hello world\n");
  await Deno.mkdir(`${dir}/sub/deeper`, { recursive: true });
  await Deno.writeFile(`${dir}/sub/deeper/big.bin`, pseudoRandom(BIG_BYTES, 7));
  await Deno.writeTextFile(`${dir}/secret.txt`, "secret\n", { mode: 0o600 });
  await Deno.chmod(`${dir}/secret.txt`, 0o600);
  await Deno.writeTextFile(`${dir}/exec.sh`, "#!/bin/sh\necho ran\n");
  await Deno.chmod(`${dir}/exec.sh`, 0o755);
  await Deno.symlink("hello.txt", `${dir}/link`);
  await Deno.symlink("loop-b", `${dir}/loop-a`);
  await Deno.symlink("loop-a", `${dir}/loop-b`);
  await Deno.symlink("sub/deeper", `${dir}/dirlink`);
  for (let i = 0; i < 300; i++) {
    await Deno.writeTextFile(`${dir}/sub/file-${i}.h`, `#define VALUE_${i} ${i}\n`.repeat(i % 7));
  }
}

interface Fixture {
  source: string;
  mnt: string;
  fs: LoopbackFs;
  session: FuseSession;
}

async function withMount(
  options: LoopbackOptions & {
    wrap?: (fs: LoopbackFs) => FileSystem;
    source?: string;
    session?: Partial<MountOptions>;
  },
  body: (fixture: Fixture) => Promise<void>,
): Promise<void> {
  const base = await Deno.makeTempDir({ prefix: "fuse_mount_test_" });
  await Deno.chmod(base, 0o755); // other users (the permission checks) pass through
  const source = options.source ?? `${base}/src`;
  const mnt = `${base}/mnt`;
  await Deno.mkdir(mnt);
  if (options.source === undefined) {
    await Deno.mkdir(source);
    await makeSource(source);
  }
  const fs = new LoopbackFs(source, options);
  let session: FuseSession | undefined;
  try {
    session = await FuseSession.mount(options.wrap ? options.wrap(fs) : fs, {
      mountpoint: mnt,
      readOnly: true,
      allowOther: true,
      defaultPermissions: true,
      ...options.session,
    });
    await body({ source, mnt, fs, session });
  } finally {
    await session?.close();
    fs.close();
    await Deno.remove(base, { recursive: true });
  }
}

/**
 * The client side of the table: a Python script run as a subprocess. The test
 * process must not touch its own mount: Deno runs some file calls (seek,
 * close) on the JS thread, which is the thread serving the mount.
 */
const CLIENT_PY = String.raw`
import sys, os, json, hashlib
out = []
for op in json.loads(sys.argv[1]):
    kind, path = op[0], op[1]
    try:
        if kind in ("lstat", "stat"):
            st = (os.lstat if kind == "lstat" else os.stat)(path)
            r = {"mode": st.st_mode, "size": st.st_size, "ino": st.st_ino, "nlink": st.st_nlink,
                 "mtime_ns": st.st_mtime_ns, "uid": st.st_uid, "gid": st.st_gid}
        elif kind == "list":
            r = sorted(e.name + ":" + ("l" if e.is_symlink() else "d" if e.is_dir() else "f")
                       for e in os.scandir(path))
        elif kind == "readlink":
            r = os.readlink(path)
        elif kind == "pread":
            fd = os.open(path, os.O_RDONLY)
            try:
                r = hashlib.sha256(os.pread(fd, op[3], op[2])).hexdigest()
            finally:
                os.close(fd)
        elif kind == "sha256":
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            r = h.hexdigest()
        elif kind == "write":
            os.close(os.open(path, os.O_WRONLY))
            r = "opened"
        else:
            r = "bad op"
    except OSError as e:
        r = {"errno": e.errno}
    out.append(r)
print(json.dumps(out))
`;

type ClientOp = [string, string, ...number[]];

/** Run `ops` (paths relative to `root`) in a client process; one result per op. */
async function client(root: string, ops: ClientOp[]): Promise<unknown[]> {
  const absolute = ops.map(([kind, path, ...rest]) => [kind, `${root}/${path}`, ...rest]);
  const out = await new Deno.Command("python3", {
    args: ["-c", CLIENT_PY, JSON.stringify(absolute)],
  }).output();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  return JSON.parse(new TextDecoder().decode(out.stdout));
}

/** The same ops on the source and through the mount must give the same results. */
async function sameAsSource(f: Fixture, ops: ClientOp[]): Promise<unknown[]> {
  const [want, got] = await Promise.all([client(f.source, ops), client(f.mnt, ops)]);
  assert.deepEqual(got, want);
  return got;
}

function errnoResult(result: unknown): number | undefined {
  return (result as { errno?: number }).errno;
}

type Check = (f: Fixture) => Promise<void>;

/** A reusable POSIX table: name → check, run against any mirror of makeSource(). */
const POSIX_TABLE: Record<string, Check> = {
  "lstat and stat show the source's size, mode, inode, links and exact times": async (f) => {
    const paths = ["hello.txt", "sub", "link", "dirlink", "exec.sh", "secret.txt", "loop-a", ""];
    const [hello] = await sameAsSource(f, [
      ...paths.map((p): ClientOp => ["lstat", p]),
      ...paths.map((p): ClientOp => ["stat", p]),
    ]) as Array<{ size: number }>;
    assert.equal(hello.size, 12);
  },
  "readdir lists the same names and types as the source": async (f) => {
    const [top] = await sameAsSource(f, [["list", ""], ["list", "sub"], ["list", "sub/deeper"]]);
    assert.ok((top as string[]).includes("link:l"));
  },
  "readlink returns the target text": async (f) => {
    const got = await sameAsSource(f, [["readlink", "link"], ["readlink", "dirlink"]]);
    assert.deepEqual(got, ["hello.txt", "sub/deeper"]);
  },
  "read at offsets": async (f) => {
    const offsets = [0, 1, 4095, 4096, 131_071, BIG_BYTES - 10, BIG_BYTES - 1, BIG_BYTES];
    const got = await sameAsSource(
      f,
      offsets.map((offset): ClientOp => ["pread", "sub/deeper/big.bin", offset, 10_000]),
    );
    assert.equal(new Set(got).size, got.length);
  },
  "a 20 MiB file reads back with the same sha256": async (f) => {
    const [digest] = await sameAsSource(f, [["sha256", "sub/deeper/big.bin"]]);
    assert.equal(digest, sha256(pseudoRandom(BIG_BYTES, 7)));
  },
  "a missing name is ENOENT, twice (negative entry)": async (f) => {
    const got = await sameAsSource(f, [["stat", "nope"], ["stat", "nope"], ["stat", "sub/nope/x"]]);
    assert.deepEqual(got.map(errnoResult), [ENOENT, ENOENT, ENOENT]);
  },
  "permission bits are kept and enforced for other users": async ({ mnt }) => {
    const asNobody = await sh(
      `setpriv --reuid=65534 --regid=65534 --clear-groups cat "${mnt}/secret.txt"; ` +
        `setpriv --reuid=65534 --regid=65534 --clear-groups cat "${mnt}/hello.txt"`,
    );
    assert.match(asNobody.stderr, /Permission denied/);
    assert.equal(asNobody.stdout, "hello world\n");
    const run = await sh(`"${mnt}/exec.sh"`);
    assert.equal(run.stdout, "ran\n");
  },
  "a symlink loop is ELOOP": async (f) => {
    const [loop] = await sameAsSource(f, [["stat", "loop-a"]]);
    assert.equal(errnoResult(loop), ELOOP);
  },
  "writes are refused on the read-only mount": async ({ mnt }) => {
    const [opened] = await client(mnt, [["write", "hello.txt"]]);
    assert.equal(errnoResult(opened), EROFS);
  },
};

for (
  const [caching, options] of [
    ["no kernel caching", {
      entryTimeoutS: 0,
      attrTimeoutS: 0,
      negativeTimeoutS: 0,
      keepCache: false,
    }],
    ["kernel caching", { entryTimeoutS: 60, attrTimeoutS: 60, negativeTimeoutS: 60 }],
    ["readdirplus", { readdirplus: true }],
    ["zero-message opens", { noOpen: true, fdsMax: 2 }],
    ["every wait on a thread", { session: { syncWaitMs: 0 } }],
  ] as const
) {
  Deno.test(`LoopbackFs passes the POSIX table (${caching})`, async (t) => {
    await withMount(options, async (fixture) => {
      for (const [name, check] of Object.entries(POSIX_TABLE)) {
        await t.step(name, () => check(fixture));
      }
      assert.equal(fixture.session.stats.failures, 0);
    });
  });
}

Deno.test("a handler that throws gives EIO to the caller and the mount keeps serving", async () => {
  await withMount({
    wrap: (fs) => ({
      lookup: (parent, name) => {
        if (name === "boom") throw new Error("handler failure (expected in this test)");
        return fs.lookup(parent, name);
      },
      getattr: (ino) => fs.getattr(ino),
      opendir: (ino) => fs.opendir(ino),
      readdir: (ino, fh, offset, size) => fs.readdir(ino, fh, offset, size),
      releasedir: (ino, fh) => fs.releasedir(ino, fh),
      open: async (ino, flags, ctx) => {
        await new Promise((resolve) => setTimeout(resolve, 1));
        return fs.open!(ino, flags, ctx);
      },
      read: (ino, fh, size, offset, ctx) => fs.read(ino, fh, size, offset, ctx),
      release: (ino, fh) => fs.release!(ino, fh),
    }),
  }, async ({ mnt, session }) => {
    const originalError = console.error;
    console.error = () => {};
    try {
      const got = await client(mnt, [["stat", "boom"], ["stat", "boom"]]);
      assert.deepEqual(got.map(errnoResult), [EIO, EIO]);
    } finally {
      console.error = originalError;
    }
    const [digest] = await client(mnt, [["sha256", "hello.txt"]]);
    assert.equal(digest, sha256(new TextEncoder().encode("hello world\n")));
    assert.equal(session.stats.failures, 2);
    assert.ok(session.stats.asyncReplies >= 1);
  });
});

Deno.test("gcc compiles through the mirror to a byte-identical object", async () => {
  const gccInclude = (await sh("gcc -print-file-name=include")).stdout.trim();
  assert.ok(gccInclude.startsWith("/usr/"), gccInclude);
  const work = await Deno.makeTempDir({ prefix: "fuse_gcc_test_" });
  try {
    const headers = [
      "stdio.h",
      "stdlib.h",
      "string.h",
      "math.h",
      "errno.h",
      "fcntl.h",
      "unistd.h",
      "signal.h",
      "time.h",
      "ctype.h",
      "limits.h",
      "stdint.h",
      "inttypes.h",
      "assert.h",
      "locale.h",
      "pthread.h",
      "sys/stat.h",
      "sys/types.h",
      "sys/socket.h",
      "netinet/in.h",
      "arpa/inet.h",
      "dirent.h",
      "poll.h",
      "sys/mman.h",
      "setjmp.h",
      "wchar.h",
      "stdarg.h",
      "stddef.h",
      "float.h",
    ];
    const program = headers.map((h) => `#include <${h}>`).join("\n") + `
static int cmp(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }
int main(int argc, char **argv) {
  int v[4] = {3, 1, 2, argc};
  qsort(v, 4, sizeof v[0], cmp);
  printf("%d %s %f %" PRIu64 "\\n", v[0], strerror(ENOENT), sqrt(2.0), (uint64_t)INT64_MAX);
  assert(argv != NULL);
  return isdigit('1') ? 0 : 1;
}
`;
    await Deno.writeTextFile(`${work}/prog.c`, program);
    await withMount(
      { source: "/usr", entryTimeoutS: 1, attrTimeoutS: 1 },
      async ({ mnt, session }) => {
        const compile = (root: string, out: string) =>
          sh(
            `cd "${work}" && gcc -g0 -O2 -nostdinc -isystem "${root}${gccInclude.slice(4)}" ` +
              `-isystem "${root}/include/x86_64-linux-gnu" -isystem "${root}/include" ` +
              `-H -c prog.c -o ${out}`,
          );
        const bare = await compile("/usr", "bare.o");
        assert.equal(bare.code, 0, bare.stderr);
        const before = session.stats.requests;
        const mirrored = await compile(mnt, "mirror.o");
        assert.equal(mirrored.code, 0, mirrored.stderr);
        assert.ok(
          mirrored.stderr.includes(`${mnt}/include/stdio.h`),
          "headers not read via the mirror",
        );
        assert.ok(session.stats.requests > before + 50);
        const [a, b] = await Promise.all([
          Deno.readFile(`${work}/bare.o`),
          Deno.readFile(`${work}/mirror.o`),
        ]);
        assert.equal(sha256(b), sha256(a));
      },
    );
  } finally {
    await Deno.remove(work, { recursive: true });
  }
});

Deno.test("a busy mount leaves the event loop running, and an idle one waits on a thread", async () => {
  await withMount(
    { entryTimeoutS: 0, attrTimeoutS: 0, negativeTimeoutS: 0, keepCache: false },
    async ({ mnt, session }) => {
      // A 1 ms timer records how many requests were served since it last ran:
      // a request loop that starved the event loop would show one huge gap.
      let last = session.stats.requests;
      let widestGap = 0;
      let fired = 0;
      const timer = setInterval(() => {
        const now = session.stats.requests;
        widestGap = Math.max(widestGap, now - last);
        last = now;
        fired++;
      }, 1);
      const before = session.stats.requests;
      try {
        // Three clients at once keep requests queued without a pause.
        const loop =
          `python3 -c 'import os\nfor i in range(4000): os.lstat("${mnt}/sub/deeper/big.bin")'`;
        const busy = await sh(`${loop} & ${loop} & ${loop} & wait`);
        assert.equal(busy.code, 0, busy.stderr);
      } finally {
        clearInterval(timer);
      }
      const served = session.stats.requests - before;
      assert.ok(served > 2000, `only ${served} requests`);
      assert.ok(fired > 0);
      assert.ok(widestGap < served / 4, `${widestGap} of ${served} requests without a timer turn`);
      // Idle now: within a few ticks the wait moves to a helper thread.
      const waits = session.stats.threadWaits;
      await new Promise((resolve) => setTimeout(resolve, 50));
      const after = await client(mnt, [["lstat", "hello.txt"]]);
      assert.equal((after[0] as { size: number }).size, 12);
      assert.ok(session.stats.threadWaits > waits, "the idle session never waited on a thread");
    },
  );
});

Deno.test("8 processes reading and stat-ing through one mount at once", async () => {
  await withMount(
    { entryTimeoutS: 0, attrTimeoutS: 0, negativeTimeoutS: 0, keepCache: false },
    async ({ source, mnt, session }) => {
      const listing = `cd "$ROOT" && find . -type f ! -name big.bin | sort | xargs sha256sum && ` +
        `find . | sort | xargs stat -c '%n %s %a %h %Y'`;
      const expected = await sh(listing, { ROOT: source });
      assert.equal(expected.code, 0, expected.stderr);
      const deadline = Date.now() + 3000;
      const worker = async () => {
        let rounds = 0;
        while (Date.now() < deadline || rounds === 0) {
          const got = await sh(listing, { ROOT: mnt });
          assert.equal(got.code, 0, got.stderr);
          assert.equal(got.stdout, expected.stdout);
          rounds++;
        }
        return rounds;
      };
      const rounds = await Promise.all(Array.from({ length: 8 }, worker));
      assert.ok(rounds.every((n) => n >= 1));
      assert.ok(session.stats.requests > 1000);
    },
  );
});

Deno.test("setReadahead() makes a cold read of a big file take fewer, larger requests", async () => {
  // Each mount reads the 8 MiB file once, cold (a new mount has a new inode).
  const source = await Deno.makeTempDir({ prefix: "fuse_readahead_src_" });
  try {
    await Deno.chmod(source, 0o755);
    await Deno.writeFile(`${source}/large.bin`, pseudoRandom(8 << 20, 3));
    const readRequests = async (kib?: number) => {
      let requests = 0;
      await withMount({ source }, async ({ mnt, session }) => {
        if (kib !== undefined) assert.equal(await setReadahead(mnt, kib), true);
        const before = session.stats.requests;
        const got = await sh(`sha256sum < "$F"`, { F: `${mnt}/large.bin` });
        assert.equal(got.code, 0, got.stderr);
        requests = session.stats.requests - before;
      });
      return requests;
    };
    const kernelDefault = await readRequests();
    const raised = await readRequests(1024);
    const counts = `${kernelDefault} requests at the kernel's default, ${raised} at 1 MiB`;
    assert.ok(kernelDefault >= 32, counts); // 8 MiB in 256 KiB (two windows of 128) or less
    assert.ok(raised * 2 <= kernelDefault, counts); // the window grows from a small first one
    assert.equal(await setReadahead(`${source}/not-a-mount`, 1024), false);
  } finally {
    await Deno.remove(source, { recursive: true });
  }
});

Deno.test("the mount survives a client killed mid-read", async () => {
  await withMount({
    keepCache: false,
    wrap: (fs) => ({
      lookup: (parent, name) => fs.lookup(parent, name),
      getattr: (ino) => fs.getattr(ino),
      open: (ino, flags, ctx) => fs.open!(ino, flags, ctx),
      release: (ino, fh) => fs.release!(ino, fh),
      // Slow reads, so that the client is surely inside a read when killed.
      read: async (ino, fh, size, offset, ctx) => {
        await new Promise((resolve) => setTimeout(resolve, 5));
        return fs.read(ino, fh, size, offset, ctx);
      },
    }),
  }, async ({ source, mnt, session }) => {
    const child = new Deno.Command("cat", {
      args: [`${mnt}/sub/deeper/big.bin`],
      stdout: "null",
    }).spawn();
    while (session.stats.asyncReplies < 3) await new Promise((r) => setTimeout(r, 5));
    child.kill("SIGKILL");
    const status = await child.status;
    assert.equal(status.signal, "SIGKILL");
    const ops: ClientOp[] = [["sha256", "sub/deeper/big.bin"], ["sha256", "hello.txt"]];
    const [want, got] = await Promise.all([client(source, ops), client(mnt, ops)]);
    assert.deepEqual(got, want);
  });
});

Deno.test("close() ends the connection even when another mount namespace holds a copy", async () => {
  const base = await Deno.makeTempDir({ prefix: "fuse_ns_test_" });
  const mnt = `${base}/mnt`;
  await Deno.mkdir(mnt);
  await Deno.mkdir(`${base}/src`);
  await Deno.writeTextFile(`${base}/src/a.txt`, "a\n");
  const fs = new LoopbackFs(`${base}/src`, {
    entryTimeoutS: 0,
    attrTimeoutS: 0,
    negativeTimeoutS: 0,
  });
  const session = await FuseSession.mount(fs, { mountpoint: mnt });
  let child: Deno.ChildProcess | undefined;
  try {
    child = new Deno.Command("unshare", {
      args: [
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        `cat "${mnt}/a.txt"; read x; cat "${mnt}/a.txt"; echo rc=$?`,
      ],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const reader = child.stdout.getReader();
    const first = await reader.read();
    assert.equal(new TextDecoder().decode(first.value), "a\n");
    await session.close();
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode("go\n"));
    await writer.close();
    let rest = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      rest += new TextDecoder().decode(value);
    }
    const stderr = new TextDecoder().decode(await new Response(child.stderr).arrayBuffer());
    await child.status;
    child = undefined;
    assert.equal(rest.trim(), "rc=1");
    assert.match(stderr, /not connected/i);
  } finally {
    child?.kill("SIGKILL");
    await child?.status;
    await session.close();
    fs.close();
    await Deno.remove(base, { recursive: true });
  }
});

Deno.test("a stale mount left by a killed process is cleaned by cleanStaleMount()", async () => {
  const base = await Deno.makeTempDir({ prefix: "fuse_stale_test_" });
  const mnt = `${base}/mnt`;
  await Deno.mkdir(mnt);
  const script = `${base}/child.ts`;
  await Deno.writeTextFile(
    script,
    `import { FuseSession, LoopbackFs } from ${
      JSON.stringify(import.meta.resolve("../fuse/mod.ts"))
    };
const session = await FuseSession.mount(new LoopbackFs(${JSON.stringify(base)}), { mountpoint: ${
      JSON.stringify(mnt)
    } });
console.log("ready");
await session.closed;
`,
  );
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", script],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  try {
    const reader = child.stdout.getReader();
    const { value } = await reader.read();
    assert.equal(new TextDecoder().decode(value).trim(), "ready");
    reader.releaseLock();
    assert.equal(await cleanStaleMount(mnt), false); // alive: left alone
    child.kill("SIGKILL");
    await child.status;
    await child.stdout.cancel();
    const mounts = await Deno.readTextFile("/proc/self/mounts");
    assert.ok(mounts.includes(` ${mnt} `), "mount vanished by itself");
    const statfs = await sh(`stat -f "${mnt}"`);
    assert.match(statfs.stderr, /not connected/i);
    assert.equal(await cleanStaleMount(mnt), true);
    assert.equal((await Deno.stat(mnt)).isDirectory, true);
    assert.ok(!(await Deno.readTextFile("/proc/self/mounts")).includes(` ${mnt} `));
    assert.equal(await cleanStaleMount(mnt), false);
  } finally {
    try {
      child.kill("SIGKILL");
    } catch {
      // already gone
    }
    await child.status;
    await cleanStaleMount(mnt);
    await Deno.remove(base, { recursive: true });
  }
});

Deno.test("processes started while mounted do not inherit /dev/fuse", async () => {
  await withMount({}, async ({ mnt }) => {
    const fds = await sh(`ls -l /proc/self/fd/; cat "${mnt}/hello.txt"`);
    assert.equal(fds.code, 0, fds.stderr);
    assert.ok(fds.stdout.includes("hello world"));
    assert.ok(!fds.stdout.includes("/dev/fuse"), fds.stdout);
  });
});

Deno.test("closeOnSignals() unmounts on SIGTERM and the server exits by itself", async () => {
  const base = await Deno.makeTempDir({ prefix: "fuse_signal_test_" });
  const mnt = `${base}/mnt`;
  await Deno.mkdir(mnt);
  const script = `${base}/child.ts`;
  const mod = JSON.stringify(import.meta.resolve("../fuse/mod.ts"));
  await Deno.writeTextFile(
    script,
    `import { FuseSession, LoopbackFs } from ${mod};
using fs = new LoopbackFs(${JSON.stringify(base)});
const session = await FuseSession.mount(fs, { mountpoint: ${JSON.stringify(mnt)} });
session.closeOnSignals();
console.log("ready");
await session.closed;
console.log("closed");
`,
  );
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", script],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  try {
    const reader = child.stdout.getReader();
    const first = await reader.read();
    assert.equal(new TextDecoder().decode(first.value).trim(), "ready");
    const listed = await sh(`ls "${mnt}"`);
    assert.ok(listed.stdout.includes("child.ts"));
    child.kill("SIGTERM");
    let rest = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      rest += new TextDecoder().decode(value);
    }
    const status = await child.status;
    assert.equal(status.code, 0);
    assert.equal(rest.trim(), "closed");
    assert.ok(!(await Deno.readTextFile("/proc/self/mounts")).includes(` ${mnt} `));
  } finally {
    try {
      child.kill("SIGKILL");
    } catch {
      // already gone
    }
    await child.status;
    await cleanStaleMount(mnt);
    await Deno.remove(base, { recursive: true });
  }
});

Deno.test("notifyInvalEntry() and notifyInvalInode() drop cached answers", async () => {
  await withMount(
    { entryTimeoutS: 3600, attrTimeoutS: 3600, negativeTimeoutS: 3600 },
    async ({ source, mnt, session }) => {
      const [missing] = await client(mnt, [["stat", "later.txt"]]);
      assert.equal(errnoResult(missing), ENOENT);
      await Deno.writeTextFile(`${source}/later.txt`, "now here\n");
      const [stillMissing] = await client(mnt, [["stat", "later.txt"]]);
      assert.equal(errnoResult(stillMissing), ENOENT, "negative entry was not cached");
      assert.equal(await session.notifyInvalEntry(1n, "later.txt"), 0);
      const [found] = await client(mnt, [["stat", "later.txt"]]) as Array<{ size: number }>;
      assert.equal(found.size, 9);

      const [before] = await client(mnt, [["stat", ""]]) as Array<{ mtime_ns: number }>;
      await Deno.writeTextFile(`${source}/another.txt`, "x");
      await Deno.utime(source, 1_000_000, 1_000_000);
      const [cached] = await client(mnt, [["stat", ""]]) as Array<{ mtime_ns: number }>;
      assert.equal(cached.mtime_ns, before.mtime_ns, "attributes were not cached");
      assert.equal(await session.notifyInvalInode(1n, -1), 0);
      const [fresh] = await client(mnt, [["stat", ""]]) as Array<{ mtime_ns: number }>;
      assert.equal(fresh.mtime_ns, 1_000_000 * 1e9);
      assert.equal(await session.notifyInvalEntry(1n, "never-looked-up"), -ENOENT);
    },
  );
});

Deno.test("a notification waits on a helper thread while a lookup in that directory is pending", async () => {
  let release!: () => void;
  const gate = new Promise<void>((resolve) => release = resolve);
  let slowStarted!: () => void;
  const started = new Promise<void>((resolve) => slowStarted = resolve);
  await withMount({
    entryTimeoutS: 3600,
    attrTimeoutS: 3600,
    wrap: (fs) => ({
      lookup: async (parent, name) => {
        if (name === "slow") {
          slowStarted();
          await gate;
        }
        return fs.lookup(parent, name);
      },
      getattr: (ino) => fs.getattr(ino),
    }),
  }, async ({ mnt, session }) => {
    await client(mnt, [["stat", "hello.txt"]]);
    const slow = client(mnt, [["stat", "slow"]]);
    await started;
    const notified = session.notifyInvalEntry(1n, "hello.txt");
    // The JS thread is free meanwhile: timers run and the gate can open.
    await new Promise((resolve) => setTimeout(resolve, 50));
    release();
    assert.equal(errnoResult((await slow)[0]), ENOENT);
    assert.equal(await notified, 0);
  });
});
