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
import { errorMessage } from "../common/errors.ts";
import { type LoadElasticMake, main } from "./main.ts";

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

/**
 * termite-make's module, read from the checkout this file sits in
 * (`bin/termite-wrap` → `wrapper/elastic_make.ts`; run unbundled,
 * `wrapper/shim.ts` → the same): left out of the bundle, whose every start
 * parses it (a third of the file and its lazy-module wrappers, ~0.25 ms per
 * compile) for one command per build. The specifier is built at run time so
 * that `deno bundle` does not follow it.
 */
async function loadElasticMake(): ReturnType<LoadElasticMake> {
  let file = `wrapper/elastic_make.ts beside ${self}`;
  try {
    const real = Deno.realPathSync(self);
    const checkout = real.slice(0, real.lastIndexOf("/", real.lastIndexOf("/") - 1));
    file = `${checkout}/wrapper/elastic_make.ts`;
    return await import(`file://${file.split("/").map(encodeURIComponent).join("/")}`);
  } catch (e) {
    console.error(
      `termite-make: cannot load ${file} (it runs from the checkout): ${errorMessage(e)}`,
    );
    Deno.exit(255);
  }
}

Deno.exit(
  await main(["--as", link.slice(slash + 1), ...Deno.args], {
    wrapperDir: link.slice(0, slash),
    loadElasticMake,
  }),
);
