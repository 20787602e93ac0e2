/**
 * termite monitor: the farm or a build in the terminal, every second (like
 * distccmon-text), from a coordinator's or a master's status page.
 *
 *   deno run -A monitor.ts [--url http://127.0.0.1:1231/] [--interval 1s] [--count N]
 *     [--tls-ca FILE]   (for an https:// page: the farm's CA)
 */
import {
  die,
  type FlagSpecs,
  loadPageClient,
  pageCaFlagSpecs,
  parseRoleFlags,
} from "./common/cli.ts";
import { statusLines } from "./common/monitor_text.ts";

const FLAGS: FlagSpecs = {
  url: {
    type: "string",
    value: "URL",
    default: "http://127.0.0.1:1231/",
    help: "a status page: the coordinator's (--http-port) or a master's (--status-port)",
  },
  interval: { type: "string", value: "DURATION", default: "1s", help: "time between views" },
  count: { type: "string", value: "N", default: "0", help: "views to print; 0 = until ^C" },
  ...pageCaFlagSpecs(),
};

const flags = parseRoleFlags("monitor", Deno.args, {
  usage: "deno run -A monitor.ts [flags]",
  about: "Prints the farm (from the coordinator) or a build (from its master) every interval.",
  flags: FLAGS,
});
let url: URL;
let intervalMs: number;
let count: number;
let client: Deno.HttpClient | undefined;
try {
  const text = flags.string("url")!;
  if (!URL.canParse(text) || !/^https?:$/.test(new URL(text).protocol)) {
    throw new Error(
      `Bad --url ${JSON.stringify(text)}: want an http:// or https:// URL of a status page`,
    );
  }
  url = new URL("status.json", text.replace(/\/?$/, "/"));
  intervalMs = flags.durationMs("interval")!;
  count = flags.integer("count", { min: 0, max: 1e9 })!;
  client = await loadPageClient(flags);
} catch (error) {
  die(`termite monitor: ${(error as Error).message}`);
}
const encoder = new TextEncoder();
for (let i = 0; count === 0 || i < count; i++) {
  if (i > 0) await new Promise((resolve) => setTimeout(resolve, intervalMs));
  let lines: string[];
  try {
    const response = await fetch(url, { client, signal: AbortSignal.timeout(5000) });
    if (!response.ok) {
      await response.body?.cancel();
      throw new Error(`HTTP ${response.status}`);
    }
    lines = statusLines(await response.json());
  } catch (error) {
    lines = [`termite monitor: cannot read ${url}: ${(error as Error).message}`];
  }
  await Deno.stdout.write(encoder.encode(lines.join("\n") + "\n\n"));
}
