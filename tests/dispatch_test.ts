/**
 * The dispatch policy, driven by the scripts in tests/testdata/dispatch/ in
 * the style of etcd raft's interaction tests: each block is one command, a
 * `----` line, and the effects it must print. `UPDATE_TESTDATA=1` rewrites
 * the expected parts from what the code does (review the diff).
 *
 * Commands: `options k=v ...` (a new machine), `connecting W`, `up W SLOTS`,
 * `down W WHY`, `removed W`, `submit JOB`, `end JOB W ok|cancelled`,
 * `end JOB W failed [fault] [transient] [committed] WHY`, `cancel JOB`,
 * `time +MS`, `tick`, `state`.
 */
import assert from "node:assert/strict";
import { Dispatch, type DispatchOptions, type Effect } from "../master/dispatch.ts";

const DIR = new URL("./testdata/dispatch/", import.meta.url);

function format(effects: Effect[]): string[] {
  return effects.map((e) => {
    switch (e.kind) {
      case "run":
        return `run ${e.job} on ${e.worker}`;
      case "local":
        return `local ${e.job} (${e.cause}): ${e.reason}`;
      case "fail":
        return `fail ${e.job} (${e.cause}): ${e.reason}`;
      case "drop":
        return `drop ${e.worker}: ${e.why}`;
    }
  });
}

class Runner {
  #clock = 0;
  #d = this.#make({});

  #make(o: Partial<DispatchOptions>): Dispatch {
    return new Dispatch({
      now: () => this.#clock,
      retries: 2,
      slotWaitMs: 1_000,
      setAsideMs: 5_000,
      waitersMax: 100,
      localFallback: true,
      ...o,
    });
  }

  run(command: string): string[] {
    const [verb, ...args] = command.split(/\s+/);
    const rest = (n: number) => args.slice(n).join(" ");
    const d = this.#d;
    switch (verb) {
      case "options": {
        const o: Record<string, number | boolean> = {};
        for (const kv of args) {
          const [k, v] = kv.split("=");
          o[k] = v === "true" ? true : v === "false" ? false : Number(v);
        }
        this.#clock = 0;
        this.#d = this.#make(o as Partial<DispatchOptions>);
        return [];
      }
      case "connecting":
        return format(d.connecting(args[0]));
      case "up":
        return format(d.up(args[0], Number(args[1])));
      case "down":
        return format(d.down(args[0], rest(1)));
      case "removed":
        return format(d.removed(args[0]));
      case "submit":
        return format(d.submit(Number(args[0])));
      case "cancel":
        d.cancel(Number(args[0]));
        return [];
      case "end": {
        const [job, worker, kind] = args;
        if (kind === "ok" || kind === "cancelled") {
          return format(d.ended(Number(job), worker, { kind }));
        }
        assert.equal(kind, "failed", command);
        const flags = new Set<string>();
        let i = 3;
        while (["fault", "transient", "committed"].includes(args[i])) flags.add(args[i++]);
        return format(d.ended(Number(job), worker, {
          kind: "failed",
          why: rest(i),
          workerFault: flags.has("fault"),
          transient: flags.has("transient"),
          committed: flags.has("committed"),
        }));
      }
      case "time":
        this.#clock += Number(args[0]);
        return [];
      case "tick":
        return format(d.tick());
      case "state": {
        const lines = d.workers.map((w) => `${w.id}: ${w.running}/${w.slots}`);
        lines.push(`waiting: ${d.waiting}`);
        for (const id of args) lines.push(`${id} may connect: ${d.mayConnect(id)}`);
        return lines;
      }
      default:
        throw new Error(`Unknown command: ${command}`);
    }
  }
}

interface Block {
  command: string;
  expected: string[];
}

function parse(text: string): Block[] {
  const blocks: Block[] = [];
  const lines = text.split("\n");
  for (let i = 0; i < lines.length;) {
    const line = lines[i];
    if (line.trim() === "" || line.startsWith("#")) {
      i++;
      continue;
    }
    assert.equal(lines[i + 1], "----", `line ${i + 2}: expected ---- after "${line}"`);
    const expected: string[] = [];
    for (i += 2; i < lines.length && lines[i] !== ""; i++) expected.push(lines[i]);
    blocks.push({ command: line, expected });
  }
  return blocks;
}

function render(blocks: { command: string; expected: string[] }[], comments: string[]): string {
  return comments.join("\n") + (comments.length ? "\n\n" : "") +
    blocks.map((b) => [b.command, "----", ...b.expected].join("\n")).join("\n\n") + "\n";
}

for (const entry of Deno.readDirSync(DIR)) {
  if (!entry.name.endsWith(".txt")) continue;
  Deno.test(`dispatch script ${entry.name}`, () => {
    const url = new URL(entry.name, DIR);
    const text = Deno.readTextFileSync(url);
    const comments = text.split("\n").filter((l) => l.startsWith("#"));
    const blocks = parse(text);
    const runner = new Runner();
    const actual = blocks.map((b) => ({ command: b.command, expected: runner.run(b.command) }));
    if (Deno.env.get("UPDATE_TESTDATA")) {
      Deno.writeTextFileSync(url, render(actual, comments));
      return;
    }
    for (let i = 0; i < blocks.length; i++) {
      assert.deepEqual(
        actual[i].expected,
        blocks[i].expected,
        `${entry.name}: after "${blocks[i].command}"`,
      );
    }
  });
}

Deno.test("Dispatch never hands out more slots than a worker has, in random schedules", () => {
  let seed = 11;
  const random = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  let clock = 0;
  const d = new Dispatch({
    now: () => clock,
    retries: 2,
    slotWaitMs: 500,
    setAsideMs: 300,
    waitersMax: 20,
    localFallback: true,
  });
  const slots = new Map([["a", 2], ["b", 3], ["c", 1]]);
  const running = new Map<number, string>();
  const ended = new Set<number>();
  let next = 1;
  const take = (effects: Effect[]) => {
    for (const e of effects) {
      if (e.kind === "run") {
        assert.ok(!running.has(e.job), `job ${e.job} placed twice`);
        running.set(e.job, e.worker);
        const busy = [...running.values()].filter((w) => w === e.worker).length;
        assert.ok(busy <= slots.get(e.worker)!, `${e.worker} has ${busy} jobs`);
      } else if (e.kind === "local" || e.kind === "fail") {
        assert.ok(!ended.has(e.job));
        ended.add(e.job);
      }
    }
  };
  for (const [id, n] of slots) take(d.up(id, n));
  for (let step = 0; step < 5_000; step++) {
    const r = random();
    clock += Math.floor(random() * 50);
    if (r < 0.4) take(d.submit(next++));
    else if (r < 0.8 && running.size > 0) {
      const jobs = [...running.keys()];
      const job = jobs[Math.floor(random() * jobs.length)];
      const worker = running.get(job)!;
      running.delete(job);
      const ok = random() < 0.7;
      if (ok) ended.add(job);
      take(d.ended(
        job,
        worker,
        ok ? { kind: "ok" } : {
          kind: "failed",
          why: "x",
          workerFault: random() < 0.5,
          transient: random() < 0.2,
          committed: false,
        },
      ));
    } else if (r < 0.85) {
      const id = [...slots.keys()][Math.floor(random() * slots.size)];
      if (d.mayConnect(id) && !d.workers.some((w) => w.id === id)) take(d.up(id, slots.get(id)!));
    } else take(d.tick());
  }
  // Every job submitted either ended, runs, or waits.
  assert.equal(ended.size + running.size + d.waiting, next - 1);
});
