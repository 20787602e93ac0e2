/**
 * The role entry points as a newcomer meets them: --help, flag errors, the
 * secret file, ports in use, running the worker without root.
 */
import assert from "node:assert/strict";
import { Flags, type FlagSpecs, helpText, resolvePath } from "../common/cli.ts";

const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const ROLES = ["coordinator", "worker", "master"] as const;
type Role = typeof ROLES[number];
const decoder = new TextDecoder();

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `deno run -A <role>.ts ARGS`; killed after `timeoutMs` (then code is 137-ish). */
async function runRole(
  role: Role | "wrapper" | "token" | "monitor",
  args: string[],
  options: { cwd?: string; prefix?: string[]; env?: Record<string, string>; timeoutMs?: number } =
    {},
): Promise<Run> {
  const cmd = [...(options.prefix ?? []), Deno.execPath(), "run", "-A", `${ROOT}/${role}.ts`];
  const child = new Deno.Command(cmd[0], {
    args: [...cmd.slice(1), ...args],
    cwd: options.cwd,
    env: options.env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const timer = setTimeout(() => {
    try {
      child.kill("SIGKILL");
    } catch {
      // Exited.
    }
  }, options.timeoutMs ?? 30_000);
  try {
    const out = await child.output();
    return {
      code: out.code,
      stdout: decoder.decode(out.stdout),
      stderr: decoder.decode(out.stderr),
    };
  } finally {
    clearTimeout(timer);
  }
}

async function scratch(): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "termite-cli-" });
  await Deno.chmod(dir, 0o755);
  await Deno.mkdir(`${dir}/tree`);
  return dir;
}

async function writeSecret(path: string, bytes: number): Promise<void> {
  const secret = crypto.getRandomValues(new Uint8Array(bytes));
  // Trailing whitespace does not count: end on a byte that is not.
  if (bytes > 0) secret[bytes - 1] = 0x78;
  await Deno.writeFile(path, secret, { mode: 0o600 });
  await Deno.chmod(path, 0o600);
}

/** Arguments that would start each role but for what the test changes. */
function roleArgs(role: Role, dir: string, secret: string): string[] {
  switch (role) {
    case "coordinator":
      return ["--secret", secret, "--host", "127.0.0.1", "--port", "0", "--http-port", "none"];
    case "worker":
      return [
        "--secret",
        secret,
        "--coordinator",
        "127.0.0.1:1",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--metrics-port",
        "0",
        "--cache-dir",
        `${dir}/worker-cache`,
      ];
    case "master":
      return ["--secret", secret, "--cache-dir", `${dir}/master-cache`];
  }
}

/** The flag blocks of a --help text: "--name" → its text (continuation lines joined). */
function helpFlags(help: string): Map<string, string> {
  const flags = new Map<string, string>();
  let current = "";
  for (const line of help.split("\n")) {
    const m = /^ {2}--([a-z-]+)(.*)$/.exec(line);
    if (m) {
      current = m[1];
      flags.set(current, m[2].trim());
    } else if (current !== "" && /^ {4,}\S/.test(line)) {
      flags.set(current, `${flags.get(current)} ${line.trim()}`);
    }
  }
  return flags;
}

Deno.test("helpText() lists every flag with its default, wrapped at 100 columns", () => {
  const specs: FlagSpecs = {
    port: { type: "string", value: "N", default: "1230", help: "port to listen on" },
    coordinator: { type: "string", value: "HOST:PORT", required: true, help: "where" },
    jobs: { type: "string", value: "N", defaultText: "the number of CPUs", help: "slots" },
    quiet: { type: "boolean", help: "say less " + "and less ".repeat(20) },
  };
  const text = helpText({ usage: "x.ts [flags]", about: "Does x.", flags: specs });
  const flags = helpFlags(text);
  assert.match(flags.get("port")!, /^N +port to listen on \(default: 1230\)$/);
  assert.match(flags.get("coordinator")!, /\(required\)$/);
  assert.match(flags.get("jobs")!, /\(default: the number of CPUs\)$/);
  assert.match(flags.get("quiet")!, /\(default: off\)$/);
  assert.match(flags.get("help")!, /print this and exit/);
  assert.ok(text.split("\n").every((line) => line.length <= 100), text);
});

Deno.test("Flags: each bad value names its flag; a relative path is made absolute at start", () => {
  const specs: FlagSpecs = {
    port: { type: "string", default: "1230", help: "" },
    jobs: { type: "string", default: "4", help: "" },
    timeout: { type: "string", default: "30s", help: "" },
    coordinator: { type: "string", help: "where workers are listed" },
    secret: { type: "string", default: "secret.txt", help: "" },
  };
  const parse = (args: string[]) => Flags.parse(args, specs);
  assert.equal(parse([]).port("port"), 1230);
  assert.equal(parse([]).durationMs("timeout"), 30_000);
  assert.throws(() => parse(["--port", "http"]).port("port"), /^FlagError: Bad --port "http"/);
  assert.throws(() => parse(["--port", "70000"]).port("port"), /Bad --port "70000"/);
  assert.throws(() => parse(["--jobs", "0"]).integer("jobs", { min: 1, max: 9 }), /Bad --jobs/);
  assert.throws(() => parse(["--timeout", "soon"]).durationMs("timeout"), /Bad --timeout "soon"/);
  assert.throws(() => parse(["--coordinator", "x"]).hostPort("coordinator"), /Bad --coordinator/);
  assert.throws(() => parse([]).required("coordinator"), /--coordinator is required: where/);
  assert.throws(() => parse(["--bogus"]), /Unknown flag '--bogus' \(see --help\)/);
  assert.throws(() => parse(["--port"]), /'--port <value>' argument missing/);
  assert.equal(parse([]).path("secret"), `${Deno.cwd()}/secret.txt`);
  assert.equal(parse(["--secret", "/etc/s"]).path("secret"), "/etc/s");
  assert.equal(resolvePath("/a/b", "../c/./d"), "/a/c/d");
});

Deno.test("every role's --help exits 0 and shows each flag's default (or that it is required)", async () => {
  const tools = ["token", "monitor"] as const;
  const runs = await Promise.all([...ROLES, ...tools].map((role) => runRole(role, ["--help"])));
  for (const [i, role] of [...ROLES, ...tools].entries()) {
    const run = runs[i];
    assert.equal(run.code, 0, `${role}: ${run.stderr}`);
    const flags = helpFlags(run.stdout);
    assert.ok(flags.size >= (i < ROLES.length ? 5 : 2), `${role}:\n${run.stdout}`);
    for (const [name, text] of flags) {
      if (name === "help") continue;
      assert.match(text, /\((default: .+|required)\)$/, `${role} --${name}: ${text}`);
    }
    if (i < ROLES.length) {
      assert.match(flags.get("secret")!, /at least 16 bytes.*\(default: secret\.txt\)/);
    }
  }
  const [coordinator, worker, master] = runs.map((r) => helpFlags(r.stdout));
  assert.match(coordinator.get("port")!, /\(default: 1230\)/);
  assert.match(coordinator.get("http-port")!, /\(default: 1231\)/);
  assert.match(worker.get("port")!, /\(default: 1232\)/);
  assert.match(worker.get("jobs")!, /\(default: the number of CPUs/);
  assert.match(master.get("jobs")!, /jobs to run at once on each worker.*\(default: 4\)/);
  assert.match(worker.get("metrics-port")!, /\(default: 1234\)/);
  assert.match(worker.get("job-network")!, /\(default: off\)/);
  assert.match(worker.get("tls-ca")!, /\(default: none: plain TCP\)/);
  for (const role of [coordinator, worker, master]) {
    assert.match(role.get("tls-cert")!, /clientAuth.*\(default: none; required with --tls-ca\)/);
    assert.match(role.get("tls-key")!, /mode 0600.*\(default: none; required with --tls-ca\)/);
  }
  assert.match(coordinator.get("tls-cert")!, /the status page \(--http-port\) is then HTTPS/);
  assert.match(worker.get("tls-cert")!, /\/metrics \(--metrics-port\) is then HTTPS/);
  const [token, monitor] = runs.slice(ROLES.length).map((r) => helpFlags(r.stdout));
  for (const tool of [token, monitor]) {
    assert.match(tool.get("tls-ca")!, /https:\/\/.*\(default: none: the system's CAs\)/);
  }
});

Deno.test("wrapper.ts --help exits 0; with no tool at all it exits 2", async () => {
  const help = await runRole("wrapper", ["--help"]);
  assert.equal(help.code, 0, help.stderr);
  assert.match(help.stdout, /^usage: wrapper\.ts --as TOOL/);
  assert.match(help.stdout, /termite-wrap/);
  const bare = await runRole("wrapper", []);
  assert.equal(bare.code, 2);
  assert.match(bare.stderr, /usage: wrapper\.ts --as TOOL/);
});

Deno.test("the worker started without root says it must run as root", async () => {
  const run = await runRole("worker", ["--coordinator", "127.0.0.1:1"], {
    prefix: ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"],
    env: { HOME: "/nonexistent" },
  });
  assert.equal(run.code, 1, run.stderr);
  assert.match(run.stderr, /^termite worker: must run as root .*sudo\n$/);
});

Deno.test("every role refuses a secret shorter than 16 bytes, naming the file", async () => {
  const dir = await scratch();
  try {
    const secret = `${dir}/short-secret`;
    await writeSecret(secret, 15);
    const runs = await Promise.all(
      ROLES.map((role) => runRole(role, roleArgs(role, dir, secret), { cwd: `${dir}/tree` })),
    );
    for (const [i, role] of ROLES.entries()) {
      assert.equal(runs[i].code, 1, `${role}: ${runs[i].stderr}`);
      assert.equal(
        runs[i].stderr,
        `termite ${role}: Secret file ${secret} holds 15 bytes, fewer than 16: make one with ` +
          `\`head -c 32 /dev/urandom > ${secret} && chmod 600 ${secret}\`\n`,
      );
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a relative --secret is read from the directory the role started in, and named in full", async () => {
  const dir = await scratch();
  try {
    await writeSecret(`${dir}/secret.txt`, 32);
    // From the directory holding it: the coordinator starts.
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", `${ROOT}/coordinator.ts`, ...roleArgs("coordinator", dir, "secret.txt")],
      cwd: dir,
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    let stderr = "";
    for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) {
      stderr += chunk;
      if (/listening on port \d+/.test(stderr)) break;
    }
    child.kill("SIGTERM");
    await child.status;
    assert.match(stderr, /listening on port \d+/);
    // From another directory (the README's `cd my-project`): the message names the full path.
    const runs = await Promise.all(
      ROLES.map((role) => runRole(role, roleArgs(role, dir, "secret.txt"), { cwd: `${dir}/tree` })),
    );
    for (const [i, role] of ROLES.entries()) {
      assert.equal(runs[i].code, 1, `${role}: ${runs[i].stderr}`);
      assert.equal(
        runs[i].stderr,
        `termite ${role}: Cannot read secret file ${dir}/tree/secret.txt: no such file\n`,
      );
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a port in use is named with its flag, for each port of each role", async () => {
  const dir = await scratch();
  using busy = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = String((busy.addr as Deno.NetAddr).port);
  try {
    const secret = `${dir}/secret`;
    await writeSecret(secret, 32);
    const base = (role: Role) => roleArgs(role, dir, secret);
    const cases: { role: Role; args: string[]; message: string }[] = [
      {
        role: "coordinator",
        args: [...base("coordinator"), "--port", port],
        message: `Cannot listen on 127.0.0.1:${port} (workers and masters): port ${port} is in ` +
          `use (choose another with --port)`,
      },
      {
        role: "coordinator",
        args: [...base("coordinator"), "--http-host", "127.0.0.1", "--http-port", port],
        message: `Cannot listen on 127.0.0.1:${port} (status page): port ${port} is in use ` +
          `(choose another with --http-port)`,
      },
      {
        role: "worker",
        args: [...base("worker"), "--port", port],
        message: `Cannot listen on 127.0.0.1:${port} (masters): port ${port} is in use ` +
          `(choose another with --port)`,
      },
      {
        role: "worker",
        // A cache dir of its own: two workers must not share one.
        args: [...base("worker"), "--metrics-port", port, "--cache-dir", `${dir}/worker-cache-2`],
        message: `Cannot listen on 127.0.0.1:${port} (metrics): port ${port} is in use ` +
          `(choose another with --metrics-port)`,
      },
      {
        role: "master",
        args: [...base("master"), "--status-port", port],
        message: `Cannot listen on 127.0.0.1:${port}: port ${port} is in use ` +
          `(choose another with --status-port)`,
      },
    ];
    const runs = await Promise.all(
      cases.map((c) => runRole(c.role, c.args, { cwd: `${dir}/tree` })),
    );
    for (const [i, c] of cases.entries()) {
      assert.equal(runs[i].code, 1, `${c.role}: ${runs[i].stderr}`);
      assert.equal(runs[i].stderr, `termite ${c.role}: ${c.message}\n`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a bad flag value or an unknown flag is one line naming the flag", async () => {
  const dir = await scratch();
  try {
    const secret = `${dir}/secret`;
    await writeSecret(secret, 32);
    await Deno.writeTextFile(`${dir}/ca.pem`, "-----BEGIN CERTIFICATE-----\n");
    await Deno.writeTextFile(`${dir}/k`, "-----BEGIN PRIVATE KEY-----\n", { mode: 0o644 });
    await Deno.chmod(`${dir}/k`, 0o644);
    const cases: { role: Role; args: string[]; message: RegExp }[] = [
      { role: "coordinator", args: ["--port", "http"], message: /Bad --port "http"/ },
      { role: "coordinator", args: ["--worker-timeout", "3x"], message: /Bad --worker-timeout/ },
      { role: "worker", args: ["--jobs", "lots"], message: /Bad --jobs "lots"/ },
      { role: "worker", args: ["--advertise", "nowhere"], message: /Bad --advertise "nowhere"/ },
      { role: "master", args: ["--coordinator", "host"], message: /Bad --coordinator "host"/ },
      { role: "master", args: ["--jbos", "4"], message: /Unknown flag '--jbos'/ },
      {
        role: "coordinator",
        args: ["--host", "999.1.1.1"],
        message: /Cannot listen on 999\.1\.1\.1:0 .*\(check --host\)$/,
      },
      {
        role: "worker",
        args: ["--metrics-host", "999.1.1.1"],
        message: /Cannot listen on 999\.1\.1\.1:0 \(metrics\): .*\(check --metrics-host\)$/,
      },
      { role: "worker", args: ["--tls-cert", "x.pem"], message: /--tls-cert needs --tls-ca/ },
      {
        role: "coordinator",
        args: ["--tls-ca", `${dir}/ca.pem`],
        message: /--tls-cert is required with --tls-ca/,
      },
      {
        role: "master",
        args: ["--tls-ca", `${dir}/ca.pem`, "--tls-key", `${dir}/k`],
        message: /--tls-cert is required with --tls-ca: .*clientAuth/,
      },
      {
        role: "master",
        args: [
          "--tls-ca",
          `${dir}/none.pem`,
          "--tls-cert",
          `${dir}/ca.pem`,
          "--tls-key",
          `${dir}/k`,
        ],
        message: /Bad --tls-ca: Cannot read/,
      },
      {
        role: "worker",
        args: ["--tls-ca", `${dir}/ca.pem`, "--tls-cert", `${dir}/ca.pem`, "--tls-key", `${dir}/k`],
        message: /Bad --tls-key: Cannot use private key \S+: others may read it \(mode 0644\)/,
      },
      {
        role: "master",
        args: ["--tls-ca", `${dir}/k`, "--tls-cert", `${dir}/ca.pem`, "--tls-key", `${dir}/k`],
        message: /Bad --tls-ca: .*no PEM certificate/,
      },
    ];
    const runs = await Promise.all(
      cases.map((c) =>
        runRole(c.role, [...roleArgs(c.role, dir, secret), ...c.args], { cwd: `${dir}/tree` })
      ),
    );
    for (const [i, c] of cases.entries()) {
      assert.equal(runs[i].code, 1, `${c.role} ${c.args}: ${runs[i].stderr}`);
      const lines = runs[i].stderr.split("\n").filter((l) => l !== "");
      assert.equal(lines.length, 1, runs[i].stderr);
      assert.match(lines[0], new RegExp(`^termite ${c.role}: ${c.message.source}`));
    }
    const monitor = await runRole("monitor", ["--url", "notaurl"], { cwd: dir });
    assert.equal(monitor.code, 1);
    assert.equal(
      monitor.stderr,
      'termite monitor: Bad --url "notaurl": want an http:// or https:// URL of a status page\n',
    );
    const worker = await runRole("worker", ["--secret", secret], { cwd: dir });
    assert.equal(worker.code, 1);
    assert.match(worker.stderr, /^termite worker: --coordinator is required/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the coordinator prints its start line once", async () => {
  const dir = await scratch();
  try {
    await writeSecret(`${dir}/secret`, 32);
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        `${ROOT}/coordinator.ts`,
        "--secret",
        `${dir}/secret`,
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--http-port",
        "0",
      ],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const output = child.output();
    // Long enough for a second line to follow the first.
    await new Promise((r) => setTimeout(r, 3000));
    child.kill("SIGTERM");
    const out = await output;
    const lines = decoder.decode(out.stderr).split("\n").filter((l) => l !== "");
    assert.equal(lines.length, 1, lines.join("\n"));
    assert.match(
      lines[0],
      /^termite coordinator: listening on port \d+, status page on http:\/\/127\.0\.0\.1:\d+\/$/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("another user, with no network and an empty DENO_DIR, starts every role (--help)", async () => {
  // What scripts/bootstrap.sh does once, as root, with network: fill node_modules/.
  const install = await new Deno.Command(Deno.execPath(), {
    args: ["install", "--frozen", "--quiet"],
    cwd: ROOT,
    stdout: "null",
    stderr: "piped",
  }).output();
  assert.equal(install.code, 0, decoder.decode(install.stderr));
  const denoDir = await Deno.makeTempDir({ prefix: "termite-deno-dir-" });
  await Deno.chown(denoDir, 65534, 65534);
  try {
    const prefix = [
      "unshare",
      "--net",
      "setpriv",
      "--reuid=65534",
      "--regid=65534",
      "--clear-groups",
      "--",
    ];
    const env = { HOME: "/nonexistent", DENO_DIR: denoDir, NO_COLOR: "1" };
    const roles = [...ROLES, "wrapper"] as const;
    const runs = await Promise.all(roles.map((role) => runRole(role, ["--help"], { prefix, env })));
    for (const [i, role] of roles.entries()) {
      assert.equal(runs[i].code, 0, `${role}: ${runs[i].stderr}`);
      assert.match(runs[i].stdout, /^usage: /, role);
      assert.doesNotMatch(runs[i].stderr, /Download|npm/, role);
    }
  } finally {
    await Deno.remove(denoDir, { recursive: true });
  }
});

Deno.test("deno task compile without network says it needs internet access or DENORT_BIN", async () => {
  const denoDir = await Deno.makeTempDir({ prefix: "termite-deno-dir-" });
  try {
    const env: Record<string, string> = {
      ...Deno.env.toObject(),
      DENO_DIR: denoDir,
      NO_COLOR: "1",
    };
    delete env.DENORT_BIN;
    const run = async (extra: Record<string, string>) => {
      const out = await new Deno.Command("unshare", {
        args: ["--net", "bash", `${ROOT}/scripts/compile.sh`],
        env: { ...env, ...extra },
        clearEnv: true,
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).output();
      return { code: out.code, stderr: decoder.decode(out.stderr) };
    };
    const offline = await run({});
    assert.equal(offline.code, 1);
    assert.match(
      offline.stderr,
      /^compile: deno compile needs internet access to download denort [\d.]+ .*or DENORT_BIN=\/path\/to\/denort/,
    );
    const missing = await run({ DENORT_BIN: `${denoDir}/no-denort` });
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /^compile: DENORT_BIN=.*no-denort is not an executable file/);
  } finally {
    await Deno.remove(denoDir, { recursive: true });
  }
});
