/**
 * The entry of `bin/termite-wrap`, the shim symlinked under a tool's name
 * (gcc, g++, cc, ar, ...) or as termite-sh for make's SHELL: it runs the
 * wrapper as that tool. Bundled with everything it imports into that one
 * plain JavaScript file (`deno task bundle-wrapper`): Deno then loads one
 * module and transpiles nothing per command (a module graph of five
 * TypeScript files cost ~0.6 ms of CPU per start; one start is 20 ms here).
 *
 * @module
 */
import { main } from "./main.ts";

// Strings, not URL objects: the first URL a Deno process builds costs ~0.7 ms.
const self = decodeURIComponent(import.meta.url.slice("file://".length)); // as run: ~/bin/gcc
let link = self;
// The native client (bin/termite-client, opt-in) execs this file for what it
// leaves to Deno, naming the link it was run as; no job sees the variable.
// Only then is the environment read here (its first read costs ~0.5 ms, which
// a builtin shell line never pays otherwise).
if (self.endsWith("/termite-wrap")) {
  const native = Deno.env.get("TERMITE_WRAP_LINK");
  if (native !== undefined) {
    Deno.env.delete("TERMITE_WRAP_LINK");
    if (native.startsWith("/")) link = native;
  }
}
const slash = link.lastIndexOf("/");
Deno.exit(await main(["--as", link.slice(slash + 1), ...Deno.args], link.slice(0, slash)));
