/**
 * Hostile input: bad secret files and wrong secrets at each role's entry
 * point; fuzzed frames, handshakes and HTTP against every listening port of a
 * real farm; jobs trying to escape their sandbox or exhaust the worker.
 * Nothing crashes, bad peers are dropped, good ones are served afterwards.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { MasterMethods, WorkerMethods } from "../common/protocol.ts";
import { RESULT_ENTRIES_MAX } from "../common/types.ts";
import {
  type CallContext,
  clientHandshake,
  connect,
  loadSecret,
  type Role,
  type RpcError,
  type RpcPeer,
} from "../rpc/mod.ts";
import { concat, Fuzz, FUZZ_SEED, sendAndDrain } from "./_fuzz.ts";
import {
  mounts,
  ROOT,
  runIn,
  sampleFarm,
  scratchDir,
  sleep,
  waitUntil,
  withFarm,
} from "./_reliability.ts";
import { runScript, withWorkerDouble } from "./_worker_double.ts";

const decoder = new TextDecoder();

/** Runs a role's entry point; resolves with its exit code and stderr. */
async function runRole(
  role: "coordinator" | "worker" | "master",
  args: string[],
  options: { cwd?: string; timeoutMs?: number } = {},
): Promise<{ code: number; stderr: string }> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${ROOT}/${role}.ts`, ...args],
    cwd: options.cwd,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const timer = setTimeout(() => {
    try {
      child.kill("SIGKILL");
    } catch {
      // Exited.
    }
  }, options.timeoutMs ?? 20_000);
  try {
    const out = await child.output();
    return { code: out.code, stderr: decoder.decode(out.stderr) };
  } finally {
    clearTimeout(timer);
  }
}

/** Role arguments that would work but for the secret. */
function roleArgs(role: string, dir: string, secret: string, coordinatorPort = 1): string[] {
  const common = ["--secret", secret];
  if (role === "coordinator") return [...common, "--port", "0", "--http-port", "none"];
  const coordinator = ["--coordinator", `127.0.0.1:${coordinatorPort}`];
  if (role === "worker") {
    return [
      ...common,
      ...coordinator,
      "--host",
      "127.0.0.1",
      "--port",
      "0",
      "--metrics-port",
      "none",
      "--cache-dir",
      `${dir}/w`,
    ];
  }
  return [
    ...common,
    ...coordinator,
    "--cache-dir",
    `${dir}/m`,
    "--socket",
    `${dir}/tree/.termite-socket`,
  ];
}

Deno.test("hostile: bad secret files are refused by every role with one clear line", async () => {
  const dir = await scratchDir("secrets-");
  try {
    await Deno.mkdir(`${dir}/tree`);
    const cases: { name: string; make: (path: string) => Promise<void>; message: RegExp }[] = [
      { name: "missing", make: async () => {}, message: /no such file/ },
      {
        name: "readable by others",
        make: (p) => Deno.writeFile(p, crypto.getRandomValues(new Uint8Array(32)), { mode: 0o644 }),
        message: /mode 0644.*chmod 600/,
      },
      {
        name: "empty",
        make: (p) => Deno.writeFile(p, new Uint8Array(), { mode: 0o600 }),
        message: /empty/,
      },
      {
        name: "only whitespace",
        make: (p) => Deno.writeTextFile(p, " \n\t\n", { mode: 0o600 }),
        message: /empty/,
      },
      {
        name: "a directory",
        make: (p) => Deno.mkdir(p, { mode: 0o700 }),
        message: /not a regular file/,
      },
      {
        name: "too large",
        make: (p) => Deno.writeFile(p, new Uint8Array(65 * 1024).fill(65), { mode: 0o600 }),
        message: /too large/,
      },
    ];
    for (const [i, c] of cases.entries()) {
      const path = `${dir}/secret-${i}`;
      await c.make(path);
      await Deno.chmod(path, c.name === "readable by others" ? 0o644 : 0o600).catch(() => {});
      const results = await Promise.all(
        (["coordinator", "worker", "master"] as const).map(async (role) => ({
          role,
          ...(await runRole(role, roleArgs(role, dir, path), { cwd: `${dir}/tree` })),
        })),
      );
      for (const r of results) {
        const lines = r.stderr.split("\n").filter((l) => l !== "");
        assert.equal(r.code, 1, `${r.role}, ${c.name}: exit ${r.code}\n${r.stderr}`);
        assert.equal(lines.length, 1, `${r.role}, ${c.name}: one line\n${r.stderr}`);
        assert.match(lines[0], new RegExp(`^termite ${r.role}: .*[Ss]ecret`), r.stderr);
        assert.ok(lines[0].includes(path), `${r.role}, ${c.name}: names the file: ${lines[0]}`);
        assert.match(lines[0], c.message, `${r.role}, ${c.name}: ${lines[0]}`);
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("hostile: a worker or master with another secret than the coordinator's exits with one clear line", async () => {
  const dir = await scratchDir("wrong-secret-");
  await Deno.mkdir(`${dir}/tree`);
  const good = `${dir}/good`, wrong = `${dir}/wrong`;
  await Deno.writeFile(good, crypto.getRandomValues(new Uint8Array(32)), { mode: 0o600 });
  await Deno.writeFile(wrong, crypto.getRandomValues(new Uint8Array(32)), { mode: 0o600 });
  const coordinator = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${ROOT}/coordinator.ts`, ...roleArgs("coordinator", dir, good)],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const lines: string[] = [];
  const reading = (async () => {
    let buffered = "";
    for await (const chunk of coordinator.stderr.pipeThrough(new TextDecoderStream())) {
      buffered += chunk;
      const parts = buffered.split("\n");
      buffered = parts.pop()!;
      lines.push(...parts);
    }
  })();
  try {
    let port = 0;
    for (let i = 0; i < 200 && port === 0; i++) {
      port = Number(lines.join("\n").match(/listening on port (\d+)/)?.[1] ?? 0);
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.ok(port > 0, lines.join("\n"));
    for (const role of ["worker", "master"] as const) {
      const r = await runRole(role, roleArgs(role, dir, wrong, port), { cwd: `${dir}/tree` });
      const out = r.stderr.split("\n").filter((l) => l !== "");
      assert.equal(r.code, 1, `${role}: ${r.stderr}`);
      assert.match(
        out.at(-1)!,
        new RegExp(
          `^termite ${role}: the coordinator at 127\\.0\\.0\\.1:${port} holds another secret than ${wrong}`,
        ),
      );
    }
    assert.ok(lines.some((l) => /Rejected peer/.test(l)), lines.join("\n"));
  } finally {
    coordinator.kill("SIGTERM");
    await coordinator.status;
    await reading;
    await Deno.remove(dir, { recursive: true });
  }
});

// ---- A hostile worker (test double) against the real master ----

const enc = new TextEncoder();

interface DoubleBehaviour {
  /** The job reply (a result set writing `payload` to `root/out.o`, by default). */
  reply?: (root: string, hash: string, size: number) => unknown;
  /** Serves blob.get. */
  blob?: (ctx: CallContext) => Promise<unknown>;
  /** Chunks sent ahead of the job's reply (result set parts). */
  parts?: (root: string, ctx: CallContext) => Promise<void>;
}

const PAYLOAD = enc.encode("hostile bytes\n");
const PAYLOAD_HASH = createHash("sha256").update(PAYLOAD).digest("hex");

/**
 * Runs one command through a master whose only worker is a double behaving as
 * told; returns the outcome, the master's log, what the double's calls into
 * the master got, and whether the tree changed.
 */
async function throughDouble(behaviour: DoubleBehaviour, jobSilenceMs = 1_000): Promise<{
  code: number;
  out: string;
  logs: string[];
  treeAfter: string[];
  treeBefore: string[];
  probes: string[];
}> {
  const root = await Deno.realPath(await scratchDir("double-"));
  await Deno.writeTextFile(`${root}/keep.c`, "int keep;\n");
  const probes: string[] = [];
  const list = async (): Promise<string[]> =>
    (await Array.fromAsync(Deno.readDir(root))).map((e) => e.name).sort();
  try {
    return await withWorkerDouble({
      root,
      master: { jobSilenceMs },
      handlers: (peer: RpcPeer) => ({
        [WorkerMethods.mirrorOpen]: async () => {
          // A hostile worker also calls into the master with garbage.
          const garbage: [string, unknown][] = [
            [MasterMethods.fsAttr, { path: "../../etc/passwd" }],
            [MasterMethods.fsAttr, { path: 42 }],
            [MasterMethods.fsAttr, null],
            [MasterMethods.fsDir, { path: { toString: "x" } }],
            [MasterMethods.blobGet, { hash: "../../etc/shadow" }],
            [MasterMethods.blobGet, { hash: "0".repeat(64) }],
            ["no.such.method", [1, 2, 3]],
          ];
          for (const [method, params] of garbage) {
            await peer.call(method, params, { timeoutMs: 5_000 }).then(
              (v) => probes.push(`${method}: ok ${JSON.stringify(v).slice(0, 80)}`),
              (e) => probes.push(`${method}: ${(e as RpcError).code}`),
            );
          }
          // A path the master must not serve: a file only its owner may read.
          const shadow = await peer.call<{ kind: unknown }>(MasterMethods.fsAttr, {
            path: "/etc/shadow",
            withHash: true,
          });
          probes.push(`/etc/shadow: ${shadow.kind}`);
          return { slots: 4, workerId: "double" };
        },
        [WorkerMethods.jobRun]: async (_p: unknown, ctx: CallContext) => {
          await behaviour.parts?.(root, ctx);
          return (behaviour.reply ?? ((r: string, h: string, s: number) => ({
            exitCode: 0,
            resultSet: {
              deletions: [`${r}/keep.c`],
              dirs: [],
              files: [{ path: `${r}/out.o`, hash: h, size: s, mode: 0o644, mtimeMs: 0 }],
              symlinks: [],
            },
          })))(root, PAYLOAD_HASH, PAYLOAD.length);
        },
        [WorkerMethods.blobGet]: (_p: unknown, ctx: CallContext) =>
          behaviour.blob ? behaviour.blob(ctx) : ctx.sendBytes(PAYLOAD).then(() => ({ size: 14 })),
      }),
    }, async (master, logs) => {
      const treeBefore = await list();
      const { code, out } = await runScript(master, "echo local", root);
      return { code, out, logs, treeBefore, treeAfter: await list(), probes };
    });
  } finally {
    await Deno.remove(root, { recursive: true });
  }
}

const hostileWorkers: [string, DoubleBehaviour, RegExp][] = [
  [
    "a giant size",
    {
      reply: (r, h) => ({
        exitCode: 0,
        resultSet: {
          deletions: [],
          dirs: [],
          symlinks: [],
          files: [{ path: `${r}/out.o`, hash: h, size: 2 ** 50, mode: 0o644 }],
        },
      }),
    },
    /more than \d+ bytes/,
  ],
  [
    "a wrong hash (other bytes)",
    { blob: (ctx) => ctx.sendBytes(enc.encode("other bytes!!\n")) },
    /verification failed/,
  ],
  [
    "a stream longer than its size",
    {
      blob: async (ctx) => {
        for (let i = 0; i < 1024; i++) await ctx.sendBytes(new Uint8Array(64 * 1024));
      },
    },
    /longer than 14 bytes/,
  ],
  ["chunks that are not bytes", { blob: (ctx) => ctx.sendChunk({ evil: true }) }, /not bytes/],
  [
    "a blob that never comes",
    {
      blob: (ctx) =>
        new Promise((resolve) => {
          const timer = setTimeout(resolve, 3_000);
          ctx.signal.addEventListener("abort", () => {
            clearTimeout(timer);
            resolve(undefined);
          });
        }),
    },
    /stalled for 1000 ms/,
  ],
  [
    "too many entries",
    {
      reply: (r) => ({
        exitCode: 0,
        resultSet: {
          deletions: Array.from({ length: RESULT_ENTRIES_MAX + 1 }, (_, i) => `${r}/d${i}`),
          dirs: [],
          files: [],
          symlinks: [],
        },
      }),
    },
    // Capped by the frame size first (1 MiB), else by the entry count.
    /Frame too large|entries, more than RESULT_ENTRIES_MAX/,
  ],
  [
    "too many entries in parts",
    {
      parts: async (r, ctx) => {
        for (let part = 0; part <= RESULT_ENTRIES_MAX / 10_000; part++) {
          const deletions = Array.from({ length: 10_000 }, (_, i) => `${r}/p${part}-${i}`);
          await ctx.sendChunk({ rs: { deletions } });
        }
      },
    },
    /more than \d+ result entries \(RESULT_ENTRIES_MAX\)/,
  ],
  [
    "result parts that are not lists",
    {
      parts: async (_r, ctx) => {
        await ctx.sendChunk({ rs: { files: "all of them" } });
      },
    },
    /not a list/,
  ],
  [
    "inline contents that are not bytes",
    { parts: (_r, ctx) => ctx.sendChunk({ blobs: { [PAYLOAD_HASH]: "hostile bytes\n" } }) },
    /not bytes/,
  ],
  [
    "inline contents with other bytes",
    {
      parts: (_r, ctx) =>
        ctx.sendChunk({ blobs: { [PAYLOAD_HASH]: enc.encode("other bytes!!\n") } }),
    },
    /verification failed/,
  ],
  ["a reply that is not an object", { reply: () => null }, /./],
  [
    "an exit code that is not one",
    {
      reply: () => ({
        exitCode: "rm -rf /",
        resultSet: { deletions: [], dirs: [], files: [], symlinks: [] },
      }),
    },
    /exit code/,
  ],
  [
    "an exit code out of range",
    {
      reply: () => ({
        exitCode: 70000,
        resultSet: { deletions: [], dirs: [], files: [], symlinks: [] },
      }),
    },
    /exit code/,
  ],
];

Deno.test("a worker that keeps sending heartbeats past the silence limit is waited for; its result is taken", async () => {
  // 2.5 s of heartbeats every 100 ms against a limit of 1 s: each pushes the
  // deadline back (the master's one timer moves on when it fires).
  const r = await throughDouble({
    parts: async (_r, ctx) => {
      for (let i = 0; i < 25; i++) {
        await ctx.sendChunk({ heartbeat: i });
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    },
  }, 1_000);
  assert.equal(r.code, 0, r.logs.join("\n"));
  assert.equal(r.out, "", "not run locally");
  assert.ok(!r.logs.some((l) => /silent|failed on/.test(l)), r.logs.join("\n"));
  assert.deepEqual(
    r.treeAfter.filter((n) => !n.startsWith(".termite-staging")),
    ["out.o"],
    "the worker's result is in",
  );
});

for (const [name, behaviour, why] of hostileWorkers) {
  Deno.test(`hostile: the master refuses a worker sending ${name}, tree untouched, job run locally`, async () => {
    // Making 200,000 entries takes the double a while on a loaded machine: it
    // must not be taken for silence.
    const r = await throughDouble(behaviour, /too many/.test(name) ? 20_000 : 1_000);
    assert.equal(r.code, 0, r.logs.join("\n"));
    assert.equal(r.out, "local\n", "the job ran locally, printed once");
    assert.deepEqual(r.treeAfter, r.treeBefore, "the tree is untouched");
    const failure = r.logs.find((l) => /failed on 127\.0\.0\.1/.test(l)) ?? "";
    assert.match(failure, why, r.logs.join("\n"));
    if (!/too many/.test(name)) {
      assert.ok(r.logs.some((l) => /setting worker \S+ aside/.test(l)), r.logs.join("\n"));
    }
    // Its calls into the master got errors or nothing private.
    assert.deepEqual(r.probes, [
      "fs.attr: BAD_REQUEST",
      "fs.attr: BAD_REQUEST",
      "fs.attr: BAD_REQUEST",
      "fs.dir: BAD_REQUEST",
      "blob.get: BAD_REQUEST",
      "blob.get: ENOENT",
      "no.such.method: NO_METHOD",
      "/etc/shadow: null",
    ]);
  });
}

// ---- Fuzzing every listening port of a real farm ----

/** Runs `count` tasks, `width` at a time. */
async function inParallel(count: number, width: number, task: (i: number) => Promise<void>) {
  let next = 0;
  await Promise.all(Array.from({ length: width }, async () => {
    while (next < count) await task(next++);
  }));
}

function wrapperFrame(type: number, payload: Uint8Array): Uint8Array {
  const frame = new Uint8Array(5 + payload.length);
  new DataView(frame.buffer).setUint32(0, payload.length + 1);
  frame[4] = type;
  frame.set(payload, 5);
  return frame;
}

/** Bytes a broken or hostile wrapper sends to the master's socket. */
function wrapperFuzz(fuzz: Fuzz, base: Record<string, unknown>): Uint8Array {
  const json = (v: unknown) => enc.encode(JSON.stringify(v));
  const request = () => {
    const field = fuzz.pick(["version", "argv", "cwd", "env", "stdin", "shell", "extra"]);
    let value = fuzz.value();
    // Never a runnable argv: commands stay `true`.
    if (field === "argv" && Array.isArray(value) && value.every((v) => typeof v === "string")) {
      value = [1, 2];
    }
    return wrapperFrame(0x52, json({ ...base, [field]: value }));
  };
  const anyFrame = () =>
    wrapperFrame(
      fuzz.pick([0x52, 0x49, 0x43, 0x4f, 0x45, 0x58, fuzz.int(256)]),
      fuzz.bytes(fuzz.int(64)),
    );
  switch (fuzz.int(8)) {
    case 0:
      return fuzz.bytes(fuzz.int(400));
    case 1:
      return concat(Array.from({ length: 1 + fuzz.int(5) }, anyFrame));
    case 2:
      return fuzz.mutate(wrapperFrame(0x52, json(base)));
    case 3:
      return request();
    case 4: {
      const header = new Uint8Array(5);
      new DataView(header.buffer).setUint32(0, fuzz.pick([0, 2 ** 31, 2 ** 20 + 2, 2 ** 32 - 1]));
      return header;
    }
    case 5:
      return concat([
        anyFrame(),
        wrapperFrame(0x43, new Uint8Array()),
        wrapperFrame(0x52, json(base)),
      ]);
    case 6:
      return concat([wrapperFrame(0x52, json(base)), ...Array.from({ length: 3 }, anyFrame)]);
    default:
      return concat([
        wrapperFrame(0x52, json({ ...base, stdin: true })),
        ...Array.from({ length: fuzz.int(6) }, () => wrapperFrame(0x49, fuzz.bytes(fuzz.int(100)))),
        fuzz.chance(0.5) ? wrapperFrame(0x49, new Uint8Array()) : anyFrame(),
      ]);
  }
}

/** Bytes a broken or hostile HTTP client sends. */
function httpFuzz(fuzz: Fuzz): Uint8Array {
  const good = "GET /status.json HTTP/1.1\r\nHost: x\r\n\r\n";
  switch (fuzz.int(9)) {
    case 0:
      return fuzz.bytes(fuzz.int(500));
    case 1:
      return fuzz.mutate(enc.encode(good));
    case 2:
      return enc.encode(`GET / HTTP/1.1\r\nHost: x\r\nX-Big: ${"a".repeat(200_000)}\r\n\r\n`);
    case 3:
      return enc.encode(fuzz.pick([
        "GET /../../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /\0\0\0 HTTP/1.1\r\nHost: x\r\n\r\n",
        "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        "GET / HTTP/9.9\r\n\r\n",
      ]));
    case 4:
      return enc.encode(
        `POST /workers/${encodeURIComponent(fuzz.string())}/${fuzz.pick(["drain", "stop", "x"])} ` +
          `HTTP/1.1\r\nHost: x\r\nAuthorization: ${
            fuzz.pick(["", "Bearer x", "Termite 1.2.3"])
          }\r\n` +
          `Content-Length: 0\r\n\r\n`,
      );
    case 5:
      return enc.encode(good.repeat(50));
    case 6:
      return enc.encode(
        `POST /status.json HTTP/1.1\r\nHost: x\r\nContent-Length: ${
          fuzz.pick(["-1", "99999999999", "x", "10"])
        }\r\n\r\nabc`,
      );
    case 7:
      return enc.encode(
        "GET /status.json HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
      );
    default:
      return enc.encode(good.slice(0, fuzz.int(good.length)));
  }
}

Deno.test("hostile: fuzzed handshakes, frames and HTTP at every port of a farm; it keeps serving", async () => {
  await withFarm(
    "fuzz",
    {
      workers: 1,
      coordinatorArgs: ["--http-port", "0"],
      // The worker's metrics on its host's address, to be reached from here.
      workerArgs: ["--metrics-host", "0.0.0.0"],
    },
    async (farm, tree) => {
      const fuzz = new Fuzz(FUZZ_SEED);
      const seedNote = `FUZZ_SEED=${FUZZ_SEED}`;
      const secret = await loadSecret(farm.secretPath);
      const coordinatorLog = await Deno.readTextFile(farm.coordinator.log);
      const coordinatorHttp = Number(
        coordinatorLog.match(/status page on http:\/\/[^:]+:(\d+)\//)?.[1],
      );
      assert.ok(coordinatorHttp > 0, coordinatorLog);
      const [workerHost, workerPort] = farm.workers[0].address.split(":");
      const counts: Record<string, number> = {};
      const rpcTargets = [
        {
          name: "coordinator",
          hostname: "127.0.0.1",
          port: farm.coordinatorPort,
          roles: ["worker", "master"] as Role[],
          methods: ["register", "subscribe", "workers", "nope"],
        },
        {
          name: "worker",
          hostname: workerHost,
          port: Number(workerPort),
          roles: ["master"] as Role[],
          methods: ["mirror.open", "job.run", "job.stdin", "blob.get", "attrs.push", "nope"],
        },
      ];
      for (const t of rpcTargets) {
        await inParallel(200, 16, async () => {
          const conn = await Deno.connect({ hostname: t.hostname, port: t.port });
          await sendAndDrain(conn, fuzz.handshake(), 5_000);
          counts[`${t.name} handshakes`] = (counts[`${t.name} handshakes`] ?? 0) + 1;
        });
        await inParallel(40, 8, async () => {
          const conn = await Deno.connect({ hostname: t.hostname, port: t.port });
          try {
            await clientHandshake(conn, { secret, role: fuzz.pick(t.roles) });
          } catch (err) {
            conn.close();
            throw err;
          }
          await sendAndDrain(conn, fuzz.session(t.methods), 3_000);
          counts[`${t.name} sessions`] = (counts[`${t.name} sessions`] ?? 0) + 1;
        });
      }
      const base = {
        version: 1,
        argv: ["true"],
        cwd: tree,
        env: { PATH: "/usr/bin:/bin" },
        stdin: false,
      };
      await inParallel(200, 16, async () => {
        const conn = await Deno.connect({ transport: "unix", path: `${tree}/.termite-socket` });
        await sendAndDrain(conn, wrapperFuzz(fuzz, base), 15_000);
        counts["wrapper socket"] = (counts["wrapper socket"] ?? 0) + 1;
      });
      const workerMetrics = Number(new URL(farm.workers[0].metricsUrl).port);
      const httpTargets = [
        ["master status", "127.0.0.1", farm.statusPort],
        ["coordinator status", "127.0.0.1", coordinatorHttp],
        ["worker metrics", workerHost, workerMetrics],
      ] as const;
      for (const [name, hostname, port] of httpTargets) {
        await inParallel(150, 16, async () => {
          const conn = await Deno.connect({ hostname, port });
          await sendAndDrain(conn, httpFuzz(fuzz), 5_000);
          counts[name] = (counts[name] ?? 0) + 1;
        });
      }
      console.log(`${seedNote}: ${JSON.stringify(counts)}`);

      // Everything still serves good peers.
      const status = await farm.status();
      assert.equal(status.workers.length, 1, seedNote);
      const listed = await (await fetch(`http://127.0.0.1:${coordinatorHttp}/status.json`)).json();
      assert.equal(listed.workers.length, 1, seedNote);
      assert.equal(listed.workers[0].draining, false, `${seedNote}: nobody drained it`);
      const metrics = await (await fetch(`http://${workerHost}:${workerMetrics}/metrics`)).text();
      assert.match(metrics, /^termite_worker_slots 2$/m, seedNote);
      await Deno.writeTextFile(`${tree}/ok.c`, "int ok(void) { return 1; }\n");
      const before = status.jobs.jobsRemote;
      const gcc = await runIn(tree, [`${farm.binDir}/gcc`, "-c", "ok.c", "-o", "ok.o"], farm.env);
      assert.equal(gcc.code, 0, `${seedNote}: ${gcc.stderr}`);
      assert.ok((await farm.status()).jobs.jobsRemote > before, "the compile ran on the worker");
      for (const p of [farm.coordinator, farm.master, farm.workers[0]]) {
        assert.ok(await Deno.stat(`/proc/${p.child.pid}`).then(() => true, () => false), p.name);
      }
      assert.match(await Deno.readTextFile(farm.coordinator.log), /Rejected peer|Dropping peer/);
    },
  );
});

Deno.test("hostile: a peer opening mirror after mirror stays under the worker's mirror cap; real jobs still run", async () => {
  await withFarm(
    "mirrors",
    { workers: 1, workerArgs: ["--mirrors-max", "3"] },
    async (farm, tree) => {
      const secret = await loadSecret(farm.secretPath);
      const [hostname, port] = farm.workers[0].address.split(":");
      const cache = farm.workerCacheDir(0);
      const pid = farm.workers[0].child.pid;
      let most = 0;
      const refused: string[] = [];
      for (let i = 0; i < 8; i++) {
        await using peer = await connect({
          transport: "tcp",
          hostname,
          port: Number(port),
          secret,
          role: "master",
        });
        await peer.call(WorkerMethods.mirrorOpen, {
          masterId: `hostile-${i}`,
          writableRoot: tree,
          slots: 1,
        }, { timeoutMs: 10_000 }).catch((e) => refused.push((e as RpcError).code));
        most = Math.max(most, (await mounts(pid, { type: /fuse/, under: cache })).length);
      }
      assert.ok(most <= 3, `${most} mirrors mounted`);
      assert.deepEqual(refused, [], "idle mirrors make room");
      const r = await runIn(
        tree,
        [`${farm.binDir}/termite-sh`, "-c", "echo fine > fine.txt"],
        farm.env,
      );
      assert.equal(r.code, 0, r.stderr);
      assert.equal(await Deno.readTextFile(`${tree}/fine.txt`), "fine\n");
      assert.ok((await mounts(pid, { type: /fuse/, under: cache })).length <= 3);
      assert.match(await Deno.readTextFile(farm.workers[0].log), /3 mirrors at most/);
    },
  );
});

// ---- Jobs that try to escape their sandbox or exhaust the worker ----

const ESCAPE_C = `
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
int main(int argc, char **argv) {
  mkdir("esc", 0755);
  printf("chroot: %s\\n", chroot("esc") ? strerror(errno) : "ok");
  for (int i = 0; i < 64; i++) chdir("..");
  printf("chroot again: %s\\n", chroot(".") ? strerror(errno) : "ok");
  for (int i = 1; i < argc; i++) {
    FILE *f = fopen(argv[i], "r");
    printf("open %s: %s\\n", argv[i], f ? "opened" : strerror(errno));
  }
  return 0;
}
`;

const PTRACE_C = `
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ptrace.h>
#include <unistd.h>
int main(void) {
  int seen = 0, unseen = 0;
  char visible[4096] = {0};
  DIR *d = opendir("/proc");
  struct dirent *e;
  while (d && (e = readdir(d))) {
    int pid = atoi(e->d_name);
    if (pid <= 0) continue;
    seen++;
    if (pid < 4096) visible[pid] = 1;
  }
  /* Any process of another job would have to be one this job cannot see. */
  for (int pid = 1; pid < 4096; pid++) {
    if (!visible[pid] && ptrace(PTRACE_ATTACH, pid, 0, 0) == 0) unseen++;
  }
  /* Said before the kill: the job ends when its shell dies, maybe before a late printf. */
  printf("processes seen %d, attached unseen %d\\n", seen, unseen);
  fflush(stdout);
  kill(-1, SIGKILL);
  return 0;
}
`;

Deno.test("hostile: jobs trying to escape the sandbox, trace or read other jobs, fill the disk or fork-bomb fail; the worker keeps serving", async () => {
  await withFarm("escape", {
    workers: 1,
    slotsPerWorker: 3,
    workerArgs: ["--processes-max", "64", "--job-disk-max", "64M"],
  }, async (farm, tree) => {
    const sh = (script: string) =>
      runIn(tree, [`${farm.binDir}/termite-sh`, "-c", script], farm.env);
    await Deno.writeTextFile(`${tree}/escape.c`, ESCAPE_C);
    await Deno.writeTextFile(`${tree}/ptrace.c`, PTRACE_C);
    for (const p of ["escape", "ptrace"]) {
      const cc = await runIn(tree, ["gcc", "-O1", "-o", p, `${p}.c`]);
      assert.equal(cc.code, 0, cc.stderr);
    }
    // A file of the worker host that the master does not serve (its dir is 0700).
    const marker = `${farm.workerCacheDir(0)}/marker.txt`;
    await Deno.writeTextFile(marker, "worker private\n", { mode: 0o644 });

    // 1. A second chroot and `..`: chroot is refused to nobody; nothing outside is seen.
    const esc = await sh(`./escape ${marker} /proc/1/root/etc/hostname /etc/shadow`);
    assert.equal(esc.code, 0, esc.stderr);
    assert.match(esc.stdout, /^chroot: Operation not permitted$/m);
    assert.match(esc.stdout, /^chroot again: Operation not permitted$/m);
    assert.doesNotMatch(esc.stdout, /opened/);

    // 2. Tracing or killing another job: it is in another PID namespace, unseen.
    const victim = sh("echo hidden > victim.txt; sleep 3; cat victim.txt; echo survived");
    await new Promise((r) => setTimeout(r, 1000));
    // (Its kill(-1, SIGKILL) takes its own shell down too: exit 137.)
    const tracer = await sh("cat victim.txt 2>&1; ./ptrace");
    const seen = Number(tracer.stdout.match(/processes seen (\d+)/)?.[1]);
    assert.ok(seen >= 1 && seen <= 4, tracer.stdout);
    assert.match(tracer.stdout, /attached unseen 0/);
    assert.match(tracer.stdout, /victim\.txt: No such file/, "another job's files are not visible");
    const v = await victim;
    assert.equal(v.code, 0, v.stderr);
    assert.equal(v.stdout, "hidden\nsurvived\n", "the other job was neither traced nor killed");

    // 3. Filling the disk: one big file, many files, /tmp.
    // One file stops a byte past the cap (RLIMIT_FSIZE; SIGXFSZ: exit 128+25): a
    // truncated output, refused whole.
    const big = await sh("dd if=/dev/zero of=big.bin bs=1M count=300");
    assert.equal(big.code, 153, big.stderr);
    assert.match(big.stderr, /termite: .*67108864 bytes.*\(limit (disk|result)-bytes/);
    await assert.rejects(Deno.stat(`${tree}/big.bin`), Deno.errors.NotFound);
    const many = await sh(
      "for i in 1 2 3 4 5 6 7 8; do head -c 30000000 /dev/zero > m$i.bin; done; sleep 3",
    );
    assert.notEqual(many.code, 0, JSON.stringify(many));
    assert.match(many.stderr, /termite: job killed on .*[Dd]isk/);
    await assert.rejects(Deno.stat(`${tree}/m1.bin`), Deno.errors.NotFound);
    // (Through a variable: a command naming /tmp itself runs on the master, see outside.ts.)
    const tmp = await sh("d=/tmp; head -c 300000000 /dev/zero > $d/fill; echo after $?");
    assert.notEqual(tmp.stdout, "after 0\n");

    // 4. A fork bomb stops at the process cap.
    const bomb = await sh("f() { f | f & }; f; sleep 5");
    assert.notEqual(bomb.code, 0);
    assert.match(bomb.stderr, /termite: job killed on .*[Pp]rocess limit/);

    // The worker serves on, and nothing of those jobs is left on it.
    const ok = await sh("echo still > still.txt; cat still.txt");
    assert.equal(ok.stdout, "still\n", ok.stderr);
    const status = await farm.status();
    assert.equal(status.jobs.jobsLocal, 0, "every job ran on the worker");
    assert.equal((await sampleFarm(farm)).sandboxProcesses, 0);
  });
});

Deno.test("hostile: jobs reaching for the network, 250,000 files in /tmp, 240,000 in the tree, a 4 GiB sparse file, a tree too deep to remove, fallocate: refused by name; the worker keeps serving", async () => {
  // The worker's default limits: --job-disk-max 8G, so 4 GiB of results, a 1 GiB /tmp, 200,000 files.
  await withFarm("limits", { workers: 1, slotsPerWorker: 2 }, async (farm, tree) => {
    const sh = (script: string) =>
      runIn(tree, [`${farm.binDir}/termite-sh`, "-c", script], farm.env);
    const cc = await runIn(tree, [
      "gcc",
      "-O1",
      "-o",
      "net_probe",
      `${ROOT}/tests/testdata/net_probe.c`,
    ]);
    assert.equal(cc.code, 0, cc.stderr);
    const warm = await sh("./net_probe");
    assert.equal(warm.code, 0, warm.stderr);

    // 1. The network: the coordinator, the worker's RPC port (on its loopback
    // and its address), a listener of its own, the host's sockets.
    const worker = farm.workers[0];
    const [workerIp, workerPort] = worker.address.split(":");
    const coordinator = `${worker.host!.hostAddress} ${farm.coordinatorPort}`;
    const probe = sh(
      `./net_probe connect ${coordinator} connect 127.0.0.1 ${workerPort} ` +
        `connect ${workerIp} ${workerPort} listen 4444 4000 sockets`,
    );
    for (const ms of [1500, 1000]) {
      await sleep(ms);
      await assert.rejects(
        Deno.connect({ hostname: workerIp, port: 4444 }),
        /refused/i,
        "the job's listener is not on the worker's network",
      );
    }
    const net = await probe;
    assert.equal(net.code, 0, net.stderr);
    assert.match(
      net.stdout,
      new RegExp(
        `^connect ${workerIp.replaceAll(".", "\\.")}:${workerPort} Network is unreachable$`,
        "m",
      ),
    );
    assert.match(
      net.stdout,
      new RegExp(`^connect 127\\.0\\.0\\.1:${workerPort} Connection refused$`, "m"),
    );
    assert.match(net.stdout, /^connect 10\.\S+ Network is unreachable$/m, "no coordinator");
    assert.match(net.stdout, /^listen 4444 ok$/m);
    assert.match(net.stdout, /^sockets 4444$/m, "no socket of the worker's in /proc/net/tcp");

    // 2. 250,000 files in /tmp: stopped at 200,000 (ENOSPC), the limit named.
    // (Through a variable: a command naming /tmp itself runs on the master.)
    const tmp = await sh("d=/tmp; cd $d && seq 250000 | xargs touch");
    assert.notEqual(tmp.code, 0);
    assert.match(tmp.stderr, /No space left on device/);
    assert.match(
      tmp.stderr,
      /termite: the job's \/tmp is full: 200000 files at most \(limit files\)/,
    );

    // 3. 240,000 names in the tree (hard links: a new inode costs ~0.5 ms on
    // this disk, a link 26 µs): killed, nothing applied. (Empty files and
    // directories: tests/sandbox_test.ts, with a lower limit.)
    const files = await sh(
      "mkdir many && cd many && touch a b c d && " +
        `perl -e 'for my $f (qw(a b c d)) { link($f, "$f$_") or die "link: $!" for 1..60000 }'`,
    );
    assert.notEqual(files.code, 0);
    assert.match(
      files.stderr,
      /termite: job killed on .*: Disk limit reached: more than 200000 files, directories and links written \(limit files\)/,
    );
    await assert.rejects(Deno.stat(`${tree}/many`), Deno.errors.NotFound);

    // 4. A 4 GiB sparse file (1 MiB written) past the 4 GiB result limit:
    // stopped at once (RLIMIT_FSIZE, SIGXFSZ), not stored nor sent.
    const sparse = await sh("dd if=/dev/zero of=sparse.bin bs=1M count=1 seek=4096");
    assert.equal(sparse.code, 128 + 25, sparse.stderr);
    // (dd's write crosses the limit by a byte, then SIGXFSZ: the file is past
    // it, and the launcher's measure refuses the results.)
    assert.match(sparse.stderr, /termite: .*4294967296 bytes.* \(limit result-bytes/);
    assert.ok((await Deno.stat(`${tree}/sparse.bin`).then((i) => i.size, () => 0)) === 0);
    const stored = (await sampleFarm(farm)).storeBytes[0];
    assert.ok(stored < 64 * 2 ** 20, `store holds ${stored} bytes`);

    // 5. A tree 20,000 levels deep (Deno.remove overflowed its stack on it and
    // aborted the worker).
    const deep = await sh(
      `perl -e 'for (1..20000) { mkdir "a" or die "mkdir: $!"; chdir "a" or die "chdir: $!" }'`,
    );
    assert.notEqual(deep.code, 0);
    assert.match(
      deep.stderr,
      /Disk limit reached: a path longer than 4095 bytes \(limit path-bytes\)/,
    );
    await assert.rejects(Deno.stat(`${tree}/a`), Deno.errors.NotFound);

    // 6. fallocate: 10 GB at once, past every limit, is refused.
    const alloc = await sh(": > f && fallocate --keep-size -l 10G f");
    assert.equal(alloc.code, 1);
    assert.match(
      alloc.stderr,
      /fallocate failed: (Operation not supported|keep size mode is unsupported)/,
    );

    // The worker serves on; every job ran on it, none left anything behind.
    const ok = await sh("echo still > still.txt; cat still.txt");
    assert.equal(ok.stdout, "still\n", ok.stderr);
    assert.equal((await farm.status()).jobs.jobsLocal, 0, "every job ran on the worker");
    assert.ok(await waitUntil(async () => (await sampleFarm(farm)).jobDirs[0] === 0, 10_000));
    assert.equal((await sampleFarm(farm)).sandboxProcesses, 0);
  });
});
