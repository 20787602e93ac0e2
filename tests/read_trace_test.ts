/**
 * worker/read_trace.ts with a real bpftrace: the kernel-side filter that
 * prints a job's repeated lookups once loses nothing the read set needs.
 * Needs root, tracefs and BTF (as a worker with --record-reads does).
 */
import assert from "node:assert/strict";
import { LINE_BYTES_MAX, ReadTracer } from "../worker/read_trace.ts";
import { FLUSH_PADDING, TRACE_STDOUT_BUFFER_MAX } from "../worker/read_trace_script.ts";
import { createPidsCgroup, removeCgroup } from "../sandbox/job_cgroup.ts";
import type { ReadSet } from "../common/protocol.ts";

/** Where the test puts a job the tracer must not see. */
const OTHER_ROOT = "/sys/fs/cgroup/pids/termite-read-trace-test";

/**
 * Runs `script` (sh) as nobody in a pids cgroup of its own (under the
 * tracer's root, or `root`), recorded by `tracer`, from `cwd`.
 */
async function recorded(
  tracer: ReadTracer,
  cwd: string,
  script: string,
  root: string = tracer.cgroupRoot,
): Promise<ReadSet> {
  const recording = tracer.begin(cwd);
  assert.ok(recording, "the tracer is ready");
  const cg = createPidsCgroup(root, 100);
  assert.ok(cg, "a pids cgroup");
  let code = -1, stderr = "";
  try {
    await tracer.attach(recording, cg);
    // `env -C` makes the chdir to the cwd the job's first traced call, as the launcher's is.
    const out = await new Deno.Command("sh", {
      args: [
        "-c",
        `echo $$ > ${cg}/cgroup.procs && exec setpriv --reuid=65534 --regid=65534 ` +
        `--clear-groups -- env -C "$1" sh -c "$2"`,
        "sh",
        cwd,
        script,
      ],
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).output();
    code = out.code;
    stderr = new TextDecoder().decode(out.stderr);
  } finally {
    await removeCgroup(cg);
  }
  const reads = await tracer.end(recording);
  assert.equal(code, 0, stderr);
  return reads;
}

/** The entries under `cwd` as "path kinds". */
function under(reads: ReadSet, cwd: string): string[] {
  assert.ok(reads.complete, reads.complete ? "" : reads.why);
  return reads.entries.filter(([p]) => p.startsWith(cwd)).map(([p, k]) => `${p} ${k.join("")}`);
}

Deno.test({
  name:
    "ReadTracer: a job's read set is the same with repeated lookups printed once (dedup) and all " +
    "printed, with bpftrace's output buffered or a line at a time",
  sanitizeResources: true,
  sanitizeOps: true,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "termite-read-trace-" });
    await Deno.chmod(dir, 0o755);
    try {
      await Deno.mkdir(`${dir}/d`);
      await Deno.chmod(`${dir}/d`, 0o755);
      await Deno.writeTextFile(`${dir}/x`, "top\n");
      await Deno.writeTextFile(`${dir}/d/x`, "inner\n");
      await Deno.symlink("d", `${dir}/l`);
      // The same relative name before and after a chdir is two paths; an
      // absolute one looked up again and again is one; a readlink and a stat
      // of the same path note different things (`l`, `s`).
      const script = "for i in 1 2 3; do readlink x; readlink l; stat -L l; done; " +
        `realpath ${dir}/d/x ${dir}/d/x; cd d; readlink x; stat -L x; ` +
        `readlink ${dir}/l; stat -L ${dir}/l; readlink ${dir}/l; readlink ../l; ` +
        `cd ..; readlink y; cd d; readlink y; true`;
      const sets: string[][] = [];
      const events: number[] = [];
      for (
        const { dedup, lineBuffered } of [
          { dedup: false, lineBuffered: false },
          { dedup: true, lineBuffered: false },
          { dedup: true, lineBuffered: true },
        ]
      ) {
        const tracer = new ReadTracer({
          cacheDir: `${dir}/tracer`,
          log: () => {},
          dedup,
          lineBuffered,
        });
        try {
          await tracer.start();
          sets.push(under(await recorded(tracer, dir, script), dir));
          // A second job: its events are flushed by its own markers, none left behind.
          const before = tracer.stats.events;
          sets.push(under(await recorded(tracer, dir, script), dir));
          if (dedup) events.push(tracer.stats.events - before);
          if (dedup && !lineBuffered) {
            // Only jobs under the tracer's own cgroup directory are traced, in the kernel.
            const before = { ...tracer.stats };
            const outside = await recorded(tracer, dir, script, OTHER_ROOT);
            assert.deepEqual(outside, {
              complete: false,
              why: `the job's cgroup is not under ${tracer.cgroupRoot}`,
            });
            assert.equal(tracer.stats.events, before.events, "no event of a job outside");
          }
        } finally {
          await tracer.close();
        }
      }
      for (const set of sets.slice(1)) assert.deepEqual(set, sets[0]);
      assert.equal(events[0], events[1], "as many events buffered as a line at a time");
      const entries = Object.fromEntries(sets[1].map((e) => e.split(" ")));
      assert.equal(entries[`${dir}/x`], "l");
      assert.equal(entries[`${dir}/d/x`], "ls");
      assert.equal(entries[`${dir}/l`], "ls");
      assert.equal(entries[`${dir}/d`], "ls");
      assert.equal(entries[`${dir}/d/../l`], "l");
      // The same relative name from two directories: two paths, each recorded.
      assert.equal(entries[`${dir}/y`], "l");
      assert.equal(entries[`${dir}/d/y`], "l");
    } finally {
      await Deno.remove(dir, { recursive: true });
      await Deno.remove(OTHER_ROOT).catch(() => {});
    }
  },
});

Deno.test("ReadTracer: the padding that flushes bpftrace's buffer outgrows it, in lines the reader takes", () => {
  // In the program `\\n` is printf's newline: what bpftrace prints is these lines.
  const lines = FLUSH_PADDING.split("\\n");
  assert.equal(lines.pop(), "", "ends with a newline");
  for (const line of lines) {
    assert.match(line, /^#+$/, "the reader drops it");
    assert.ok(line.length < LINE_BYTES_MAX, `a line of ${line.length} characters`);
  }
  const printed = lines.reduce((n, line) => n + line.length + 1, 0);
  assert.ok(printed > TRACE_STDOUT_BUFFER_MAX, `${printed} bytes`);
});
