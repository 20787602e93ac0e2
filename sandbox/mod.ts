/**
 * The job sandbox of a worker: runs a command chrooted into a view of the
 * master's file system, as nobody, with the master's writable root writable
 * through a per-job overlay, and turns what the job changed into a
 * {@linkcode ResultSet}.
 *
 * The rooms: `job.ts` runs a job (runJob: the launcher's argv, supervising
 * it, clean-up); `job_spec.ts` what a job is (spec, options, outcome,
 * limits, the one validation); `job_status.ts` the launcher's status turned
 * into the outcome; `job_io.ts` the job's pipes; `job_cgroup.ts` its pids
 * cgroup; `launcher.ts`/`launcher.c` the C launcher (namespaces, overlay,
 * chroot, limits, seccomp); `netns_pool.ts` the network namespaces jobs
 * reuse; `result_set.ts` the upper layer walked into a
 * result set; `cgroup_tuning.ts` the favordynmods hierarchy.
 *
 * @module
 */
export type { ResultFile, ResultSet } from "../common/types.ts";
export { SandboxError } from "./errors.ts";
export {
  buildPrebuiltLauncher,
  ensureLauncher,
  type EnsureLauncherOptions,
  LAUNCHER_CFLAGS,
  LAUNCHER_CFLAGS_DYNAMIC,
  launcherSourceHash,
  PREBUILT_DIR_URL,
  PREBUILT_NAME,
  type PrebuiltManifest,
} from "./launcher.ts";
export {
  DYNMODS_HIERARCHY,
  type DynmodsMount,
  favorCgroupMigrations,
  isDynmodsMount,
} from "./cgroup_tuning.ts";
export { removeTree, runJob } from "./job.ts";
export {
  DRAIN_GRACE_MS,
  FILES_MAX_DEFAULT,
  type JobOutcome,
  type JobSpec,
  KILL_GRACE_MS,
  OUTPUT_BYTES_MAX,
  PROCESSES_MAX_DEFAULT,
  RESULT_BYTES_MAX_DEFAULT,
  type RunJobOptions,
  type SandboxOptions,
  TMP_BYTES_MAX_DEFAULT,
} from "./job_spec.ts";
export { NETNS_POOL_MAX, NetnsPool, type NetnsPoolOptions } from "./netns_pool.ts";
export { PIDS_CGROUP_ROOT, removeStaleCgroups } from "./job_cgroup.ts";
export { type CollectOptions, collectResultSet, RESULT_ENTRIES_MAX } from "./result_set.ts";
export { XattrReader } from "./_xattr.ts";
