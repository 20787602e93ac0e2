/**
 * The native wrapper client (wrapper/native/termite_client.c) against the Deno
 * wrapper: the same request for the same command line and environment, the
 * same bytes and exit status through a real master, cancellation, the shell
 * builtins, and what it does with a master that breaks the protocol.
 */
import assert from "node:assert/strict";
import { startMaster } from "../master/mod.ts";
import { secretFromBytes } from "../rpc/mod.ts";
import { runShellBuiltin } from "../wrapper/client.ts";
import { buildClient } from "../wrapper/native/build.ts";
import {
  decodeJson,
  encodeWrapperFrame,
  FrameType,
  WRAPPER_FRAME_BYTES_MAX,
  WrapperFrameReader,
  writeAll,
} from "../wrapper/protocol.ts";

const DENO_WRAPPER = new URL("../bin/termite-wrap", import.meta.url).pathname;
let built: Promise<string> | undefined;
/** The native client, built on first use (within a test: no op outlives it). */
const native = () => built ??= buildClient();
const enc = new TextEncoder();
const dec = new TextDecoder();

type Kind = "deno" | "native";

async function tempTree(): Promise<string> {
  const dir = await Deno.realPath(await Deno.makeTempDir({ prefix: "termite-native-" }));
  await Deno.chmod(dir, 0o755);
  return dir;
}

/** Points `${dir}/links/${tool}` at the wrapper of `kind`; returns the link. */
async function link(dir: string, tool: string, kind: Kind): Promise<string> {
  await Deno.mkdir(`${dir}/links`, { recursive: true });
  const path = `${dir}/links/${tool}`;
  await Deno.remove(path).catch(() => {});
  await Deno.symlink(kind === "native" ? await native() : DENO_WRAPPER, path);
  return path;
}

type Bytes = string | Uint8Array;

/**
 * Runs `file` with exactly these argv and environment entries (any bytes, in
 * this order, repeats and all: execve through python's ctypes).
 */
async function execBytes(options: {
  file: string;
  argv: Bytes[];
  env: Bytes[];
  cwd: string;
  stdin?: Uint8Array;
}) {
  const hex = (b: Bytes) =>
    Array.from(typeof b === "string" ? enc.encode(b) : b, (x) => x.toString(16).padStart(2, "0"))
      .join("");
  const py = `
import ctypes, json, sys
spec = json.loads(sys.argv[1])
def arr(items):
    a = (ctypes.c_char_p * (len(items) + 1))()
    for i, h in enumerate(items):
        a[i] = bytes.fromhex(h)
    a[len(items)] = None
    return a
libc = ctypes.CDLL(None, use_errno=True)
libc.execve(spec["file"].encode(), arr(spec["argv"]), arr(spec["env"]))
sys.exit("execve failed: %d" % ctypes.get_errno())
`;
  const spec = { file: options.file, argv: options.argv.map(hex), env: options.env.map(hex) };
  const child = new Deno.Command("/usr/bin/python3", {
    args: ["-c", py, JSON.stringify(spec)],
    cwd: options.cwd,
    clearEnv: true,
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
  return { code: out.code, stdout: out.stdout, stderr: dec.decode(out.stderr) };
}

/**
 * A master of our own on `path`: records each request (and its stdin), then
 * answers with `reply(request)`'s raw bytes and closes.
 */
async function scriptedMaster(path: string, reply: (request: unknown) => Uint8Array[]) {
  const listener = Deno.listen({ transport: "unix", path });
  await Deno.chmod(path, 0o700);
  const requests: { request: unknown; stdin: Uint8Array }[] = [];
  const serving = (async () => {
    for await (const conn of listener) {
      try {
        const reader = new WrapperFrameReader(conn);
        const first = await reader.read();
        if (first === null) continue; // Connected, sent nothing.
        assert.ok(first.type === FrameType.request);
        const request = decodeJson<{ stdin: boolean }>(first.payload);
        const chunks: Uint8Array[] = [];
        while (request.stdin) {
          const frame = await reader.read();
          if (frame === null || frame.type !== FrameType.stdin) break;
          if (frame.payload.length === 0) break;
          chunks.push(frame.payload);
        }
        const stdin = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
        chunks.reduce((at, c) => (stdin.set(c, at), at + c.length), 0);
        requests.push({ request, stdin });
        try {
          for (const bytes of reply(request)) await writeAll(conn, bytes);
        } catch {
          // The client left first (it refused what it was sent).
        }
      } finally {
        conn.close();
      }
    }
  })();
  return {
    requests,
    async close() {
      listener.close();
      await serving.catch(() => {});
      await Deno.remove(path).catch(() => {});
    },
  };
}

const exitFrame = (exit: unknown) => encodeWrapperFrame(FrameType.exit, JSON.stringify(exit));

Deno.test("native client: the request (argv, cwd, env, PATH, stdin, shell) is the Deno wrapper's, for any bytes", async () => {
  const dir = await tempTree();
  const master = await scriptedMaster(`${dir}/.termite-socket`, () => [exitFrame({ code: 0 })]);
  try {
    await Deno.mkdir(`${dir}/sub`);
    await Deno.symlink(`${dir}/links`, `${dir}/links-again`);
    const path = `${dir}/links/:../links:${dir}/links-again:/nowhere::/usr/bin:/bin`;
    const cases: { tool: string; argv: Bytes[]; env: Bytes[]; stdin?: Uint8Array }[] = [
      {
        tool: "gcc",
        argv: ["-c", "x.c", new Uint8Array([0x61, 0xff, 0x62]), "é \u2028", ""],
        env: [`PATH=${path}`, "HOME=/root", "A=1", "A=2", "NOEQUALS", "=x=y", "E="],
      },
      {
        tool: "printf",
        // Invalid UTF-8 of every kind: a lone continuation, an overlong form,
        // a surrogate, a sequence cut short, a code point past U+10FFFF.
        argv: [
          new Uint8Array([0x80, 0xc0, 0xaf, 0xe0, 0x80, 0xaf, 0xed, 0xa0, 0x80]),
          new Uint8Array([0xf0, 0x9f, 0x98, 0x41, 0xf4, 0x90, 0x80, 0x80, 0xe2, 0x82]),
          'ctl\x01\x1f\x7f\t\n\r\b\f"\\/',
        ],
        env: [
          "PATH=/usr/bin:/bin",
          new Uint8Array([0x58, 0x3d, 0xff]), // X=\xff: Deno leaves it out
          new Uint8Array([0xfe, 0x3d, 0x31]),
          "CTL=\x01\x02\x1b[0m",
          "UNI=\u00e9\u{1f600}",
          "TERMITE_WRAP_LINK=/elsewhere/gcc", // never passed on to a job
        ],
        stdin: enc.encode("some input\n"),
      },
      {
        tool: "termite-sh",
        argv: ["-c", "cc -c a.c && echo $X", "name", "arg 1"],
        env: [`PATH=${dir}/links:/usr/bin:/bin`],
      },
      // A relative TERMITE_SOCKET, taken from the working directory.
      {
        tool: "cc",
        argv: ["-v"],
        env: ["PATH=/usr/bin:/bin", "TERMITE_SOCKET=../.termite-socket"],
      },
    ];
    for (const c of cases) {
      const seen: unknown[] = [];
      for (const kind of ["deno", "native"] as const) {
        const file = await link(dir, c.tool, kind);
        const r = await execBytes({
          file,
          argv: [c.tool, ...c.argv],
          env: c.env, // deno, for the Deno wrapper's shebang, is in /usr/bin
          cwd: `${dir}/sub`,
          stdin: c.stdin,
        });
        assert.equal(r.code, 0, `${kind} ${c.tool}: ${r.stderr}`);
        assert.equal(r.stderr, "");
        seen.push(master.requests.at(-1));
      }
      assert.deepEqual(seen[1], seen[0], `${c.tool}: native request differs`);
    }
    assert.equal(master.requests.length, cases.length * 2);
    const first = master.requests[0].request as { argv: string[]; env: Record<string, string> };
    assert.deepEqual(first.argv, ["gcc", "-c", "x.c", "a\ufffdb", "é \u2028", ""]);
    assert.equal(first.env.A, "2");
    assert.equal(first.env.PATH, "/nowhere:/usr/bin:/bin", "every spelling of the links' folder");
    assert.equal(dec.decode(master.requests[3].stdin), "some input\n");
  } finally {
    await master.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("native client: through a real master the same output bytes and exit status as the Deno wrapper", async () => {
  const dir = await tempTree();
  const cache = await Deno.makeTempDir({ prefix: "termite-mcache-" });
  await using master = await startMaster({
    root: dir,
    secret: await secretFromBytes(crypto.getRandomValues(new Uint8Array(32))),
    cacheDir: cache,
    log: () => {},
  });
  try {
    await Deno.writeTextFile(
      `${dir}/tiny.c`,
      'int f(int x) { int unused; return x * 2; }\n#warning "a warning"\n',
    );
    const env = [`PATH=${Deno.env.get("PATH")}`, `HOME=${dir}`];
    const commands: { tool: string; argv: Bytes[] }[] = [
      { tool: "gcc", argv: ["-Wall", "-c", "tiny.c", "-o", "tiny.o"] },
      { tool: "gcc", argv: ["-c", "missing.c"] },
      { tool: "termite-sh", argv: ["-c", "printf 'a\\0b'; printf 'err\\n' >&2; exit 7"] },
      { tool: "termite-sh", argv: ["-c", "kill -TERM $$"] },
      { tool: "printf", argv: ["%s|%s", new Uint8Array([0x61, 0xff]), "\u00e9"] },
      { tool: "no-such-tool-termite", argv: [] },
      { tool: "termite-sh", argv: ["-c", "echo hi"] },
      { tool: "termite-sh", argv: ["-c", "false"] },
      { tool: "termite-sh", argv: ["-c", "head -c 3000000 /dev/zero | tr '\\0' x"] },
    ];
    for (const c of commands) {
      const runs = [];
      const objects = [];
      for (const kind of ["deno", "native"] as const) {
        await Deno.remove(`${dir}/tiny.o`).catch(() => {});
        const file = await link(dir, c.tool, kind);
        runs.push(await execBytes({ file, argv: [c.tool, ...c.argv], env, cwd: dir }));
        objects.push(await Deno.readFile(`${dir}/tiny.o`).catch(() => null));
      }
      const [deno, native] = runs;
      const what = `${c.tool} ${c.argv.join(" ")}`;
      assert.equal(native.code, deno.code, what);
      assert.equal(native.stderr, deno.stderr, what);
      assert.deepEqual(native.stdout, deno.stdout, what);
      assert.deepEqual(objects[1], objects[0], `${what}: the object file`);
      if (c.argv.includes("tiny.o")) assert.ok(objects[1] !== null, "gcc wrote its object");
    }
    assert.ok(master.master.stats.jobsLocal >= commands.length, "the master ran the jobs");
  } finally {
    await master.close();
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(cache, { recursive: true });
  }
});

Deno.test("native client: ^C and SIGTERM cancel the job; the exit status is the Deno wrapper's", async () => {
  const dir = await tempTree();
  const cache = await Deno.makeTempDir({ prefix: "termite-mcache-" });
  await using master = await startMaster({
    root: dir,
    secret: await secretFromBytes(crypto.getRandomValues(new Uint8Array(32))),
    cacheDir: cache,
    log: () => {},
  });
  try {
    for (const signal of ["SIGINT", "SIGTERM"] as const) {
      const codes: number[] = [];
      for (const kind of ["deno", "native"] as const) {
        const file = await link(dir, "termite-sh", kind);
        const child = new Deno.Command(file, {
          args: ["-c", "echo started; exec sleep 60"],
          cwd: dir,
          stdin: "null",
          stdout: "piped",
          stderr: "piped",
        }).spawn();
        const reader = child.stdout.getReader();
        let text = "";
        while (!text.includes("started\n")) {
          const { value, done } = await reader.read();
          assert.ok(!done, "the job started");
          text += dec.decode(value);
        }
        child.kill(signal);
        while (!(await reader.read()).done);
        const status = await child.status;
        await child.stderr.cancel();
        codes.push(status.code);
        assert.equal(status.signal, null, `${kind}: it ended on the master's exit frame`);
      }
      assert.notEqual(codes[0], 0, "the sleep did not run to its end");
      assert.equal(codes[1], codes[0], `${signal}: native exit status`);
    }
  } finally {
    await master.close();
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(cache, { recursive: true });
  }
});

Deno.test("native client: a master breaking the protocol ends it with 255 and a message; a frame at the limit is fine", async () => {
  const dir = await tempTree();
  const header = (length: number, type: number) => {
    const h = new Uint8Array(5);
    new DataView(h.buffer).setUint32(0, length);
    h[4] = type;
    return h;
  };
  const big = new Uint8Array(WRAPPER_FRAME_BYTES_MAX - 1).fill(0x41);
  const cases: { reply: Uint8Array[]; code: number; stderr: string | RegExp; stdout?: number }[] = [
    {
      // Over the limit: refused before reading it.
      reply: [header(WRAPPER_FRAME_BYTES_MAX + 1, FrameType.stdout), big],
      code: 255,
      stderr: `termite: lost the master: Bad frame length: ${WRAPPER_FRAME_BYTES_MAX + 1}\n`,
    },
    {
      reply: [header(0, FrameType.stdout)],
      code: 255,
      stderr: "termite: lost the master: Bad frame length: 0\n",
    },
    {
      reply: [header(0xffffffff, FrameType.stdout)],
      code: 255,
      stderr: "termite: lost the master: Bad frame length: 4294967295\n",
    },
    {
      reply: [encodeWrapperFrame(FrameType.stdout, big), exitFrame({ code: 3 })],
      code: 3,
      stderr: "",
      stdout: big.length,
    },
    {
      reply: [header(100, FrameType.stdout), enc.encode("short")],
      code: 255,
      stderr: "termite: lost the master: Truncated frame\n",
    },
    {
      reply: [enc.encode("\0\0")],
      code: 255,
      stderr: "termite: lost the master: Truncated frame header\n",
    },
    { reply: [], code: 255, stderr: /closed the connection before the job ended/ },
    {
      reply: [encodeWrapperFrame(0x5a, "?")],
      code: 255,
      stderr: "termite: unexpected frame type 90 from the master\n",
    },
    {
      reply: [encodeWrapperFrame(FrameType.exit, "{not json")],
      code: 255,
      stderr: /^termite: lost the master: .*exit frame/,
    },
    {
      reply: [encodeWrapperFrame(FrameType.exit, '{"code": "0"}')],
      code: 255,
      stderr: /^termite: lost the master: .*exit frame/,
    },
    {
      reply: [encodeWrapperFrame(FrameType.exit, '{"code": 0} trailing')],
      code: 255,
      stderr: /^termite: lost the master: .*exit frame/,
    },
    {
      reply: [encodeWrapperFrame(FrameType.exit, '{"code": 0, "x": ' + "[".repeat(100_000))],
      code: 255,
      stderr: /^termite: lost the master: .*exit frame/,
    },
    {
      reply: [
        exitFrame({
          code: 42,
          extra: { nested: [1, 2.5e3, null, true, "\u0000"] },
          error: 'boom \u00e9\u{1f600}\ud800 "q"',
        }),
      ],
      code: 42,
      stderr: 'termite: boom \u00e9\u{1f600}\ufffd "q"\n',
    },
    { reply: [exitFrame({ code: 300 })], code: 300 & 0xff, stderr: "" },
  ];
  const replies = cases.map((c) => c.reply);
  let turn = 0;
  const master = await scriptedMaster(`${dir}/.termite-socket`, () => replies[turn]);
  try {
    for (const kind of ["native", "deno"] as const) {
      const file = await link(dir, "cc", kind);
      for (const [i, c] of cases.entries()) {
        turn = i;
        // The Deno wrapper's messages for JSON it cannot parse are the JSON parser's.
        if (kind === "deno" && c.stderr instanceof RegExp && /exit frame/.test(c.stderr.source)) {
          continue;
        }
        const out = await new Deno.Command(file, {
          args: ["-c", "x.c"],
          cwd: dir,
          stdin: "null",
          stdout: "piped",
          stderr: "piped",
        }).output();
        const stderr = dec.decode(out.stderr);
        const what = `${kind} case ${i}`;
        assert.equal(out.code, c.code, `${what}: ${stderr}`);
        if (typeof c.stderr === "string") assert.equal(stderr, c.stderr, what);
        else assert.match(stderr, c.stderr, what);
        assert.equal(out.stdout.length, c.stdout ?? 0, what);
      }
    }
  } finally {
    await master.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("native client: 200 random replies from a hostile master never crash it or hang it", async () => {
  const dir = await tempTree();
  // A small deterministic generator (xorshift32): a failure names its seed.
  let state = 0x2545f491;
  const next = () => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) / 2 ** 32;
  };
  const int = (n: number) => Math.floor(next() * n);
  const bytes = (n: number) => Uint8Array.from({ length: n }, () => int(256));
  const exitBodies = [
    '{"code":0}',
    '{"code":-1,"error":"x"}',
    '{"code":1e3}',
    '{"error":"no code"}',
    '{"code":7,"error":"\\ud800\\udc00\\u0000"}',
    '{"code":7,"error":"\\u12',
    "null",
    '{"code":9,"x":[[[[{"y":[1,{"z":"w"}]}]]]]}',
    '{"code":2147483646}', // 254 (2147483647 would be a silent 255)
    '{"code":2147483648}',
  ];
  const frame = (): Uint8Array => {
    switch (int(6)) {
      case 0:
        return encodeWrapperFrame(
          FrameType.stdout,
          bytes(int(3000)),
        );
      case 1:
        return encodeWrapperFrame(FrameType.stderr, enc.encode("e".repeat(int(100))));
      case 2:
        return encodeWrapperFrame(FrameType.exit, exitBodies[int(exitBodies.length)]);
      case 3:
        return encodeWrapperFrame(int(256), bytes(int(50)));
      case 4: {
        // A header whose length is anything at all, then a little of it.
        return bytes(5 + int(40));
      }
      default:
        return bytes(int(9));
    }
  };
  let reply: Uint8Array[] = [];
  const master = await scriptedMaster(`${dir}/.termite-socket`, () => reply);
  try {
    const file = await link(dir, "cc", "native");
    for (let i = 0; i < 200; i++) {
      const seed = state;
      reply = Array.from({ length: 1 + int(4) }, frame);
      const out = await new Deno.Command(file, {
        args: ["-c", "x.c"],
        cwd: dir,
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
        signal: AbortSignal.timeout(30_000), // a client stuck on a reply would never end
      }).output();
      const stderr = dec.decode(out.stderr);
      const what = `case ${i} (seed ${seed}): ${stderr}`;
      assert.equal(out.signal, null, what);
      // Ended by what it was sent: its last words say why.
      if (out.code === 255) assert.match(stderr, /termite: [^\n]+\n$/, what);
    }
  } finally {
    await master.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("native client: a request over the frame limit is not sent; the message is the Deno wrapper's", async () => {
  const dir = await tempTree();
  const master = await scriptedMaster(`${dir}/.termite-socket`, () => [exitFrame({ code: 0 })]);
  try {
    // 10 arguments of 110,000 bytes: over 1 MiB of JSON, under the kernel's limits.
    const args = Array.from({ length: 10 }, (_, i) => String(i).repeat(110_000));
    const results = [];
    for (const kind of ["deno", "native"] as const) {
      const out = await new Deno.Command(await link(dir, "cc", kind), {
        args,
        cwd: dir,
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).output();
      results.push({ code: out.code, stdout: out.stdout.length, stderr: dec.decode(out.stderr) });
    }
    assert.deepEqual(results[1], results[0]);
    assert.equal(results[1].code, 255);
    assert.match(results[1].stderr, /^termite: lost the master: Frame too large: \d+ bytes\n$/);
    assert.equal(master.requests.length, 0, "nothing reached the master");
  } finally {
    await master.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("native client: its shell builtins are runShellBuiltin()'s", async () => {
  const dir = await tempTree();
  try {
    const file = await link(dir, "termite-sh", "native");
    const scripts = [
      "true",
      ":",
      "false",
      "  true  ",
      "\t\ntrue\r\n",
      "\u00a0true\u2028",
      "\ufefffalse\u3000",
      "\u2003echo a\u205f",
      "true x y",
      "false --x",
      "echo",
      "echo a  b   c",
      "echo -n a b",
      "echo -n",
      "echo -e a",
      "echo --",
      "echo a-b c=d e@f 50% x+y ./p/q, r:s",
      "echo $HOME",
      "echo a > f",
      "echo 'q'",
      "echo a\tb",
      "echo a\u00a0b",
      "true; false",
      "true && false",
      "",
      "   ",
      "gcc -c a.c",
      "TRUE",
      "echo é",
      ["echo", ...Array.from({ length: 80 }, (_, i) => `w${i}`)].join(" "),
    ];
    for (const script of scripts) {
      const expected = runShellBuiltin(script);
      const out = await new Deno.Command(file, {
        args: ["-c", script],
        cwd: dir,
        env: { PATH: Deno.env.get("PATH")!, TERMITE_LOCAL_FALLBACK: "0" },
        clearEnv: true,
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).output();
      const stderr = dec.decode(out.stderr);
      const what = JSON.stringify(script);
      if (expected === null) {
        // Sent on to the master (here there is none: the Deno wrapper says so).
        assert.equal(out.code, 255, `${what}: ${stderr}`);
        assert.match(stderr, /^termite: no master for .*TERMITE_LOCAL_FALLBACK=0/, what);
      } else {
        assert.equal(out.code, expected.code, `${what}: ${stderr}`);
        assert.equal(dec.decode(out.stdout), expected.stdout, what);
        assert.equal(stderr, "", what);
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("native client: termite-make, the launcher names and a bad shell line go to the Deno wrapper", async () => {
  const dir = await tempTree();
  try {
    for (
      const [tool, args, code, stderr] of [
        ["termite", [], 2, /usage: termite COMMAND/],
        ["termite-wrap", [], 2, /usage: termite COMMAND/],
        ["termite-sh", ["-x"], 2, /usage: termite-sh -c SCRIPT/],
        ["termite-sh", [], 2, /usage: termite-sh -c SCRIPT/],
        ["termite-make", ["--version"], 0, /.*/],
      ] as const
    ) {
      const results = [];
      for (const kind of ["deno", "native"] as const) {
        const file = await link(dir, tool, kind);
        const out = await new Deno.Command(file, {
          args: [...args],
          cwd: dir,
          stdin: "null",
          stdout: "piped",
          stderr: "piped",
        }).output();
        results.push({
          code: out.code,
          stdout: dec.decode(out.stdout),
          err: dec.decode(out.stderr),
        });
      }
      assert.deepEqual(results[1], results[0], tool);
      assert.equal(results[1].code, code, `${tool}: ${results[1].err}`);
      assert.match(results[1].err, stderr, tool);
    }
    // Run by its own name it is bin/termite-wrap run by its own: a launcher.
    const own = await new Deno.Command(await native(), { cwd: dir, stderr: "piped" }).output();
    assert.equal(own.code, 2);
    assert.match(dec.decode(own.stderr), /usage: termite COMMAND/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
