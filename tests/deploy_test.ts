/**
 * The example systemd units (deploy/systemd/): systemd-analyze verify
 * accepts them, and their ExecStart lines, as written (only the paths of
 * this checkout, the secret and the caches put in), start a coordinator, a
 * worker and a master in a network namespace of their own that compile a
 * file on the worker.
 */
import assert from "node:assert/strict";
import { ROOT, runIn } from "../farm/mod.ts";
import { createHost, freeHostNumbers, removeHost } from "../farm/netns.ts";

const UNITS = `${ROOT}/deploy/systemd`;
const dec = new TextDecoder();

interface Unit {
  execStart: string;
  workingDirectory?: string;
  environmentFile?: string;
  credential?: { name: string; path: string };
}

function parseUnit(text: string): Unit {
  const get = (key: string) =>
    new RegExp(`^${key}=(.*)$`, "m").exec(text)?.[1]?.trim() as string | undefined;
  const credential = get("LoadCredential");
  return {
    execStart: get("ExecStart")!,
    workingDirectory: get("WorkingDirectory"),
    environmentFile: get("EnvironmentFile"),
    credential: credential
      ? { name: credential.split(":")[0], path: credential.split(":")[1] }
      : undefined,
  };
}

function which(name: string): boolean {
  return (Deno.env.get("PATH") ?? "").split(":").some((dir) => {
    try {
      return Deno.statSync(`${dir}/${name}`).isFile;
    } catch {
      return false;
    }
  });
}

Deno.test({
  name: "deploy: systemd-analyze verify accepts the units",
  ignore: !which("systemd-analyze"),
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "termite-units-" });
    try {
      const runtime = `${dir}/runtime`;
      await Deno.mkdir(runtime, { mode: 0o700 });
      const units: [string, string, boolean][] = [
        ["termite-coordinator.service", "termite-coordinator.service", false],
        ["termite-worker.service", "termite-worker.service", false],
        // A template is checked as an instance: ~/my-project, escaped.
        ["termite-master@.service", "termite-master@home-me-my\\x2dproject.service", true],
      ];
      for (const [file, name, user] of units) {
        await Deno.copyFile(`${UNITS}/${file}`, `${dir}/${name}`);
        const out = await new Deno.Command("systemd-analyze", {
          args: ["verify", ...(user ? ["--user"] : []), `${dir}/${name}`],
          env: { XDG_RUNTIME_DIR: runtime },
          stdout: "piped",
          stderr: "piped",
        }).output();
        const said = (dec.decode(out.stdout) + dec.decode(out.stderr)).trim();
        assert.equal(out.code, 0, `${file}: ${said}`);
        assert.equal(said, "", `${file}: warnings`);
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

/** A process in the namespace, its stderr kept; resolves once `ready` matches. */
async function start(
  netns: string,
  cmd: string[],
  options: { cwd?: string; env: Record<string, string>; ready: RegExp; name: string },
) {
  const child = new Deno.Command("nsenter", {
    args: [`--net=/run/netns/${netns}`, "--", ...cmd],
    cwd: options.cwd,
    env: options.env,
    clearEnv: true,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let log = "";
  let resolveReady!: (m: RegExpMatchArray | null) => void;
  const ready = new Promise<RegExpMatchArray | null>((r) => resolveReady = r);
  const pump = async (stream: ReadableStream<Uint8Array>) => {
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
      log += chunk;
      const m = log.match(options.ready);
      if (m) resolveReady(m);
    }
  };
  const done = Promise.all([child.status, pump(child.stdout), pump(child.stderr)]).then(() =>
    resolveReady(null)
  );
  let timer: ReturnType<typeof setTimeout> | undefined;
  const match = await Promise.race([
    ready,
    new Promise<null>((r) => timer = setTimeout(() => r(null), 60_000)),
  ]);
  clearTimeout(timer);
  const stop = async () => {
    try {
      child.kill("SIGTERM");
    } catch {
      // Gone.
    }
    const kill = setTimeout(() => {
      try {
        child.kill("SIGKILL");
      } catch {
        // Gone.
      }
    }, 15_000);
    await done;
    clearTimeout(kill);
  };
  if (match === null) {
    await stop();
    throw new Error(`${options.name} did not start:\n${log.slice(-3000)}`);
  }
  return { match, stop, log: () => log };
}

Deno.test("deploy: the units' commands as written run a farm that compiles on the worker", async () => {
  await Deno.mkdir(`${ROOT}/.cache/test`, { recursive: true });
  const dir = await Deno.makeTempDir({ dir: `${ROOT}/.cache/test`, prefix: "deploy-" });
  await Deno.chmod(dir, 0o755);
  const n = await freeHostNumbers(1);
  const netns = `termite-deploy-${Deno.pid}`;
  const stops: (() => Promise<void>)[] = [];
  try {
    await createHost(netns, n);
    const secret = `${dir}/secret`;
    await Deno.writeFile(secret, crypto.getRandomValues(new Uint8Array(32)), { mode: 0o600 });
    const tree = `${dir}/my-project`;
    await Deno.mkdir(tree, { mode: 0o755 });
    await Deno.writeTextFile(`${tree}/a.c`, "int a(void) { return 42; }\n");
    const home = `${dir}/home`;
    await Deno.mkdir(home);
    const settings: Record<string, string> = {};
    for (const line of (await Deno.readTextFile(`${ROOT}/deploy/termite.env`)).split("\n")) {
      const m = /^([A-Z_]+)=(.*)$/.exec(line);
      if (m) settings[m[1]] = m[2];
    }
    settings.TERMITE_COORDINATOR = "127.0.0.1:1230"; // the build machine, here
    settings.TERMITE_WORKER_JOBS = "2";
    settings.TERMITE_MASTER_JOBS = "2";

    const command = (file: string, unit: Unit) => {
      let line = unit.execStart;
      if (unit.credential) {
        assert.equal(unit.credential.path, "/etc/termite/secret", file);
        line = line.replaceAll(`%d/${unit.credential.name}`, secret);
      }
      line = line.replaceAll("%h/.config/termite/secret", secret)
        .replaceAll("/etc/termite/secret", secret)
        .replaceAll("/opt/termite/", `${ROOT}/`)
        .replaceAll("/var/cache/termite-worker", `${dir}/worker-cache`)
        .replace(/\$\{([A-Z_]+)\}/g, (_, name) => {
          assert.ok(name in settings, `${file}: ${name} is not in deploy/termite.env`);
          return settings[name];
        });
      assert.doesNotMatch(line, /[%$]/, `${file}: a specifier or variable left: ${line}`);
      const args = line.split(/\s+/);
      assert.equal(args[0], "deno", file);
      return [Deno.execPath(), ...args.slice(1)];
    };
    const env = {
      PATH: Deno.env.get("PATH")!,
      HOME: home,
      XDG_CACHE_HOME: `${home}/.cache`,
      NO_COLOR: "1",
    };
    const unit = async (file: string) => parseUnit(await Deno.readTextFile(`${UNITS}/${file}`));

    const coordinatorUnit = await unit("termite-coordinator.service");
    const coordinator = await start(netns, command("coordinator", coordinatorUnit), {
      env,
      ready: /status page on http:\/\/127\.0\.0\.1:1231\//,
      name: "coordinator",
    });
    stops.push(coordinator.stop);
    const workerUnit = await unit("termite-worker.service");
    assert.equal(workerUnit.environmentFile, "/etc/termite/termite.env");
    const worker = await start(netns, command("worker", workerUnit), {
      env,
      ready: /listening as (\S+)/,
      name: "worker",
    });
    stops.unshift(worker.stop);
    const masterUnit = await unit("termite-master@.service");
    assert.equal(masterUnit.workingDirectory, "%f", "the instance's path: the build tree");
    const master = await start(netns, command("master", masterUnit), {
      cwd: tree,
      env,
      ready: /status on http:\/\/127\.0\.0\.1:(\d+)\//,
      name: "master",
    });
    stops.unshift(master.stop);

    const curl = async (url: string) => {
      const out = await runIn(ROOT, [
        "nsenter",
        `--net=/run/netns/${netns}`,
        "--",
        "curl",
        "-sf",
        url,
      ]);
      assert.equal(out.code, 0, `${url}: ${out.stderr}`);
      return out.stdout;
    };
    const deadline = Date.now() + 30_000;
    while (
      JSON.parse(await curl(`http://127.0.0.1:${master.match[1]}/status.json`)).workers.length === 0
    ) {
      assert.ok(Date.now() < deadline, `no worker reached the master:\n${master.log()}`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    const bin = `${dir}/bin`;
    await Deno.mkdir(bin);
    await Deno.symlink(`${ROOT}/bin/termite-wrap`, `${bin}/gcc`);
    const gcc = await runIn(tree, ["gcc", "-c", "a.c", "-o", "a.o"], {
      ...env,
      PATH: `${bin}:${env.PATH}`,
    });
    assert.equal(gcc.code, 0, gcc.stderr + master.log());
    assert.ok((await Deno.stat(`${tree}/a.o`)).size > 0);

    const status = JSON.parse(await curl(`http://127.0.0.1:${master.match[1]}/status.json`));
    assert.equal(status.jobs.jobsRemote, 1, JSON.stringify(status.jobs));
    assert.equal(status.jobs.jobsLocal, 0);
    // The coordinator's page (1231, as the unit says) lists the master and links its page.
    const farm = JSON.parse(await curl("http://127.0.0.1:1231/status.json"));
    assert.equal(farm.workers.length, 1);
    const listed = farm.masters.find((m: { root?: string }) => m.root === tree);
    assert.equal(listed?.statusUrl, `http://127.0.0.1:${master.match[1]}/`);
    assert.match(await curl("http://127.0.0.1:1231/metrics"), /^termite_coordinator_workers 1$/m);
  } finally {
    for (const stop of stops) await stop();
    await removeHost(netns, n);
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});
