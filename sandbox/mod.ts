/**
 * The job sandbox of a worker: runs a command chrooted into a view of the
 * master's file system, as nobody, with the master's writable root writable
 * through a per-job overlay, and turns what the job changed into a
 * {@linkcode ResultSet}.
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
export {
  DRAIN_GRACE_MS,
  FILES_MAX_DEFAULT,
  type JobOutcome,
  type JobSpec,
  KILL_GRACE_MS,
  OUTPUT_BYTES_MAX,
  PIDS_CGROUP_ROOT,
  PROCESSES_MAX_DEFAULT,
  removeStaleCgroups,
  removeTree,
  RESULT_BYTES_MAX_DEFAULT,
  runJob,
  type RunJobOptions,
  type SandboxOptions,
  TMP_BYTES_MAX_DEFAULT,
} from "./job.ts";
export { type CollectOptions, collectResultSet, RESULT_ENTRIES_MAX } from "./result_set.ts";
