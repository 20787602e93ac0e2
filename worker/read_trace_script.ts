/**
 * The bpftrace program that records what jobs look at: every path-taking
 * system call of a job's processes (uid `nobody` in a per-job pids cgroup),
 * printed as one line per event for {@linkcode parseTraceLine}.
 *
 * A line: `E <cgroup id> <ns> <tgid> <kind> <ret> <a1> <a2> <path>`, ns the
 * monotonic time (per-CPU buffers are read in any order: events are sorted); the path is
 * printed with `%r` (non-printable bytes as `\xNN`, so no path can forge a
 * line) from a fixed buffer of {@linkcode TRACE_PATH_BYTES}: a path without
 * its NUL in there is too long to record (the recording is then incomplete).
 * Kinds (see {@linkcode TraceKind}): `o` open (a1 dirfd, a2 flags), `x` exec,
 * `s` stat or access (a2 flags), `l` readlink, `r` a call whose result
 * depends on the file's content (rename's source, chmod: the overlay copies
 * the file up), `w` a call that makes or removes a name, `c` chdir, `C`
 * fchdir (a1 fd), `g` getdents (a1 fd), `f` a new descriptor we cannot
 * name (dup, fcntl F_DUPFD: ret), `X` a call we cannot follow (openat2,
 * name_to_handle_at, pidfd_getfd: the recording is incomplete), `F` a fork
 * (a1 the child). `M <path>` lines are the worker's own markers.
 *
 * @module
 */

/** Bytes of a path read per event (bpftrace's stack limits a buffer to about this). */
export const TRACE_PATH_BYTES = 200;
/** Offset of `id` in the kernel's struct kernfs_node (Linux 6.x, x86_64). */
export const KERNFS_NODE_ID_OFFSET = 96;
/** Offset of its parent pointer (`parent`, `__parent` since 6.15: read by offset). */
export const KERNFS_NODE_PARENT_OFFSET = 8;
/** The directory whose lookups, by the worker itself, are markers. */
export const TRACE_MARK_DIR = "/.termite-trace-mark";

/** One traced call: its name, kind, and which arguments hold the path, dirfd, flags. */
interface Call {
  name: string;
  kind: string;
  path?: string;
  dfd?: string;
  flags?: string;
  /** Printed at exit with the return value (else at entry, ret 0). */
  exit?: boolean;
  /** A constant for a2 when the call has no flags argument. */
  flagsConst?: number;
}

const AT_SYMLINK_NOFOLLOW = 0x100;
const O_CREAT_WRONLY_TRUNC = 0o1101;

const CALLS: Call[] = [
  { name: "openat", kind: "o", path: "filename", dfd: "dfd", flags: "flags", exit: true },
  { name: "open", kind: "o", path: "filename", flags: "flags", exit: true },
  { name: "creat", kind: "o", path: "pathname", flagsConst: O_CREAT_WRONLY_TRUNC, exit: true },
  { name: "execve", kind: "x", path: "filename" },
  { name: "execveat", kind: "x", path: "filename", dfd: "fd", flags: "flags" },
  { name: "newfstatat", kind: "s", path: "filename", dfd: "dfd", flags: "flag" },
  { name: "statx", kind: "s", path: "filename", dfd: "dfd", flags: "flags" },
  { name: "newstat", kind: "s", path: "filename" },
  { name: "newlstat", kind: "s", path: "filename", flagsConst: AT_SYMLINK_NOFOLLOW },
  { name: "access", kind: "s", path: "filename" },
  { name: "faccessat", kind: "s", path: "filename", dfd: "dfd" },
  { name: "faccessat2", kind: "s", path: "filename", dfd: "dfd", flags: "flags" },
  { name: "statfs", kind: "s", path: "pathname" },
  { name: "readlink", kind: "l", path: "path" },
  { name: "readlinkat", kind: "l", path: "pathname", dfd: "dfd" },
  { name: "chdir", kind: "c", path: "filename", exit: true },
  { name: "fchdir", kind: "C", dfd: "fd", exit: true },
  { name: "getdents", kind: "g", dfd: "fd" },
  { name: "getdents64", kind: "g", dfd: "fd" },
  // Names made or removed: their effect is in the result set; a failure
  // depends on what was there.
  { name: "mkdir", kind: "w", path: "pathname", exit: true },
  { name: "mkdirat", kind: "w", path: "pathname", dfd: "dfd", exit: true },
  { name: "unlink", kind: "w", path: "pathname", exit: true },
  { name: "unlinkat", kind: "w", path: "pathname", dfd: "dfd", exit: true },
  { name: "rmdir", kind: "w", path: "pathname", exit: true },
  { name: "symlink", kind: "w", path: "newname", exit: true },
  { name: "symlinkat", kind: "w", path: "newname", dfd: "newdfd", exit: true },
  { name: "mknod", kind: "w", path: "filename", exit: true },
  { name: "mknodat", kind: "w", path: "filename", dfd: "dfd", exit: true },
  { name: "rename", kind: "w", path: "newname", exit: true },
  { name: "renameat", kind: "w", path: "newname", dfd: "newdfd", exit: true },
  { name: "renameat2", kind: "w", path: "newname", dfd: "newdfd", exit: true },
  { name: "link", kind: "w", path: "newname", exit: true },
  { name: "linkat", kind: "w", path: "newname", dfd: "newdfd", exit: true },
  // Sources and attribute changes: the result holds the file's content.
  { name: "rename", kind: "r", path: "oldname" },
  { name: "renameat", kind: "r", path: "oldname", dfd: "olddfd" },
  { name: "renameat2", kind: "r", path: "oldname", dfd: "olddfd" },
  { name: "link", kind: "r", path: "oldname" },
  { name: "linkat", kind: "r", path: "oldname", dfd: "olddfd" },
  { name: "chmod", kind: "r", path: "filename" },
  { name: "fchmodat", kind: "r", path: "filename", dfd: "dfd" },
  { name: "fchmodat2", kind: "r", path: "filename", dfd: "dfd" },
  { name: "chown", kind: "r", path: "filename" },
  { name: "lchown", kind: "r", path: "filename" },
  { name: "fchownat", kind: "r", path: "filename", dfd: "dfd" },
  { name: "truncate", kind: "r", path: "path" },
  { name: "utime", kind: "r", path: "filename" },
  { name: "utimes", kind: "r", path: "filename" },
  { name: "utimensat", kind: "r", path: "filename", dfd: "dfd" },
  { name: "futimesat", kind: "r", path: "filename", dfd: "dfd" },
  { name: "setxattr", kind: "r", path: "pathname" },
  { name: "lsetxattr", kind: "r", path: "pathname" },
  { name: "getxattr", kind: "r", path: "pathname" },
  { name: "lgetxattr", kind: "r", path: "pathname" },
  { name: "listxattr", kind: "r", path: "pathname" },
  { name: "llistxattr", kind: "r", path: "pathname" },
  { name: "removexattr", kind: "r", path: "pathname" },
  { name: "lremovexattr", kind: "r", path: "pathname" },
  { name: "setxattrat", kind: "r", path: "pathname", dfd: "dfd" },
  { name: "getxattrat", kind: "r", path: "pathname", dfd: "dfd" },
  { name: "listxattrat", kind: "r", path: "pathname", dfd: "dfd" },
  { name: "removexattrat", kind: "r", path: "pathname", dfd: "dfd" },
  { name: "file_getattr", kind: "r", path: "filename", dfd: "dfd" },
  { name: "file_setattr", kind: "r", path: "filename", dfd: "dfd" },
  // Descriptors we cannot name, calls we cannot follow.
  { name: "dup", kind: "f", dfd: "fildes", exit: true },
  { name: "dup2", kind: "f", dfd: "oldfd", exit: true },
  { name: "dup3", kind: "f", dfd: "oldfd", exit: true },
  { name: "openat2", kind: "X" },
  { name: "name_to_handle_at", kind: "X" },
  { name: "open_by_handle_at", kind: "X" },
  { name: "pidfd_getfd", kind: "X" },
  { name: "open_tree", kind: "X" },
];

/**
 * Kinds printed at entry whose repeats add nothing to the read set: a job's
 * second readlink or stat of the same absolute path notes what the first did
 * (gcc's realpath() readlinks every prefix of every include directory).
 */
const DEDUP_KINDS = new Set(["s", "l"]);
/** Lookups remembered before the set is cleared (bpftrace's map holds 4,096 keys). */
export const TRACE_DEDUP_KEYS_MAX = 3_500;

/**
 * The body of an entry probe that prints a lookup once per job, path and
 * what it notes (`l`: a readlink or a lookup that does not follow a last
 * symlink; `s`: one that does). Relative paths are always printed (they
 * depend on the cwd or a dirfd); so is everything once the set is full,
 * and after it is cleared: a forgotten lookup is printed again, never lost.
 */
function dedupPrint(c: Call, cg: string, a1: string, a2: string, end: string): string {
  // One map per note (a key holding the path is most of the 512-byte stack).
  const once = (map: string) =>
    `  if (${map}[$cg, str(args->${c.path})] == 0) {\n` +
    `    if (strncmp(str(args->${c.path}, 2), "/", 1) == 0) {\n` +
    `      ${map}[$cg, str(args->${c.path})] = 1;\n` +
    `      @seenKeys = @seenKeys + 1;\n` +
    `      if (@seenKeys > ${TRACE_DEDUP_KEYS_MAX}) { clear(@seenl); clear(@seens); @seenKeys = 0; }\n` +
    `    }\n` +
    `    printf("E %llu %llu %d ${c.kind} 0 %lld %lld %s${end}\\n", $cg, nsecs, pid, ${a1}, ${a2}, ` +
    `str(args->${c.path}));\n` +
    `  }\n`;
  const body = c.kind === "l"
    ? once("@seenl")
    : `  if ((${a2} & ${AT_SYMLINK_NOFOLLOW}) != 0) {\n${once("@seenl")}  } else {\n${
      once("@seens")
    }  }\n`;
  return `  $cg = ${cg};\n${body}`;
}

/** Calls that read a descriptor, and the argument naming it. */
const STDIN_READS: [string, string][] = [
  ["read", "fd"],
  ["readv", "fd"],
  ["pread64", "fd"],
  ["preadv", "fd"],
  ["preadv2", "fd"],
  ["splice", "fd_in"],
  ["sendfile64", "in_fd"],
  ["copy_file_range", "fd_in"],
  ["tee", "fdin"],
  ["recvfrom", "fd"],
  ["recvmsg", "fd"],
  ["mmap", "fd"],
];

/** Bytes bpftrace's stdout buffer may hold: glibc's is the pipe's block, 4 KiB; BUFSIZ is 8 KiB. */
export const TRACE_STDOUT_BUFFER_MAX = 8192;
/** Characters in a line of {@link FLUSH_PADDING}: below the reader's limit for one line. */
export const FLUSH_PADDING_LINE_CHARS = 2800;
/**
 * What follows a line the worker waits for (READY, a marker) when bpftrace's
 * output is fully buffered (`-B full`): lines of `#`, more bytes than its
 * stdout buffer holds, so that what stays buffered after its printf returns
 * is a part of them, and everything before has been written out. The reader
 * drops them. (In the program: `\\n` is printf's newline.)
 */
export const FLUSH_PADDING = ("#".repeat(FLUSH_PADDING_LINE_CHARS) + "\\n").repeat(
  Math.ceil((TRACE_STDOUT_BUFFER_MAX + 1) / (FLUSH_PADDING_LINE_CHARS + 1)),
);

/**
 * The program for bpftrace: `pidsIndex` is the pids controller's index in
 * the task's css_set (its line in /proc/cgroups), `uid` the jobs' uid,
 * `workerPid` the worker (whose lookups under TRACE_MARK_DIR are markers).
 */
export function traceScript(
  options: {
    pidsIndex: number;
    uid: number;
    workerPid: number;
    token: string;
    /** Print a job's repeated lookups of an absolute path once (default true). */
    dedup?: boolean;
    /**
     * The kernfs id (inode number) of the pids cgroup directory under which
     * the jobs to record get their cgroups: others' processes (jobs not
     * recorded, other workers' jobs) are not traced. Absent: every process of `uid`.
     */
    parentCgroupId?: number;
    /**
     * bpftrace's output is fully buffered (`-B full`): the lines the worker
     * waits for are followed by {@link FLUSH_PADDING}. Default false.
     */
    fullyBuffered?: boolean;
  },
): string {
  const { pidsIndex, uid, workerPid, token, parentCgroupId } = options;
  const dedup = options.dedup ?? true;
  if (!/^[0-9a-f]{16,64}$/.test(token)) throw new Error("Bad trace token");
  // Ends every line: a path with a newline in it cannot fake one.
  const end = ` |${token}`;
  if (![pidsIndex, uid, workerPid].every((n) => Number.isInteger(n) && n >= 0)) {
    throw new Error(`Bad trace script options: ${JSON.stringify(options)}`);
  }
  if (
    parentCgroupId !== undefined && !(Number.isSafeInteger(parentCgroupId) && parentCgroupId > 0)
  ) {
    throw new Error(`Bad trace script options: ${JSON.stringify(options)}`);
  }
  // The cgroup's kernfs id (its directory's inode number), read at its
  // offset in struct kernfs_node: bpftrace 0.17 cannot name fields after an
  // anonymous union. A wrong offset matches no job: every recording is then
  // empty, and an empty recording is incomplete.
  const cg = `*(uint64*)((uint64)curtask->cgroups->subsys[${pidsIndex}]->cgroup->kn + ` +
    `${KERNFS_NODE_ID_OFFSET})`;
  // The parent directory's id, read the same way; a wrong offset matches no job either.
  const parent =
    `*(uint64*)(*(uint64*)((uint64)curtask->cgroups->subsys[${pidsIndex}]->cgroup->kn + ` +
    `${KERNFS_NODE_PARENT_OFFSET}) + ${KERNFS_NODE_ID_OFFSET})`;
  const filter = parentCgroupId === undefined
    ? `uid == ${uid}`
    : `uid == ${uid} && ${parent} == ${parentCgroupId}`;
  // Every event line waits in bpftrace's buffer for the next marker (or a
  // full buffer): one write per 4 KiB instead of one per line.
  const flush = options.fullyBuffered ? FLUSH_PADDING : "";
  const out: string[] = [`BEGIN { printf("READY\\n${flush}"); }`];
  // At exit bpftrace prints every map left: the remembered lookups are not output.
  if (dedup) out.push(`END { clear(@seenl); clear(@seens); clear(@seenKeys); }`);
  const seen = new Set<string>();
  for (const c of CALLS) {
    const a1 = c.dfd ? `(int64)args->${c.dfd}` : "-100";
    const a2 = c.flags ? `(int64)args->${c.flags}` : String(c.flagsConst ?? 0);
    const path = c.path ? `str(args->${c.path})` : `""`;
    if (!c.exit) {
      const body = dedup && DEDUP_KINDS.has(c.kind) && c.path
        ? dedupPrint(c, cg, a1, a2, end)
        : `  printf("E %llu %llu %d ${c.kind} 0 %lld %lld %s${end}\\n", ${cg}, nsecs, pid, ${a1}, ${a2}, ${path});\n`;
      out.push(`tracepoint:syscalls:sys_enter_${c.name} /${filter}/ {\n${body}}`);
      continue;
    }
    // Entry saves the arguments (per thread), exit prints them with the result.
    const key = c.name;
    if (seen.has(key)) throw new Error(`Two exit probes for ${key}`);
    seen.add(key);
    const id = out.length;
    out.push(
      `tracepoint:syscalls:sys_enter_${c.name} /${filter}/ {\n` +
        `  @p${id}[tid] = ${c.path ? `args->${c.path}` : "0"}; @a${id}[tid] = ${a1};` +
        ` @b${id}[tid] = ${a2}; @s${id}[tid] = 1;\n}`,
      `tracepoint:syscalls:sys_exit_${c.name} /@s${id}[tid]/ {\n` +
        `  printf("E %llu %llu %d ${c.kind} %lld %lld %lld %s${end}\\n", ${cg}, nsecs, pid, (int64)args->ret, ` +
        `@a${id}[tid], @b${id}[tid], ${c.path ? `str(@p${id}[tid])` : path});\n` +
        `  delete(@p${id}[tid]); delete(@a${id}[tid]); delete(@b${id}[tid]); delete(@s${id}[tid]);\n}`,
    );
  }
  // fcntl: only the duplicating commands (F_DUPFD 0, F_DUPFD_CLOEXEC 1030).
  out.push(
    `tracepoint:syscalls:sys_enter_fcntl /${filter} && (args->cmd == 0 || args->cmd == 1030)/ {\n` +
      `  @fd[tid] = args->fd + 1;\n}`,
    `tracepoint:syscalls:sys_exit_fcntl /@fd[tid]/ {\n` +
      `  printf("E %llu %llu %d f %lld %lld 0 %s${end}\\n", ${cg}, nsecs, pid, (int64)args->ret, ` +
      `@fd[tid] - 1, "");\n` +
      `  delete(@fd[tid]);\n}`,
    // Reads of stdin (fd 0): a job that reads what its wrapper sent is not cached.
    ...STDIN_READS.map(([call, fd]) =>
      `tracepoint:syscalls:sys_enter_${call} /${filter} && args->${fd} == 0/ {\n` +
      `  printf("E %llu %llu %d i 0 0 0 %s${end}\\n", ${cg}, nsecs, pid, "");\n}`
    ),
    `tracepoint:sched:sched_process_fork /${filter}/ {\n` +
      `  printf("E %llu %llu %d F 0 %d 0 %s${end}\\n", ${cg}, nsecs, args->parent_pid, args->child_pid, "");\n}`,
    `tracepoint:syscalls:sys_enter_statx /pid == ${workerPid} && ` +
      `strncmp(str(args->filename, ${
        TRACE_MARK_DIR.length + 1
      }), "${TRACE_MARK_DIR}", ${TRACE_MARK_DIR.length}) == 0/ {\n` +
      `  printf("M %s${end}\\n${flush}", str(args->filename));\n}`,
  );
  return out.join("\n") + "\n";
}
