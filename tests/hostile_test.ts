/**
 * Hostile input: bad secret files and wrong secrets at each role's entry
 * point; fuzzed frames, handshakes and HTTP against every listening port of a
 * real farm; jobs trying to escape their sandbox or exhaust the worker.
 * Nothing crashes, bad peers are dropped, good ones are served afterwards.
 */
import assert from "node:assert/strict";
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
