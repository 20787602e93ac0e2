/**
 * A checkout of another revision of this repository for side-by-side
 * benchmarks (`master_ab.ts`, `launcher_ab.ts`).
 *
 * @module
 */
import { ROOT } from "../farm/mod.ts";

/** A directory holding the code of `rev` (`.`: this checkout), with its dependencies. */
export async function checkout(rev: string): Promise<string> {
  if (rev === ".") return ROOT;
  const out = await new Deno.Command("git", {
    args: ["rev-parse", "--short", `${rev}^{commit}`],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) {
    throw new Error(`Cannot resolve ${rev}: ${new TextDecoder().decode(out.stderr)}`);
  }
  const commit = new TextDecoder().decode(out.stdout).trim();
  const dir = `${ROOT}/.cache/ab/${commit}`;
  if (await Deno.stat(`${dir}/master.ts`).then(() => true, () => false)) return dir;
  await Deno.mkdir(dir, { recursive: true });
  const archive = await new Deno.Command("sh", {
    args: ["-c", `git archive ${commit} | tar -x -C "$0"`, dir],
    cwd: ROOT,
  }).output();
  if (!archive.success) throw new Error(`Cannot check out ${commit} into ${dir}`);
  await Deno.symlink(`${ROOT}/node_modules`, `${dir}/node_modules`);
  await Deno.mkdir(`${dir}/.cache`, { recursive: true });
  // The unpacked sources (fetched once, by path).
  await new Deno.Command("cp", { args: ["-a", `${ROOT}/.cache/src`, `${dir}/.cache/src`] })
    .output();
  return dir;
}
