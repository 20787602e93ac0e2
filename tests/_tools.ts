/**
 * Test-only tools installed by `scripts/bootstrap.sh --test` (what
 * `./scripts/test` runs): promtool and Debian's chromium. A missing tool
 * fails the test that needs it, with the command that installs it.
 */
import { ROOT } from "../farm/mod.ts";

function onPath(name: string): string | undefined {
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    if (dir === "") continue;
    try {
      if (Deno.statSync(`${dir}/${name}`).isFile) return `${dir}/${name}`;
    } catch {
      // Not there.
    }
  }
  return undefined;
}

function need(name: string, found: string | undefined): string {
  if (found !== undefined) return found;
  throw new Error(`${name} is missing: run \`bash scripts/bootstrap.sh --test\` (as root)`);
}

/** promtool: on PATH, else unpacked by bootstrap into .cache/tools/bin. */
export function promtoolPath(): string {
  const cached = `${ROOT}/.cache/tools/bin/promtool`;
  let inCache: string | undefined;
  try {
    if (Deno.statSync(cached).isFile) inCache = cached;
  } catch {
    // Not there.
  }
  return need("promtool", onPath("promtool") ?? inCache);
}

/** Debian's chromium. */
export function chromiumPath(): string {
  return need("chromium", onPath("chromium"));
}

/** Runs promtool check metrics on `text`; resolves with its exit code and output. */
export async function promtoolCheck(text: string): Promise<{ code: number; output: string }> {
  const child = new Deno.Command(promtoolPath(), {
    args: ["check", "metrics"],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(text));
  await writer.close();
  const out = await child.output();
  const dec = new TextDecoder();
  return { code: out.code, output: dec.decode(out.stdout) + dec.decode(out.stderr) };
}
