/**
 * termite wrapper: symlinked under a tool's name (gcc, g++, cc, ar, ...), or
 * used as make's SHELL. Usage:
 *
 *   wrapper.ts --as NAME [ARGS...]     run tool NAME through the master
 *   wrapper.ts --as sh -c SCRIPT       shell-wrapper mode
 *   wrapper.ts --as termite CMD ...    a compiler launcher (CMake, like ccache)
 *
 * The `bin/termite-wrap` shim (symlinked as the tool) is this program bundled
 * into one plain JavaScript file (`deno task bundle-wrapper`, from
 * `wrapper/shim.ts`): it calls {@linkcode main} with the name and directory of
 * the link. A binary made with `deno compile` and symlinked as the tool takes
 * the name it was run as.
 */
import { main } from "./wrapper/main.ts";

export { main };

if (import.meta.main) {
  Deno.exit(await main(Deno.args, { loadElasticMake: () => import("./wrapper/elastic_make.ts") }));
}
