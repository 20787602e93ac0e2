/**
 * The worker role: {@link startWorker} serves masters over RPC; per master a
 * FUSE mirror of its file system ({@link MirrorFs}, one file per concern:
 * `mirror_cache.ts`, `mirror_fetch.ts`, `mirror_updates.ts`,
 * `mirror_blobs.ts`, `mirror_prefetch.ts`, `mirror_readdir.ts`), mounted and
 * dropped by `mirrors.ts`; per job a sandbox over it (`job_run.ts`), whose
 * results go back in parts when large (`result_parts.ts`); job slots shared
 * fairly between masters, taken per job (`slots.ts`).
 *
 * @module
 */

export { startWorker, Worker, type WorkerOptions } from "./worker.ts";
export { type Mirror, Mirrors, MIRRORS_MAX_DEFAULT, type MirrorsOptions } from "./mirrors.ts";
export { type MasterLink, rpcMasterLink } from "./master_link.ts";
export { MirrorClosedError, MirrorFs } from "./mirror_fs.ts";
export { type MirrorOptions, type MirrorStats, MOUNT_POINTS_DEFAULT } from "./mirror_options.ts";
export { JOB_GID, JOB_UID } from "./mirror_cache.ts";
export { sendResultParts } from "./result_parts.ts";
export { FairSlots, type FairSlotsOptions, SlotsFullError } from "./slots.ts";
