/**
 * README's "Running it on real machines", run as written: its shell block is
 * read from README.md, split into its numbered steps, and each step runs in
 * bash on its host — the build machine and a worker host, two network
 * namespaces joined by one veth pair — with `/opt/termite` standing for this
 * checkout, `BUILD` for the build machine's address and `~` for a fresh home
 * (so every role also starts with an empty DENO_DIR, and neither host has a
 * route to the internet). Every compile must run on the worker.
 */
import assert from "node:assert/strict";
import type { MasterStatus } from "../master/mod.ts";

const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const decoder = new TextDecoder();
const SOURCES = 12;

/** The numbered steps of the README's multi-host block: "1" → its shell lines. */
async function readmeSteps(): Promise<Map<string, string>> {
  const readme = await Deno.readTextFile(`${ROOT}/README.md`);
  const section = readme.slice(readme.indexOf("## Running it on real machines"));
  const block = /```sh\n([\s\S]*?)```/.exec(section)?.[1];
  assert.ok(block, "README: a sh block under 'Running it on real machines'");
  const steps = new Map<string, string>();
  let current = "";
  for (const line of block.split("\n")) {
    const m = /^# (\d)\. /.exec(line);
    if (m) current = m[1];
    else if (current !== "" && !line.startsWith("#")) {
      steps.set(current, `${steps.get(current) ?? ""}${line}\n`);
    }
  }
  assert.deepEqual([...steps.keys()], ["1", "2", "3", "4"], block);
  return steps;
}

async function ip(args: string[], check = true): Promise<void> {
  const out = await new Deno.Command("ip", { args, stdout: "null", stderr: "piped" }).output();
  if (check && !out.success) {
    throw new Error(`ip ${args.join(" ")}: ${decoder.decode(out.stderr).trim()}`);
  }
}

interface Hosts {
  build: string;
  worker: string;
  buildAddress: string;
  workerAddress: string;
  remove(): Promise<void>;
}

/** Two namespaces joined directly by a veth pair (10.214.N.1 and .2), loopback up in each. */
async function createHosts(): Promise<Hosts> {
  const n = 1 + (Deno.pid % 250);
  const build = `termite-rh-b${n}`, worker = `termite-rh-w${n}`;
  const remove = async () => {
    await ip(["netns", "del", build], false);
    await ip(["netns", "del", worker], false);
  };
  await remove();
  try {
    await ip(["netns", "add", build]);
    await ip(["netns", "add", worker]);
    await ip([
      "link",
      "add",
      `tmrb${n}`,
      "netns",
      build,
      "type",
      "veth",
      "peer",
      "name",
      `tmrw${n}`,
      "netns",
      worker,
    ]);
    for (const [ns, dev, address] of [[build, `tmrb${n}`, 1], [worker, `tmrw${n}`, 2]] as const) {
      await ip(["-n", ns, "addr", "add", `10.214.${n}.${address}/24`, "dev", dev]);
      await ip(["-n", ns, "link", "set", dev, "up"]);
      await ip(["-n", ns, "link", "set", "lo", "up"]);
    }
  } catch (error) {
    await remove();
    throw error;
  }
  return {
    build,
    worker,
    buildAddress: `10.214.${n}.1`,
    workerAddress: `10.214.${n}.2`,
    remove,
  };
}

interface Step {
  child: Deno.ChildProcess;
  output: () => string;
  done: Promise<Deno.CommandStatus>;
}

/** Runs a README step in bash on a host, in a process group of its own. */
function runStep(host: string, script: string, env: Record<string, string>): Step {
  const child = new Deno.Command("nsenter", {
    // nsenter, not `ip netns exec`, which remounts /sys (the worker needs its cgroups).
    args: [`--net=/run/netns/${host}`, "--", "setsid", "bash", "-euo", "pipefail", "-c", script],
    env,
    clearEnv: true,
    cwd: env.HOME,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let text = "";
  const pump = async (stream: ReadableStream<Uint8Array>) => {
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) text += chunk;
  };
  const pumps = Promise.all([pump(child.stdout), pump(child.stderr)]);
  const done = Promise.all([child.status, pumps]).then(([status]) => status);
  return { child, output: () => text, done };
}

async function waitForOutput(step: Step, what: RegExp, name: string): Promise<void> {
  const deadline = Date.now() + 60_000;
  let exited = false;
  step.done.then(() => exited = true);
  while (!what.test(step.output())) {
    if (exited || Date.now() > deadline) {
      throw new Error(
        `${name}: no ${what} (${exited ? "exited" : "timed out"}):\n${step.output()}`,
      );
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** SIGTERM to the step's process group; SIGKILL after 15 s. */
async function stopStep(step: Step): Promise<void> {
  const group = async (signal: string) => {
    await new Deno.Command("kill", {
      args: [`-${signal}`, "--", `-${step.child.pid}`],
      stdout: "null",
      stderr: "null",
    }).output();
  };
  await group("TERM");
  let timer: ReturnType<typeof setTimeout> | undefined;
  const ended = await Promise.race([
    step.done.then(() => true),
    new Promise<boolean>((r) => timer = setTimeout(() => r(false), 15_000)),
  ]);
  clearTimeout(timer);
  if (!ended) {
    await group("KILL");
    await step.done;
  }
}

/** A small C project: SOURCES objects in an archive, linked into a program. */
async function writeProject(dir: string): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  const objects: string[] = [];
  for (let i = 0; i < SOURCES; i++) {
    await Deno.writeTextFile(`${dir}/f${i}.c`, `int f${i}(int x) { return x * ${i + 1}; }\n`);
    objects.push(`f${i}.o`);
  }
  const calls = objects.map((_, i) => `f${i}(1)`).join(" + ");
  const decls = objects.map((_, i) => `int f${i}(int);`).join(" ");
  await Deno.writeTextFile(
    `${dir}/main.c`,
    `#include <stdio.h>\n${decls}\nint main(void) { printf("%d\\n", ${calls}); return 0; }\n`,
  );
  await Deno.writeTextFile(
    `${dir}/Makefile`,
    `prog: main.o libf.a\n\tcc -o prog main.o libf.a\n` +
      `libf.a: ${objects.join(" ")}\n\tar rcs libf.a ${objects.join(" ")}\n` +
      `%.o: %.c\n\tcc -O1 -c $< -o $@\n`,
  );
}

Deno.test("README's multi-host steps, followed as written, run every job on the worker host", async () => {
  const steps = await readmeSteps();
  await Deno.mkdir(`${ROOT}/.cache/test`, { recursive: true });
  // Not under /tmp: the master does not serve /tmp (each job has its own).
  const home = await Deno.makeTempDir({ dir: `${ROOT}/.cache/test`, prefix: "real-hosts-" });
  await Deno.chmod(home, 0o755);
  await writeProject(`${home}/my-project`);
  const hosts = await createHosts();
  const env = {
    HOME: home,
    PATH: `${Deno.execPath().replace(/\/[^/]*$/, "")}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin`,
    NO_COLOR: "1",
  };
  const script = (n: string) =>
    steps.get(n)!.replaceAll("/opt/termite", ROOT).replaceAll("BUILD", hosts.buildAddress);
  const running: Step[] = [];
  try {
    const coordinator = runStep(hosts.build, script("1"), env);
    running.push(coordinator);
    await waitForOutput(coordinator, /listening on port 1230/, "coordinator");
    const worker = runStep(hosts.worker, script("2"), env);
    running.push(worker);
    await waitForOutput(worker, /Registered with coordinator/, "worker");
    const master = runStep(hosts.build, script("3"), env);
    running.push(master);
    await waitForOutput(master, /status on http:\/\/127\.0\.0\.1:1233\//, "master");

    const build = runStep(hosts.build, script("4"), env);
    const status = await build.done;
    const output = build.output();
    assert.equal(status.code, 0, output);
    const json = output.slice(output.indexOf('{"root"'));
    const stats = JSON.parse(json) as MasterStatus;
    const logs = () =>
      `coordinator:\n${coordinator.output()}\nworker:\n${worker.output()}\nmaster:\n` +
      `${master.output()}\nmake:\n${output}`;
    // SOURCES + main.c compiled and the link on the worker; the archive here
    // (the default rules keep `ar` local, as distcc does), and nothing else.
    assert.equal(stats.jobs.jobsLocal, 1, logs());
    assert.ok(stats.jobs.jobsRemote >= SOURCES + 2, JSON.stringify(stats.jobs));
    // Listed at the address the worker's connection came from, not 0.0.0.0.
    assert.deepEqual(Object.keys(stats.jobs.perWorker), [`${hosts.workerAddress}:1232`], logs());
    assert.doesNotMatch(master.output(), /cannot use worker/, logs());
    const run = await new Deno.Command(`${home}/my-project/prog`, { stdout: "piped" }).output();
    const expected = Array.from({ length: SOURCES }, (_, i) => i + 1).reduce((a, b) => a + b);
    assert.equal(decoder.decode(run.stdout), `${expected}\n`);
  } finally {
    for (const step of running.reverse()) await stopStep(step);
    await hosts.remove();
    await Deno.remove(home, { recursive: true });
  }
});
