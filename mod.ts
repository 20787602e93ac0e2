/**
 * Termite for Deno: a distributed compilation system. Each role is a
 * `startX(options)` function returning something to `await using`.
 *
 * @module
 */
export { startCoordinator } from "./coordinator/mod.ts";
export { startMaster } from "./master/mod.ts";
export { startWorker } from "./worker/worker.ts";
export { runWrapper } from "./wrapper/client.ts";
export { loadSecret } from "./rpc/mod.ts";
export type { FileAttr, ResultSet } from "./common/types.ts";
