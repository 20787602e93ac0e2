/**
 * Hostile input: bad secret files and wrong secrets at each role's entry
 * point; fuzzed frames, handshakes and HTTP against every listening port of a
 * real farm; jobs trying to escape their sandbox or exhaust the worker.
 * Nothing crashes, bad peers are dropped, good ones are served afterwards.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { registerWorker, startCoordinator } from "../coordinator/mod.ts";
import { MasterMethods, VERSION, WorkerMethods } from "../common/protocol.ts";
import { Master } from "../master/master.ts";
import {
  type CallContext,
  listen,
  type RpcError,
  type RpcPeer,
  secretFromBytes,
} from "../rpc/mod.ts";
import { ROOT, scratchDir } from "./_reliability.ts";

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
}

const PAYLOAD = enc.encode("hostile bytes\n");
const PAYLOAD_HASH = createHash("sha256").update(PAYLOAD).digest("hex");

/**
 * Runs one command through a master whose only worker is a double behaving as
 * told; returns the outcome, the master's log, what the double's calls into
 * the master got, and whether the tree changed.
 */
async function throughDouble(behaviour: DoubleBehaviour): Promise<{
  code: number;
  out: string;
  logs: string[];
  treeAfter: string[];
  treeBefore: string[];
  probes: string[];
}> {
  const root = await Deno.realPath(await scratchDir("double-"));
  const cache = await Deno.makeTempDir({ prefix: "termite-double-cache-" });
  await Deno.writeTextFile(`${root}/keep.c`, "int keep;\n");
  const secret = await secretFromBytes(crypto.getRandomValues(new Uint8Array(32)));
  const probes: string[] = [];
  const list = async (): Promise<string[]> =>
    (await Array.fromAsync(Deno.readDir(root))).map((e) => e.name).sort();
  const worker = listen({
    transport: "tcp",
    hostname: "127.0.0.1",
    port: 0,
    secret,
    role: "worker",
    log: () => {},
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
      [WorkerMethods.jobRun]: () =>
        (behaviour.reply ?? ((r: string, h: string, s: number) => ({
          exitCode: 0,
          resultSet: {
            deletions: [`${r}/keep.c`],
            dirs: [],
            files: [{ path: `${r}/out.o`, hash: h, size: s, mode: 0o644, mtimeMs: 0 }],
            symlinks: [],
          },
        })))(root, PAYLOAD_HASH, PAYLOAD.length),
      [WorkerMethods.blobGet]: (_p: unknown, ctx: CallContext) =>
        behaviour.blob ? behaviour.blob(ctx) : ctx.sendBytes(PAYLOAD).then(() => ({ size: 14 })),
    }),
  });
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
    jobSilenceMs: 1_000,
    log: (m) => logs.push(m),
  });
  try {
    for (let i = 0; i < 200 && master.workers.length === 0; i++) {
      await new Promise((r) => setTimeout(r, 25));
    }
    assert.equal(master.workers.length, 1, logs.join("\n"));
    const treeBefore = await list();
    let out = "";
    const result = await master.run(
      { argv: ["sh", "-c", "echo local"], cwd: root, env: { PATH: "/usr/bin:/bin" } },
      {
        stdout: (b) => {
          out += decoder.decode(b);
          return Promise.resolve();
        },
        stderr: () => Promise.resolve(),
        stdin: null,
        signal: new AbortController().signal,
      },
    );
    return { code: result.code, out, logs, treeBefore, treeAfter: await list(), probes };
  } finally {
    await master.close();
    await registration.close();
    await coordinator.close();
    await worker.close();
    await Deno.remove(root, { recursive: true });
    await Deno.remove(cache, { recursive: true });
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
          deletions: Array.from({ length: 100_001 }, (_, i) => `${r}/d${i}`),
          dirs: [],
          files: [],
          symlinks: [],
        },
      }),
    },
    // Capped by the frame size first (1 MiB), else by the entry count.
    /Frame too large|100001 entries/,
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

for (const [name, behaviour, why] of hostileWorkers) {
  Deno.test(`hostile: the master refuses a worker sending ${name}, tree untouched, job run locally`, async () => {
    const r = await throughDouble(behaviour);
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
