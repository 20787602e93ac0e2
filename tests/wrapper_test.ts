import assert from "node:assert/strict";
import { startMaster } from "../master/mod.ts";
import { secretFromBytes } from "../rpc/mod.ts";
import { runShellBuiltin } from "../wrapper/client.ts";
import { buildClient } from "../wrapper/native/build.ts";
import {
  encodeWrapperFrame,
  FrameType,
  WRAPPER_FRAME_BYTES_MAX,
  WrapperFrameReader,
} from "../wrapper/protocol.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const dec = new TextDecoder();

/** The wrappers the tests run: the Deno one (the default) and the native client (opt-in). */
type WrapperKind = "deno" | "native";
const KINDS: WrapperKind[] = ["deno", "native"];
let built: Promise<string> | undefined;
/** The native client, built on first use (within a test: no op outlives it). */
const native = () => built ??= buildClient();

/**
 * Runs `args` (`--as TOOL ARGS...`) through the wrapper of `kind`: wrapper.ts
 * itself, or the native client linked as TOOL in a folder of its own.
 */
async function wrapWith(
  kind: WrapperKind,
  args: string[],
  options: { cwd: string; env?: Record<string, string>; stdin?: Uint8Array },
) {
  let cmd = [
    Deno.execPath(),
    "run",
    "-A",
    "--no-config",
    "--no-lock",
    `${ROOT}wrapper.ts`,
    ...args,
  ];
  let links: string | undefined;
  if (kind === "native") {
    assert.equal(args[0], "--as");
    links = await Deno.makeTempDir({ prefix: "termite-links-" });
    await Deno.symlink(await native(), `${links}/${args[1]}`);
    cmd = [`${links}/${args[1]}`, ...args.slice(2)];
  }
  try {
    const child = new Deno.Command(cmd[0], {
      args: cmd.slice(1),
      cwd: options.cwd,
      env: options.env,
      stdin: options.stdin ? "piped" : "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    if (options.stdin) {
      const w = child.stdin.getWriter();
      await w.write(options.stdin);
      await w.close();
    }
    const out = await child.output();
    return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
  } finally {
    if (links) await Deno.remove(links, { recursive: true });
  }
}

/** What a tool's link points to for `kind`. */
async function shimOf(kind: WrapperKind): Promise<string> {
  return kind === "native"
    ? await native()
    : new URL("../bin/termite-wrap", import.meta.url).pathname;
}

/** {@linkcode wrapWith} for one kind of wrapper. */
function wrapper(kind: WrapperKind) {
  return (args: string[], options: Parameters<typeof wrapWith>[2]) => wrapWith(kind, args, options);
}

/** Leaves a socket file nobody listens on (as a crashed master would). */
async function staleSocket(path: string): Promise<void> {
  const py = `import socket; s = socket.socket(socket.AF_UNIX); s.bind(${JSON.stringify(path)})`;
  const out = await new Deno.Command("python3", { args: ["-c", py] }).output();
  assert.ok(out.success);
  assert.ok((await Deno.lstat(path)).isSocket);
}

function randomBytes(n: number): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i += 65536) crypto.getRandomValues(out.subarray(i, i + 65536));
  return out;
}

async function tempTree(): Promise<string> {
  const dir = await Deno.realPath(await Deno.makeTempDir({ prefix: "termite-wrap-" }));
  await Deno.chmod(dir, 0o755);
  return dir;
}

for (const kind of KINDS) {
  Deno.test(`wrapper (${kind}): with no master the tool runs here with one warning line, or fails when asked to`, async () => {
    const wrap = wrapper(kind);
    const dir = await tempTree();
    try {
      const r = await wrap(["--as", "gcc", "--version"], {
        cwd: dir,
        env: { PATH: "/usr/bin:/bin" },
      });
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /^gcc /, "gcc's own output");
      const lines = r.stderr.trim().split("\n");
      assert.equal(lines.length, 1, r.stderr);
      assert.match(
        lines[0],
        /^termite: no master for .* start `deno run -A \/.*\/master\.ts` in the build tree\); running gcc here$/,
      );
      const strict = await wrap(["--as", "gcc", "--version"], {
        cwd: dir,
        env: { PATH: "/usr/bin:/bin", TERMITE_LOCAL_FALLBACK: "0" },
      });
      assert.equal(strict.code, 255);
      assert.equal(strict.stdout, "");
      assert.match(strict.stderr, /no master for .*TERMITE_LOCAL_FALLBACK=0: not running it here/);
      assert.equal(strict.stderr.trim().split("\n").length, 1);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}

for (const kind of KINDS) {
  Deno.test(`wrapper (${kind}): linked as \`termite\` it is a compiler launcher (CMake): the command follows`, async () => {
    const dir = await tempTree();
    try {
      const shim = await shimOf(kind);
      await Deno.symlink(shim, `${dir}/termite`);
      const out = await new Deno.Command(`${dir}/termite`, {
        args: ["/usr/bin/gcc", "-dumpmachine"],
        cwd: dir,
        env: { PATH: "/usr/bin:/bin" },
        clearEnv: true,
      }).output();
      const stderr = new TextDecoder().decode(out.stderr);
      assert.equal(out.code, 0, stderr);
      assert.match(new TextDecoder().decode(out.stdout), /^x86_64-/);
      assert.match(stderr, /running \/usr\/bin\/gcc here/);
      const bare = await new Deno.Command(`${dir}/termite`, { cwd: dir }).output();
      assert.equal(bare.code, 2);
      assert.match(new TextDecoder().decode(bare.stderr), /usage: termite COMMAND/);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}

for (const kind of KINDS) {
  Deno.test(`wrapper (${kind}): a stale socket file is reported, and the tool runs here unless told not to`, async () => {
    const wrap = wrapper(kind);
    const dir = await tempTree();
    try {
      await staleSocket(`${dir}/.termite-socket`);
      const r = await wrap(["--as", "echo", "hi"], {
        cwd: dir,
        env: { PATH: "/usr/bin:/bin", TERMITE_LOCAL_FALLBACK: "0" },
      });
      assert.equal(r.code, 255);
      assert.match(r.stderr, /stale socket/);
      const f = await wrap(["--as", "echo", "hi"], { cwd: dir, env: { PATH: "/usr/bin:/bin" } });
      assert.equal(f.code, 0);
      assert.equal(f.stdout, "hi\n");
      assert.match(
        f.stderr.trim(),
        /^termite: cannot reach the master .*stale socket\); running echo here$/,
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}

for (const kind of KINDS) {
  Deno.test(`wrapper (${kind}): bin/termite-wrap linked as gcc runs as gcc, and a local run skips the link's directory in PATH`, async () => {
    const dir = await tempTree();
    try {
      // A space, "#" and "%": the link's path is decoded from a URL.
      const links = `${dir}/tool #1 %41 links`;
      await Deno.mkdir(links);
      const shim = await shimOf(kind);
      await Deno.symlink(shim, `${links}/gcc`);
      await staleSocket(`${dir}/.termite-socket`);
      const out = await new Deno.Command(`${links}/gcc`, {
        args: ["-dumpmachine"],
        cwd: dir,
        // The link's directory twice, spelled otherwise: both must go.
        env: { PATH: `${links}/:./tool #1 %41 links:/usr/bin:/bin`, TERMITE_LOCAL_FALLBACK: "1" },
        clearEnv: true,
        signal: AbortSignal.timeout(30_000), // a wrapper recursing into itself would never end
      }).output();
      const stderr = new TextDecoder().decode(out.stderr);
      // The real gcc answered (the link would have recursed into the wrapper).
      assert.equal(out.code, 0, stderr);
      assert.match(new TextDecoder().decode(out.stdout), /^x86_64-.*linux-gnu\n$/);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}

Deno.test("wrapper: a checkout whose path holds a space, #, % and ? runs its links, termite-make too", async () => {
  const dir = await tempTree();
  try {
    // termite-make's module is imported by a file URL the shim builds by hand:
    // each of these must be encoded.
    const checkout = `${dir}/check #1 %41 ?x é`;
    for (const sub of ["bin", "wrapper", "common"]) {
      await Deno.mkdir(`${checkout}/${sub}`, { recursive: true });
    }
    const files = ["bin/termite-wrap", "wrapper.ts", "common/errors.ts"];
    for (const f of ["client.ts", "protocol.ts", "elastic_make.ts"]) files.push(`wrapper/${f}`);
    for (const f of files) await Deno.copyFile(`${ROOT}/${f}`, `${checkout}/${f}`);
    await Deno.symlink(`${checkout}/bin/termite-wrap`, `${dir}/termite-sh`);
    // Run from the link, with a bare environment.
    const linked = async (name: string, args: string[]) => {
      const out = await new Deno.Command(`${dir}/${name}`, {
        args,
        cwd: dir,
        env: { PATH: "/usr/bin:/bin" },
        clearEnv: true,
      }).output();
      const text = new TextDecoder();
      return { code: out.code, stdout: text.decode(out.stdout), stderr: text.decode(out.stderr) };
    };
    assert.deepEqual(await linked("termite-sh", ["-c", "echo hi"]), {
      code: 0,
      stdout: "hi\n",
      stderr: "",
    });
    // termite-make loads wrapper/elastic_make.ts from the checkout (not bundled).
    await Deno.symlink(`${checkout}/bin/termite-wrap`, `${dir}/termite-make`);
    const make = await linked("termite-make", ["--version"]);
    assert.match(make.stderr, /termite-make: no usable master/);
    assert.equal(make.code, 0);
    assert.match(make.stdout, /^GNU Make/);
    // Without it, a clear error naming the file it looked for.
    await Deno.remove(`${checkout}/wrapper/elastic_make.ts`);
    const gone = await linked("termite-make", ["--version"]);
    assert.equal(gone.code, 255);
    assert.match(
      gone.stderr,
      /^termite-make: cannot load .*\/check #1 %41 \?x é\/wrapper\/elastic_make\.ts \(it runs from the checkout\)/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("runShellBuiltin() runs true, false, : and plain echo only", () => {
  assert.deepEqual(runShellBuiltin("true"), { code: 0, stdout: "" });
  assert.deepEqual(runShellBuiltin(":"), { code: 0, stdout: "" });
  assert.deepEqual(runShellBuiltin("false"), { code: 1, stdout: "" });
  assert.deepEqual(runShellBuiltin("echo a  b"), { code: 0, stdout: "a b\n" });
  assert.deepEqual(runShellBuiltin("echo -n a"), { code: 0, stdout: "a" });
  assert.equal(runShellBuiltin("echo $HOME"), null);
  assert.equal(runShellBuiltin("echo a > f"), null);
  assert.equal(runShellBuiltin("true; rm -rf x"), null);
  assert.equal(runShellBuiltin("gcc -c a.c"), null);
});

for (const kind of KINDS) {
  Deno.test(`wrapper (${kind}) through a master with no workers: output, status, stdin, builtins`, async () => {
    const wrap = wrapper(kind);
    const dir = await tempTree();
    const cache = await Deno.makeTempDir({ prefix: "termite-mcache-" });
    const messages: string[] = [];
    await using master = await startMaster({
      root: dir,
      secret: await secretFromBytes(crypto.getRandomValues(new Uint8Array(32))),
      cacheDir: cache,
      log: (m) => messages.push(m),
    });
    const env = { PATH: "/usr/bin:/bin", HOME: dir };
    try {
      const r = await wrap(["--as", "sh", "-c", "echo out; printf 'err\\0x' >&2; exit 3"], {
        cwd: dir,
        env,
      });
      assert.equal(r.code, 3);
      assert.equal(r.stdout, "out\n");
      assert.equal(r.stderr, "err\0x");

      const killed = await wrap(["--as", "sh", "-c", "kill -9 $$"], { cwd: dir, env });
      assert.equal(killed.code, 137);

      const data = randomBytes(300_000);
      const catOut = await wrap(["--as", "sha256sum"], { cwd: dir, env, stdin: data });
      const expected = Array.from(
        new Uint8Array(await crypto.subtle.digest("SHA-256", data)),
        (b) => b.toString(16).padStart(2, "0"),
      ).join("");
      assert.equal(catOut.stdout.split(" ")[0], expected);

      const missing = await wrap(["--as", "no-such-tool-termite"], { cwd: dir, env });
      assert.equal(missing.code, 127);
      assert.match(missing.stderr, /command not found/);

      const mk = await wrap(["--as", "sh", "-c", "mkdir -p a/b/c"], { cwd: dir, env });
      assert.equal(mk.code, 0);
      assert.ok((await Deno.stat(`${dir}/a/b/c`)).isDirectory);
      const rm = await wrap(["--as", "sh", "-c", "rm -rf a"], { cwd: dir, env });
      assert.equal(rm.code, 0);
      await assert.rejects(Deno.stat(`${dir}/a`), Deno.errors.NotFound);
      assert.ok(master.master.stats.jobsBuiltin >= 2, "mkdir -p and rm -rf ran in the master");
      assert.ok(master.master.stats.jobsLocal >= 3);
    } finally {
      await master.close();
      await Deno.remove(dir, { recursive: true });
      await Deno.remove(cache, { recursive: true });
    }
  });
}

Deno.test("master refuses a second master on the same socket and cleans a stale one", async () => {
  const dir = await tempTree();
  const cache = await Deno.makeTempDir({ prefix: "termite-mcache-" });
  const secret = await secretFromBytes(crypto.getRandomValues(new Uint8Array(32)));
  try {
    await staleSocket(`${dir}/.termite-socket`);
    const first = await startMaster({ root: dir, secret, cacheDir: cache, log: () => {} });
    try {
      assert.equal((await Deno.lstat(`${dir}/.termite-socket`)).mode! & 0o777, 0o700);
      await assert.rejects(
        startMaster({ root: dir, secret, cacheDir: cache, log: () => {} }),
        /another master is running/,
      );
    } finally {
      await first.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(cache, { recursive: true });
  }
});

/**
 * A listening socket that answers every request with "pwned" and exit 0, as an
 * attacker's would; `received()` is what requests reached it.
 */
async function fakeMaster(path: string, options: { asNobody?: boolean } = {}) {
  const py = `
import json, os, socket, struct, sys
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
os.chmod(sys.argv[1], 0o700)
s.listen(8)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.settimeout(5)
    data = b""
    try:
        while len(data) < 4 or len(data) < 4 + struct.unpack(">I", data[:4])[0]:
            chunk = c.recv(65536)
            if not chunk:
                break
            data += chunk
    except Exception:
        pass
    print("got", data[5:].decode(errors="replace"), flush=True)
    try:  # a client that refused us has closed: EPIPE, and on to the next
        for kind, body in ((0x4F, b"pwned\\n"), (0x58, json.dumps({"code": 0}).encode())):
            c.sendall(struct.pack(">IB", len(body) + 1, kind) + body)
    except OSError:
        pass
    c.close()
`;
  const nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"];
  // The system python: a user's own (pyenv under /root) is out of nobody's reach.
  const argv = [...(options.asNobody ? nobody : []), "/usr/bin/python3", "-c", py, path];
  const child = new Deno.Command(argv[0], {
    args: argv.slice(1),
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  while (!text.includes("ready\n")) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`fake master at ${path} did not start`);
    text += value;
  }
  const rest = (async () => {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return text;
      text += value;
    }
  })();
  return {
    /** Stops it; resolves with what requests reached it. */
    async stop(): Promise<string> {
      try {
        child.kill("SIGKILL");
      } catch (e) {
        // It may have ended on its own: what it printed still counts.
        if (!(e instanceof TypeError)) throw e;
      }
      await child.status;
      return (await rest).replace(/^ready\n/, "");
    },
  };
}

const SECRET_ENV = { PATH: "/usr/bin:/bin", TERMITE_TOKEN: "s3cret-token" };

/** Runs `gcc -c x.c` through the wrapper; the fake master must have received nothing. */
async function refused(
  cwd: string,
  env: Record<string, string>,
  master: { stop(): Promise<string> },
  kind: WrapperKind,
) {
  const r = await wrapWith(kind, ["--as", "gcc", "-c", "x.c"], {
    cwd,
    env: { ...SECRET_ENV, TERMITE_LOCAL_FALLBACK: "0", ...env },
  });
  const received = await master.stop();
  assert.equal(received, "", "the request reached the socket");
  assert.equal(r.stdout, "");
  assert.equal(r.code, 255, r.stderr);
  return r.stderr;
}

for (const kind of KINDS) {
  Deno.test(`wrapper (${kind}): a socket another user planted in a 1777 parent of the tree is refused; nothing is sent`, async () => {
    const wrap = wrapper(kind);
    const dir = await tempTree();
    try {
      const shared = `${dir}/shared`; // like /tmp
      await Deno.mkdir(`${shared}/tree`, { recursive: true });
      await Deno.chmod(shared, 0o1777);
      await Deno.chmod(`${shared}/tree`, 0o755);
      const planted = `${shared}/.termite-socket`;
      const attacker = await fakeMaster(planted, { asNobody: true });
      assert.equal((await Deno.lstat(planted)).uid, 65534);
      const stderr = await refused(`${shared}/tree`, {}, attacker, kind);
      assert.equal(
        stderr.split("\n")[0],
        `termite: refusing the master socket ${planted}: it belongs to uid 65534, not to you ` +
          `(uid 0) or root; anyone who could put it there would get this command and its environment ` +
          `(TERMITE_LOCAL_FALLBACK=0: not running it here)`,
      );
      // With the local fallback the command runs here, still sending nothing.
      const again = await fakeMaster(`${shared}/.termite-socket-2`, { asNobody: true });
      await Deno.rename(`${shared}/.termite-socket-2`, planted);
      const local = await wrap(["--as", "echo", "local"], {
        cwd: `${shared}/tree`,
        env: { ...SECRET_ENV, TERMITE_LOCAL_FALLBACK: "1" },
      });
      assert.equal(await again.stop(), "");
      assert.equal(local.code, 0);
      assert.equal(local.stdout, "local\n");
      assert.match(local.stderr, /refusing the master socket/);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}

for (const kind of KINDS) {
  Deno.test(`wrapper (${kind}): a socket owned by another user, or writable by others, in the tree's own 0755 directory is refused`, async () => {
    const dir = await tempTree();
    try {
      const socket = `${dir}/.termite-socket`;
      const theirs = await fakeMaster(socket);
      await Deno.chown(socket, 65534, 65534);
      assert.match(await refused(dir, {}, theirs, kind), /it belongs to uid 65534, not to you/);
      await Deno.remove(socket);
      const open = await fakeMaster(socket);
      await Deno.chmod(socket, 0o777);
      assert.match(
        await refused(dir, {}, open, kind),
        new RegExp(`socket ${socket}: it is writable by its group and others \\(mode 0777\\)`),
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}

for (const kind of KINDS) {
  Deno.test(`wrapper (${kind}): a .termite-socket that is a symlink (even to a good socket) is refused`, async () => {
    const dir = await tempTree();
    try {
      await Deno.mkdir(`${dir}/private`, { mode: 0o700 });
      const real = `${dir}/private/master.sock`;
      const behind = await fakeMaster(real);
      await Deno.mkdir(`${dir}/tree`);
      await Deno.chmod(`${dir}/tree`, 0o755);
      await Deno.symlink(real, `${dir}/tree/.termite-socket`);
      assert.match(
        await refused(`${dir}/tree`, {}, behind, kind),
        new RegExp(`refusing the master socket ${dir}/tree/.termite-socket: it is a symlink`),
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}

for (const kind of KINDS) {
  Deno.test(`wrapper (${kind}): TERMITE_SOCKET naming a socket in a 1777 directory (a /tmp) or a group-writable one is refused`, async () => {
    const dir = await tempTree();
    try {
      const tmp = `${dir}/tmp`;
      await Deno.mkdir(tmp);
      await Deno.chmod(tmp, 0o1777);
      const mine = await fakeMaster(`${tmp}/termite.sock`); // the caller's own, even
      assert.match(
        await refused(dir, { TERMITE_SOCKET: `${tmp}/termite.sock` }, mine, kind),
        new RegExp(`its directory ${tmp} is writable by its group and others \\(mode 01777\\)`),
      );
      const group = `${dir}/group`;
      await Deno.mkdir(group);
      await Deno.chmod(group, 0o775);
      const shared = await fakeMaster(`${group}/termite.sock`);
      // A relative TERMITE_SOCKET is taken from the working directory.
      assert.match(
        await refused(dir, { TERMITE_SOCKET: "group/termite.sock" }, shared, kind),
        new RegExp(`socket ${group}/termite.sock: its directory ${group} is writable by its group`),
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}

Deno.test("native client: a socket file that passes the checks but whose listener is another user is refused (SO_PEERCRED)", async () => {
  const dir = await tempTree();
  try {
    // As after a swap between the checks and the connect: the file is root's,
    // the process behind it nobody's.
    await Deno.mkdir(`${dir}/nobody`);
    await Deno.chown(`${dir}/nobody`, 65534, 65534);
    const theirs = await fakeMaster(`${dir}/nobody/sock`, { asNobody: true });
    await Deno.chown(`${dir}/nobody/sock`, 0, 0);
    await Deno.rename(`${dir}/nobody/sock`, `${dir}/.termite-socket`);
    const r = await wrapWith("native", ["--as", "gcc", "-c", "x.c"], {
      cwd: dir,
      env: { ...SECRET_ENV, TERMITE_LOCAL_FALLBACK: "1" },
    });
    // It connected (to ask who listens), then closed with nothing sent.
    assert.equal(await theirs.stop(), "got \n", "the request reached the socket");
    assert.equal(r.code, 255, r.stderr);
    assert.equal(r.stdout, "");
    assert.equal(
      r.stderr,
      `termite: refusing the master socket ${dir}/.termite-socket: the process listening on it ` +
        `is not yours (uid 0) or root's; anyone who could put it there would get this command ` +
        `and its environment\n`,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("master: in a tree others may write it says that wrappers will refuse its socket", async () => {
  const dir = await tempTree();
  const cache = await Deno.makeTempDir({ prefix: "termite-mcache-" });
  try {
    await Deno.chmod(dir, 0o1777);
    const logs: string[] = [];
    const master = await startMaster({
      root: dir,
      secret: await secretFromBytes(crypto.getRandomValues(new Uint8Array(32))),
      cacheDir: cache,
      log: (m) => logs.push(m),
    });
    await master.close();
    assert.deepEqual(logs, [
      `wrappers will refuse the socket ${dir}/.termite-socket: its directory ${dir} is ` +
      `writable by its group and others (mode 01777)`,
    ]);
  } finally {
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(cache, { recursive: true });
  }
});

Deno.test("WrapperFrameReader: frames larger than its first buffer, arriving in pieces, come whole and in order", async () => {
  const sizes = [10, WRAPPER_FRAME_BYTES_MAX - 1, 3, 40_000, 0, 600_000, 7];
  const frames = sizes.map((n, i) =>
    encodeWrapperFrame(FrameType.stdout, new Uint8Array(n).map((_, j) => (i * 31 + j) & 0xff))
  );
  const stream = new Uint8Array(frames.reduce((n, f) => n + f.length, 0));
  let at = 0;
  for (const f of frames) {
    stream.set(f, at);
    at += f.length;
  }
  // Reads of uneven sizes, as a socket gives them.
  let pos = 0;
  let turn = 0;
  const reader = new WrapperFrameReader({
    read(p: Uint8Array): Promise<number | null> {
      if (pos >= stream.length) return Promise.resolve(null);
      const n = Math.min(p.length, [1, 4093, 70_000, 5][turn++ % 4], stream.length - pos);
      p.set(stream.subarray(pos, pos + n));
      pos += n;
      return Promise.resolve(n);
    },
  });
  for (const [i, n] of sizes.entries()) {
    const frame = await reader.read();
    assert.ok(frame !== null);
    assert.equal(frame.type, FrameType.stdout);
    assert.equal(frame.payload.length, n);
    assert.deepEqual(frame.payload, frames[i].subarray(5));
  }
  assert.equal(await reader.read(), null);
});
