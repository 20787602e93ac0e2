/*
 * Termite job launcher: runs one command chrooted into a read-only view of
 * the master's file system, with the master's writable root writable through
 * a per-job overlay, as an unprivileged user, in fresh mount, PID, IPC, UTS
 * and network namespaces (the network one holds only a loopback interface,
 * unless --network host keeps the worker's network).
 *
 * Compiled on first use by sandbox/launcher.ts; run by sandbox/job.ts as root:
 *
 *   launcher --job-dir D --lower-root L --writable-root W --cwd C
 *            [--uid N] [--gid N] [--umask OCTAL] [--memory-bytes N]
 *            [--nproc N] [--cgroup DIR] [--parent-pid N] [--file-bytes N]
 *            [--network none|host] [--netns PATH] [--tmp-bytes N] [--tmp-files N]
 *            [--files N] [--disk-bytes N] [--result-bytes N] -- ARGV...
 *   launcher --drop-netns PATH...
 *
 * With --netns, the network namespace (still only a loopback) is not made
 * for this job but reused: the one bound at PATH, made there by the first
 * job that uses it (see enter_netns()); --drop-netns removes such bindings.
 *
 * The launcher's own environment is the job's environment, passed on as is.
 *
 * What the job writes is bounded:
 *   /tmp is a tmpfs of --tmp-bytes bytes and --tmp-files inodes (the kernel
 *     refuses more: ENOSPC); /dev/shm one of 64 MiB and 4096 inodes.
 *   The writable layer (the overlay's upper directory D/upper, on the
 *     worker's disk) is measured by the outer launcher: every entry counts
 *     towards --files, its allocated blocks towards --disk-bytes (a hard-linked
 *     file once), the apparent size of files and links towards --result-bytes
 *     (holes and every hard link counted: that is what the result set holds),
 *     and no path may reach PATH_BYTES_MAX. See watch_*() below.
 *   Disk space is taken at the speed of writes: fallocate(2) that would
 *     allocate (it took 10 GB in one call, past any watch, with
 *     FALLOC_FL_KEEP_SIZE past RLIMIT_FSIZE too) fails with EOPNOTSUPP, as
 *     io_uring_setup(2) does with ENOSYS (its requests skip seccomp), by a
 *     seccomp filter (x86_64 and its i386 and x32 ABIs). Programs fall back
 *     to writing (glibc's posix_fallocate does).
 *
 * Processes:
 *   outer (this process, in the worker's namespaces): prepares D/{root,upper,
 *     work}, joins the pids cgroup DIR, unshares, forks the init, waits for
 *     it and writes D/status. SIGTERM kills the whole job (SIGKILL to the
 *     init; the kernel then kills the namespace and the init is reaped only
 *     once every process in it is gone); SIGINT, SIGHUP and SIGQUIT are
 *     forwarded to the job. It reads DIR/pids.events every 100 ms (cgroup v1
 *     sends no notification) and kills the job at the first refused fork, and
 *     kills it when the writable layer passes a limit.
 *   init (PID 1 of the new PID namespace): builds the job root at D/root,
 *     chroots into it, starts the job (vfork-like: start_job()), forwards
 *     signals to the job's process group, reaps orphans, and exits when the
 *     job exits, which kills every process left in the namespace.
 *   job (PID 2): drops to uid/gid, sets limits, closes inherited fds, execs.
 *
 * With --parent-pid (the worker's pid), the launcher dies with its parent:
 * a worker killed hard gets SIGTERM delivered to each of its launchers, which
 * then kill their jobs as on a cancellation (nothing is left running).
 *
 * D/status holds lines "key value": exactly one of
 *   exit N | signal N | nocmd CODE MESSAGE | error MESSAGE | killed
 * then optionally "setup_ns N" (launcher start to exec), "job_cpu_us N" (the
 * CPU, user and system, of the job's processes reaped by the time it ended,
 * not the launcher's or the init's own), "processes 1" (the
 * process cap was hit and the job killed), "terminated 1" (SIGTERM received),
 * "limit NAME MAX" (the writable layer passed a limit: files, disk-bytes,
 * result-bytes or path-bytes; the job was killed, or had ended), "walked 1"
 * (after the job, the whole writable layer was measured within every limit),
 * "tmpfull bytes|files" (the job ended with its /tmp full).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/audit.h>
#include <linux/falloc.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <limits.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef AT_RECURSIVE
#define AT_RECURSIVE 0x8000
#endif

#ifndef __GLIBC__
/* musl (1.2.3, Debian 12) wraps neither close_range(2) nor the new mount
   API: the system calls themselves, their constants from the kernel's headers. */
#include <linux/mount.h>
static int close_range(unsigned first, unsigned last, int flags) {
  return (int)syscall(SYS_close_range, first, last, flags);
}
static int open_tree(int dfd, const char *path, unsigned flags) {
  return (int)syscall(SYS_open_tree, dfd, path, flags);
}
static int mount_setattr(int dfd, const char *path, unsigned flags, struct mount_attr *attr,
                         size_t size) {
  return (int)syscall(SYS_mount_setattr, dfd, path, flags, attr, size);
}
static int move_mount(int from_dfd, const char *from, int to_dfd, const char *to,
                      unsigned flags) {
  return (int)syscall(SYS_move_mount, from_dfd, from, to_dfd, to, flags);
}
#endif

#define PATH_BYTES_MAX 4096
#define REPORT_BYTES_MAX 4096
#define SHM_OPTIONS "size=64m,nr_inodes=4096"
/* Least time between two measures of the writable layer, and the factor of
   the last measure's duration they are spaced by (so at most 1/20 of a core). */
#define WATCH_PERIOD_NS_MIN 500000000ULL
#define WATCH_SPACING 20
/* How often the file system's own counters are read (one statfs): when they
   grew by more than what the job has left, it is measured at once. */
#define WATCH_POLL_MS 100
#define WATCH_TRIGGERED_NS_MIN 100000000ULL
/* Stack of the job's process between its start and its exec (see start_job). */
#define JOB_STACK_BYTES (256 * 1024)

struct config {
  const char *job_dir;
  const char *lower_root;
  const char *writable_root;
  const char *cwd;
  const char *cgroup;
  uid_t uid;
  gid_t gid;
  mode_t umask;
  unsigned long long memory_bytes;
  unsigned long nproc;
  unsigned long long file_bytes;
  pid_t parent_pid;
  int host_network;
  /* A reusable network namespace bound at this path (made here if absent). */
  const char *netns;
  unsigned long long tmp_bytes, tmp_files;
  /* Limits of the writable layer; 0: none. */
  unsigned long long files, disk_bytes, result_bytes;
  char **argv;
};

static struct config cfg = {.uid = 65534, .gid = 65534, .umask = 022};
static const char *status_path_global;

static unsigned long long monotonic_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (unsigned long long)t.tv_sec * 1000000000ULL + (unsigned long long)t.tv_nsec;
}

/* Joins a and b (b may start with '/') into out; fails when too long. */
static int join_path(char *out, const char *a, const char *b) {
  size_t la = strlen(a);
  while (la > 1 && a[la - 1] == '/') la--;
  if (la == 1 && a[0] == '/') la = 0;
  while (*b == '/') b++;
  int n = snprintf(out, PATH_BYTES_MAX, "%.*s/%s", (int)la, a, b);
  return n > 0 && n < PATH_BYTES_MAX ? 0 : -1;
}

static void write_all(int fd, const char *buf, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, buf, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      return;
    }
    buf += n;
    len -= (size_t)n;
  }
}

/* Sends one report line to the outer launcher (atomic: below PIPE_BUF). */
static void report(int fd, const char *fmt, ...) {
  char line[1024];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(line, sizeof line - 1, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if ((size_t)n > sizeof line - 2) n = sizeof line - 2;
  for (int i = 0; i < n; i++)
    if (line[i] == '\n') line[i] = ' ';
  line[n++] = '\n';
  write_all(fd, line, (size_t)n);
}

/* Outer launcher failures before the init exists: status file, exit 1. */
static void fail_outer(const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  for (char *p = msg; *p; p++)
    if (*p == '\n') *p = ' ';
  FILE *f = status_path_global ? fopen(status_path_global, "we") : NULL;
  if (f) {
    fprintf(f, "error %s\n", msg);
    fclose(f);
  } else {
    fprintf(stderr, "termite-launcher: %s\n", msg);
  }
  exit(1);
}

static void usage(const char *msg) {
  fprintf(stderr, "termite-launcher: %s\n", msg);
  exit(2);
}

static unsigned long long parse_number(const char *s, int base, const char *what) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, base);
  if (errno || *s == '\0' || *end != '\0' || *s == '-') {
    char msg[256];
    snprintf(msg, sizeof msg, "Invalid %s: %s", what, s);
    usage(msg);
  }
  return v;
}

static void parse_args(int argc, char **argv) {
  int i = 1;
  for (; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--") == 0) {
      i++;
      break;
    }
    if (i + 1 >= argc) usage("Missing option value");
    const char *v = argv[++i];
    if (strcmp(a, "--job-dir") == 0) cfg.job_dir = v;
    else if (strcmp(a, "--lower-root") == 0) cfg.lower_root = v;
    else if (strcmp(a, "--writable-root") == 0) cfg.writable_root = v;
    else if (strcmp(a, "--cwd") == 0) cfg.cwd = v;
    else if (strcmp(a, "--cgroup") == 0) cfg.cgroup = v;
    else if (strcmp(a, "--uid") == 0) cfg.uid = (uid_t)parse_number(v, 10, "uid");
    else if (strcmp(a, "--gid") == 0) cfg.gid = (gid_t)parse_number(v, 10, "gid");
    else if (strcmp(a, "--umask") == 0) cfg.umask = (mode_t)parse_number(v, 8, "umask") & 0777;
    else if (strcmp(a, "--memory-bytes") == 0) cfg.memory_bytes = parse_number(v, 10, "memory");
    else if (strcmp(a, "--nproc") == 0) cfg.nproc = (unsigned long)parse_number(v, 10, "nproc");
    else if (strcmp(a, "--file-bytes") == 0) cfg.file_bytes = parse_number(v, 10, "file bytes");
    else if (strcmp(a, "--parent-pid") == 0)
      cfg.parent_pid = (pid_t)parse_number(v, 10, "parent pid");
    else if (strcmp(a, "--tmp-bytes") == 0) cfg.tmp_bytes = parse_number(v, 10, "tmp bytes");
    else if (strcmp(a, "--tmp-files") == 0) cfg.tmp_files = parse_number(v, 10, "tmp files");
    else if (strcmp(a, "--files") == 0) cfg.files = parse_number(v, 10, "files");
    else if (strcmp(a, "--disk-bytes") == 0) cfg.disk_bytes = parse_number(v, 10, "disk bytes");
    else if (strcmp(a, "--result-bytes") == 0)
      cfg.result_bytes = parse_number(v, 10, "result bytes");
    else if (strcmp(a, "--network") == 0) {
      if (strcmp(v, "host") == 0) cfg.host_network = 1;
      else if (strcmp(v, "none") == 0) cfg.host_network = 0;
      else usage("Invalid network: none or host");
    } else if (strcmp(a, "--netns") == 0) {
      if (v[0] != '/') usage("Paths must be absolute");
      cfg.netns = v;
    } else usage("Unknown option");
  }
  if (i >= argc) usage("Missing command after --");
  if (!cfg.job_dir || !cfg.lower_root || !cfg.writable_root || !cfg.cwd)
    usage("Missing --job-dir, --lower-root, --writable-root or --cwd");
  if (cfg.writable_root[0] != '/' || cfg.cwd[0] != '/' || cfg.lower_root[0] != '/' ||
      cfg.job_dir[0] != '/')
    usage("Paths must be absolute");
  if (cfg.netns && cfg.host_network) usage("--netns needs --network none");
  cfg.argv = argv + i;
}

/* ---------------------------------------------------------------- job */

#if defined(__x86_64__)
#define SECCOMP_FILTERED 1
#define X32_SYSCALL_BIT 0x40000000U
/* i386 numbers (int 0x80 from a 64-bit process, or a 32-bit program). */
#define I386_FALLOCATE 324
#define I386_IO_URING_SETUP 425

/* Refuses fallocate unless it frees space (punching a hole or collapsing a
   range), and io_uring_setup. Everything else is allowed. */
static int refuse_fast_allocation(void) {
  const unsigned frees = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_COLLAPSE_RANGE;
  struct sock_filter filter[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_I386, 7, 0),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 0, 13),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, X32_SYSCALL_BIT, 0, 1),
      BPF_STMT(BPF_ALU | BPF_AND | BPF_K, ~X32_SYSCALL_BIT),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 8, 0),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_fallocate, 4, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      /* i386 */
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, I386_IO_URING_SETUP, 4, 0),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, I386_FALLOCATE, 0, 4),
      /* fallocate(fd, mode, ...): the mode is the second argument on both ABIs. */
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[1])),
      BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, frees, 2, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EOPNOTSUPP),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog = {.len = sizeof filter / sizeof filter[0], .filter = filter};
  return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog);
}
#endif

/*
 * execv(3), and a file the kernel cannot execute (ENOEXEC: a script with no
 * "#!") run by /bin/sh, as glibc's execvp does; errno says why when it returns.
 */
static void exec_or_sh(const char *path, char **argv) {
  execv(path, argv);
  if (errno != ENOEXEC) return;
  size_t n = 0;
  while (argv[n]) n++;
  char **sh_argv = calloc(n + 2, sizeof *sh_argv);
  if (!sh_argv) return;
  sh_argv[0] = "/bin/sh";
  sh_argv[1] = (char *)path;
  for (size_t i = 1; i < n; i++) sh_argv[i + 1] = argv[i];
  execv("/bin/sh", sh_argv);
  free(sh_argv);
}

/*
 * execvp(3) with glibc's semantics under any libc (musl's runs no script
 * through /bin/sh): a name with no slash is searched on PATH ("/bin:/usr/bin"
 * when unset; an empty element is the working directory); a match that cannot
 * be executed for want of permission is passed over but reported (EACCES) if
 * nothing else runs; any error other than not found ends the search.
 */
static void exec_search(char **argv) {
  const char *file = argv[0];
  if (*file == '\0') {
    errno = ENOENT;
    return;
  }
  if (strchr(file, '/')) {
    exec_or_sh(file, argv);
    return;
  }
  size_t file_len = strlen(file);
  if (file_len > NAME_MAX) {
    errno = ENAMETOOLONG;
    return;
  }
  const char *path = getenv("PATH");
  if (!path) path = "/bin:/usr/bin";
  int seen_eacces = 0;
  for (const char *p = path;;) {
    const char *end = strchrnul(p, ':');
    size_t dir_len = (size_t)(end - p);
    char candidate[PATH_BYTES_MAX];
    if (dir_len + 1 + file_len < sizeof candidate) {
      memcpy(candidate, p, dir_len);
      size_t at = dir_len;
      if (dir_len > 0) candidate[at++] = '/';
      memcpy(candidate + at, file, file_len + 1);
      exec_or_sh(candidate, argv);
      switch (errno) {
      case EACCES:
        seen_eacces = 1;
        break;
      case ENOENT:
      case ESTALE:
      case ENOTDIR:
      case ENODEV:
      case EHOSTDOWN:
      case ETIMEDOUT:
        break;
      default:
        return;
      }
    }
    if (*end == '\0') break;
    p = end + 1;
  }
  if (seen_eacces) errno = EACCES;
}

static void run_job(int report_fd) {
  sigset_t none;
  sigemptyset(&none);
  for (int sig = 1; sig < NSIG; sig++) {
    if (sig != SIGKILL && sig != SIGSTOP) signal(sig, SIG_DFL);
  }
  sigprocmask(SIG_SETMASK, &none, NULL);
  setsid();
  if (cfg.memory_bytes) {
    struct rlimit r = {cfg.memory_bytes, cfg.memory_bytes};
    if (setrlimit(RLIMIT_AS, &r)) {
      report(report_fd, "error Cannot limit memory: %s", strerror(errno));
      _exit(1);
    }
  }
  if (cfg.file_bytes) {
    /* No file grows past it: the writer gets SIGXFSZ (or EFBIG if it ignores it). */
    struct rlimit r = {cfg.file_bytes, cfg.file_bytes};
    if (setrlimit(RLIMIT_FSIZE, &r)) {
      report(report_fd, "error Cannot limit file sizes: %s", strerror(errno));
      _exit(1);
    }
  }
  if (cfg.nproc) {
    struct rlimit r = {cfg.nproc, cfg.nproc};
    if (setrlimit(RLIMIT_NPROC, &r)) {
      report(report_fd, "error Cannot limit processes: %s", strerror(errno));
      _exit(1);
    }
  }
  umask(cfg.umask);
  if (setgroups(0, NULL) || setgid(cfg.gid) || setuid(cfg.uid)) {
    report(report_fd, "error Cannot drop privileges to %u:%u: %s", (unsigned)cfg.uid,
           (unsigned)cfg.gid, strerror(errno));
    _exit(1);
  }
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) {
    report(report_fd, "error Cannot set no_new_privs: %s", strerror(errno));
    _exit(1);
  }
#ifdef SECCOMP_FILTERED
  if (refuse_fast_allocation()) {
    report(report_fd, "error Cannot install the seccomp filter: %s", strerror(errno));
    _exit(1);
  }
#endif
  if (chdir(cfg.cwd)) {
    report(report_fd, "error Cannot change directory to %s: %s", cfg.cwd, strerror(errno));
    _exit(1);
  }
  /* Nothing but stdio (and the close-on-exec report pipe) reaches the job. */
  if (report_fd > 3) close_range(3, (unsigned)report_fd - 1, 0);
  close_range((unsigned)report_fd + 1, ~0U, 0);
  report(report_fd, "ready %llu", monotonic_ns());
  exec_search(cfg.argv);
  int err = errno;
  int code = err == ENOENT || err == ENOTDIR ? 127 : 126;
  char msg[1024];
  int n = snprintf(msg, sizeof msg, "termite: %s: %s\n", cfg.argv[0],
                   err == ENOENT ? "command not found" : strerror(err));
  if (n > 0) write_all(2, msg, (size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1);
  report(report_fd, "nocmd %d %s: %s", code, cfg.argv[0], strerror(err));
  _exit(code);
}

/* ---------------------------------------------------------------- init */

#define SETUP_FAIL(...)                  \
  do {                                   \
    report(report_fd, "error " __VA_ARGS__); \
    _exit(1);                            \
  } while (0)

/* Escapes the characters the overlay option parser treats specially. */
static int escape_option(char *out, size_t cap, const char *in) {
  size_t j = 0;
  for (; *in; in++) {
    if (*in == ',' || *in == ':' || *in == '\\') {
      if (j + 1 >= cap) return -1;
      out[j++] = '\\';
    }
    if (j + 1 >= cap) return -1;
    out[j++] = *in;
  }
  out[j] = '\0';
  return 0;
}

static int mkdir_parents(char *path, mode_t mode) {
  for (char *p = path + 1; *p; p++) {
    if (*p != '/') continue;
    *p = '\0';
    int r = mkdir(path, mode);
    *p = '/';
    if (r && errno != EEXIST) return -1;
  }
  return mkdir(path, mode) && errno != EEXIST ? -1 : 0;
}

static void require_dir(int report_fd, const char *root, const char *name) {
  char path[PATH_BYTES_MAX];
  struct stat st;
  if (join_path(path, root, name)) SETUP_FAIL("Path too long: %s", name);
  if (stat(path, &st) || !S_ISDIR(st.st_mode))
    SETUP_FAIL("Cannot mount /%s: the lower root has no directory there", name);
}

static void setup_dev(int report_fd, const char *root) {
  char dev[PATH_BYTES_MAX], path[PATH_BYTES_MAX];
  if (join_path(dev, root, "dev")) SETUP_FAIL("Path too long: /dev");
  if (mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=1m,nr_inodes=64"))
    SETUP_FAIL("Cannot mount /dev: %s", strerror(errno));
  static const struct {
    const char *name;
    unsigned major, minor;
  } nodes[] = {{"null", 1, 3}, {"zero", 1, 5},    {"full", 1, 7},
               {"random", 1, 8}, {"urandom", 1, 9}, {"tty", 5, 0}};
  for (size_t i = 0; i < sizeof nodes / sizeof nodes[0]; i++) {
    join_path(path, dev, nodes[i].name);
    if (mknod(path, S_IFCHR | 0666, makedev(nodes[i].major, nodes[i].minor)))
      SETUP_FAIL("Cannot create /dev/%s: %s", nodes[i].name, strerror(errno));
  }
  static const char *links[][2] = {{"fd", "/proc/self/fd"},
                                   {"stdin", "/proc/self/fd/0"},
                                   {"stdout", "/proc/self/fd/1"},
                                   {"stderr", "/proc/self/fd/2"}};
  for (size_t i = 0; i < sizeof links / sizeof links[0]; i++) {
    join_path(path, dev, links[i][0]);
    if (symlink(links[i][1], path))
      SETUP_FAIL("Cannot create /dev/%s: %s", links[i][0], strerror(errno));
  }
  join_path(path, dev, "shm");
  if (mkdir(path, 01777) ||
      mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777," SHM_OPTIONS))
    SETUP_FAIL("Cannot mount /dev/shm: %s", strerror(errno));
}

static void setup_root(int report_fd, const char *root) {
  char path[PATH_BYTES_MAX], upper[PATH_BYTES_MAX], work[PATH_BYTES_MAX];
  if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL))
    SETUP_FAIL("Cannot make / private: %s", strerror(errno));

  /* Read-only recursive bind of the lower root (every submount included). */
  int tree = (int)open_tree(AT_FDCWD, cfg.lower_root,
                            OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE);
  if (tree < 0) SETUP_FAIL("Cannot clone %s: %s", cfg.lower_root, strerror(errno));
  struct mount_attr attr = {
      .attr_set = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV};
  if (mount_setattr(tree, "", AT_EMPTY_PATH | AT_RECURSIVE, &attr, sizeof attr))
    SETUP_FAIL("Cannot make %s read-only: %s", cfg.lower_root, strerror(errno));
  if (move_mount(tree, "", AT_FDCWD, root, MOVE_MOUNT_F_EMPTY_PATH))
    SETUP_FAIL("Cannot mount %s at %s: %s", cfg.lower_root, root, strerror(errno));
  close(tree);

  require_dir(report_fd, root, "proc");
  require_dir(report_fd, root, "dev");
  require_dir(report_fd, root, "tmp");

  join_path(path, root, "proc");
  if (mount("proc", path, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL))
    SETUP_FAIL("Cannot mount /proc: %s", strerror(errno));
  setup_dev(report_fd, root);
  /* /tmp: bounded in bytes and inodes by the kernel. A writable root inside
     /tmp takes a few inodes for its mount point's directories. */
  join_path(path, root, "tmp");
  char tmp_opts[128] = "mode=1777";
  if (cfg.tmp_bytes || cfg.tmp_files) {
    unsigned long long parents = 1;
    for (const char *p = cfg.writable_root; *p; p++) parents += *p == '/';
    snprintf(tmp_opts, sizeof tmp_opts, "mode=1777,size=%llu,nr_inodes=%llu",
             cfg.tmp_bytes ? cfg.tmp_bytes : 1ULL << 40,
             cfg.tmp_files ? cfg.tmp_files + parents : 1ULL << 32);
  }
  if (mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, tmp_opts))
    SETUP_FAIL("Cannot mount /tmp: %s", strerror(errno));

  /* The writable root: an overlay whose upper layer collects the changes. A
     writable root inside /tmp gets its mount point in the private /tmp.
     `volatile`: the upper is scratch, so unmounting must not sync the whole
     upper file system (that waited for every dirty page on the disk). */
  if (join_path(path, root, cfg.writable_root)) SETUP_FAIL("Path too long: writable root");
  struct stat st;
  if (stat(path, &st) && (errno != ENOENT || mkdir_parents(path, 0755)))
    SETUP_FAIL("Cannot find the writable root %s in the lower view: %s", cfg.writable_root,
               strerror(errno));
  char lower_dir[PATH_BYTES_MAX], opts[3 * 2 * PATH_BYTES_MAX + 128];
  if (join_path(lower_dir, cfg.lower_root, cfg.writable_root) ||
      join_path(upper, cfg.job_dir, "upper") || join_path(work, cfg.job_dir, "work"))
    SETUP_FAIL("Path too long: overlay layers");
  char lower_e[2 * PATH_BYTES_MAX], upper_e[2 * PATH_BYTES_MAX], work_e[2 * PATH_BYTES_MAX];
  if (escape_option(lower_e, sizeof lower_e, lower_dir) ||
      escape_option(upper_e, sizeof upper_e, upper) ||
      escape_option(work_e, sizeof work_e, work))
    SETUP_FAIL("Path too long: overlay options");
  snprintf(opts, sizeof opts,
           "lowerdir=%s,upperdir=%s,workdir=%s,redirect_dir=off,metacopy=off,index=off,"
           "xino=off,volatile",
           lower_e, upper_e, work_e);
  if (mount("overlay", path, "overlay", MS_NOSUID | MS_NODEV, opts))
    SETUP_FAIL("Cannot mount the overlay on %s: %s", cfg.writable_root, strerror(errno));

  if (chroot(root) || chdir("/")) SETUP_FAIL("Cannot chroot to %s: %s", root, strerror(errno));
}

/* Names the first entry the job left in its private /tmp ("tmpleft /tmp/NAME"):
   it is thrown away with the sandbox, so an output written there would be
   lost, and the worker has the job run again on the master. A writable root
   inside /tmp has its mount point's first directory there: not counted. */
static void report_tmp_left(int fd) {
  DIR *d = opendir("/tmp");
  if (!d) return;
  const char *skip = NULL;
  size_t skip_len = 0;
  if (strncmp(cfg.writable_root, "/tmp/", 5) == 0) {
    skip = cfg.writable_root + 5;
    const char *slash = strchr(skip, '/');
    skip_len = slash ? (size_t)(slash - skip) : strlen(skip);
  }
  struct dirent *e;
  while ((e = readdir(d))) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    if (skip && strlen(e->d_name) == skip_len && strncmp(e->d_name, skip, skip_len) == 0) continue;
    report(fd, "tmpleft /tmp/%s", e->d_name);
    break;
  }
  closedir(d);
}

static int job_main(void *report_fd) {
  run_job((int)(intptr_t)report_fd);
  return 1;
}

/*
 * Starts the job's process as vfork(2) would: it shares this process's memory
 * (on a stack of its own, below a guard page) until its exec, while this one
 * waits, so no copy of the address space is made only to be dropped by the
 * exec (a fork cost ~1 ms more per job on a VM where page faults are dear;
 * BENCHMARKS.md, session 17). Until then the job writes only its own stack,
 * errno and, for a script with no "#!", one calloc() whose memory this
 * process never uses; this one runs again only after the exec or _exit. Its
 * credentials, limits, signal dispositions, descriptors and working directory
 * are its own (no CLONE_THREAD, CLONE_SIGHAND, CLONE_FILES or CLONE_FS).
 */
static pid_t start_job(int report_fd) {
  long page = sysconf(_SC_PAGESIZE);
  char *stack = mmap(NULL, JOB_STACK_BYTES, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
  if (stack == MAP_FAILED) return -1;
  if (mprotect(stack, (size_t)page, PROT_NONE)) return -1;
  return clone(job_main, stack + JOB_STACK_BYTES, CLONE_VM | CLONE_VFORK | SIGCHLD,
               (void *)(intptr_t)report_fd);
}

static void run_init(int report_fd, int life_fd) {
  /* Die with the outer launcher; it may already be gone (then the pipe
     reports a hang-up). */
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  struct pollfd life = {.fd = life_fd, .events = POLLIN};
  if (poll(&life, 1, 0) != 0) _exit(1);
  close(life_fd);

  char root[PATH_BYTES_MAX];
  if (join_path(root, cfg.job_dir, "root")) SETUP_FAIL("Path too long: job root");
  setup_root(report_fd, root);

  pid_t job = start_job(report_fd);
  if (job < 0) SETUP_FAIL("Cannot start the job: %s", strerror(errno));

  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGCHLD);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  sigaddset(&set, SIGQUIT);
  for (;;) {
    siginfo_t info;
    int sig = sigwaitinfo(&set, &info);
    if (sig < 0) continue;
    if (sig != SIGCHLD) {
      if (kill(-job, sig) && errno == ESRCH) kill(job, sig);
      continue;
    }
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
      if (pid != job) continue;
      /* The job's CPU: each of its processes reaped so far (by this init, or
         waited for by its parent), the job's own few calls before its exec
         included; not this init's set-up of the root. */
      struct rusage used;
      if (getrusage(RUSAGE_CHILDREN, &used) == 0)
        report(report_fd, "jobcpu %llu",
               (unsigned long long)(used.ru_utime.tv_sec + used.ru_stime.tv_sec) * 1000000ULL +
                   (unsigned long long)(used.ru_utime.tv_usec + used.ru_stime.tv_usec));
      report_tmp_left(report_fd);
      struct statfs tmp;
      if (statfs("/tmp", &tmp) == 0 && (tmp.f_bavail == 0 || tmp.f_ffree == 0))
        report(report_fd, "tmpfull %s", tmp.f_bavail == 0 ? "bytes" : "files");
      if (WIFEXITED(status)) report(report_fd, "exit %d", WEXITSTATUS(status));
      else report(report_fd, "signal %d", WTERMSIG(status));
      /* Leaving kills every process left in the namespace. */
      _exit(0);
    }
  }
}

/* ---------------------------------------------------------------- outer */

static void prepare_job_dir(void) {
  char path[PATH_BYTES_MAX], lower_w[PATH_BYTES_MAX];
  struct stat st;
  umask(0);
  if (join_path(lower_w, cfg.lower_root, cfg.writable_root))
    fail_outer("Path too long: %s", cfg.writable_root);
  if (stat(lower_w, &st) || !S_ISDIR(st.st_mode))
    fail_outer("Cannot use the writable root %s: not a directory in the lower root",
               cfg.writable_root);
  static const struct {
    const char *name;
    mode_t mode;
  } dirs[] = {{"root", 0700}, {"upper", 0700}, {"work", 0700}};
  for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++) {
    if (join_path(path, cfg.job_dir, dirs[i].name)) fail_outer("Path too long: job dir");
    if (mkdir(path, dirs[i].mode)) fail_outer("Cannot create %s: %s", path, strerror(errno));
  }
  /* The overlay root takes the upper dir's owner and mode. */
  join_path(path, cfg.job_dir, "upper");
  if (chown(path, cfg.uid, cfg.gid) || chmod(path, st.st_mode & 07777))
    fail_outer("Cannot prepare %s: %s", path, strerror(errno));
}

/* ---------------------------------------------------------------- watch */

/* What the writable layer holds, and the first limit it passed. */
struct usage {
  unsigned long long entries, alloc_bytes, apparent_bytes;
};

enum limit { LIMIT_NONE, LIMIT_FILES, LIMIT_DISK, LIMIT_RESULT, LIMIT_PATH };
static const char *const LIMIT_NAMES[] = {"", "files", "disk-bytes", "result-bytes",
                                          "path-bytes"};

/* The longer of the two prefixes a path of the upper layer gets: on the
   worker (the upper dir) and on the master (the writable root). */
static size_t path_prefix_bytes;

static enum limit over_limits(const struct usage *u) {
  if (cfg.files && u->entries > cfg.files) return LIMIT_FILES;
  if (cfg.disk_bytes && u->alloc_bytes > cfg.disk_bytes) return LIMIT_DISK;
  if (cfg.result_bytes && u->apparent_bytes > cfg.result_bytes) return LIMIT_RESULT;
  return LIMIT_NONE;
}

/* Adds the entries below the directory `fd` (closed here), whose path below
   the upper dir is rel_bytes long, to u; stops at the first limit passed.
   Descriptors only (no path is ever resolved), so any depth can be walked up
   to the path limit; entries that vanish meanwhile are skipped. */
static enum limit walk_dir(int fd, size_t rel_bytes, struct usage *u) {
  int list_fd = openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  DIR *d = list_fd >= 0 ? fdopendir(list_fd) : NULL;
  if (!d) {
    if (list_fd >= 0) close(list_fd);
    close(fd);
    return LIMIT_NONE;
  }
  /* Subdirectories are walked once the listing is closed: one descriptor
     per level, whatever the width. */
  char *subdirs = NULL;
  size_t subdirs_len = 0, subdirs_cap = 0;
  enum limit hit = LIMIT_NONE;
  struct dirent *e;
  while (hit == LIMIT_NONE && (e = readdir(d)) != NULL) {
    const char *name = e->d_name;
    if (name[0] == '.' && (name[1] == '\0' || (name[1] == '.' && name[2] == '\0'))) continue;
    size_t name_bytes = strlen(name);
    u->entries++;
    if (path_prefix_bytes + rel_bytes + 1 + name_bytes >= PATH_BYTES_MAX) {
      hit = LIMIT_PATH;
      break;
    }
    struct stat st;
    if (fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
      unsigned long long alloc = (unsigned long long)st.st_blocks * 512;
      if (S_ISDIR(st.st_mode)) {
        u->alloc_bytes += alloc;
        if (subdirs_len + name_bytes + 1 > subdirs_cap) {
          size_t cap = subdirs_cap ? 2 * subdirs_cap : 4096;
          while (cap < subdirs_len + name_bytes + 1) cap *= 2;
          char *grown = realloc(subdirs, cap);
          if (!grown) {
            hit = LIMIT_FILES; /* Out of memory: too many entries by any measure. */
            break;
          }
          subdirs = grown;
          subdirs_cap = cap;
        }
        memcpy(subdirs + subdirs_len, name, name_bytes + 1);
        subdirs_len += name_bytes + 1;
      } else {
        /* Every link of an upper file is in the upper dir: its blocks, shared
           among its names, add up to one copy. Each name is a whole file of
           the result set. */
        u->alloc_bytes += alloc / (st.st_nlink > 0 ? st.st_nlink : 1);
        if (S_ISREG(st.st_mode) || S_ISLNK(st.st_mode))
          u->apparent_bytes += (unsigned long long)st.st_size;
      }
    }
    hit = over_limits(u);
  }
  closedir(d);
  for (size_t at = 0; hit == LIMIT_NONE && at < subdirs_len;) {
    const char *name = subdirs + at;
    size_t name_bytes = strlen(name);
    at += name_bytes + 1;
    int sub = openat(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (sub >= 0) hit = walk_dir(sub, rel_bytes + 1 + name_bytes, u);
    else if (errno == EMFILE || errno == ENFILE || errno == ENOMEM) hit = LIMIT_PATH;
  }
  free(subdirs);
  close(fd);
  return hit;
}

/* The watch of the writable layer: a full measure (a walk) every
   WATCH_PERIOD_NS_MIN or WATCH_SPACING times the last walk's duration, and
   at once when the file system's used blocks or inodes grew by more than the
   job has left (whoever wrote them), at most every WATCH_TRIGGERED_NS_MIN or
   twice the last walk's duration. A job can thus pass a limit by what it
   writes in about WATCH_POLL_MS plus one walk. */
struct watch {
  int upper_fd;
  struct usage last;
  long long base_bytes, base_inodes; /* The file system's use when the last walk began. */
  unsigned long long next_ns, next_triggered_ns;
};

static int watching(void) { return cfg.files || cfg.disk_bytes || cfg.result_bytes; }

static void fs_used(int fd, long long *bytes, long long *inodes) {
  struct statfs s;
  if (fstatfs(fd, &s)) {
    *bytes = *inodes = -1;
    return;
  }
  long long unit = s.f_frsize ? (long long)s.f_frsize : (long long)s.f_bsize;
  *bytes = (long long)(s.f_blocks - s.f_bfree) * unit;
  *inodes = (long long)(s.f_files - s.f_ffree);
}

static enum limit watch_walk(struct watch *w) {
  unsigned long long start = monotonic_ns();
  fs_used(w->upper_fd, &w->base_bytes, &w->base_inodes);
  struct usage u = {0};
  int fd = openat(w->upper_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  enum limit hit = fd >= 0 ? walk_dir(fd, 0, &u) : LIMIT_NONE;
  unsigned long long end = monotonic_ns(), took = end - start;
  w->last = u;
  w->next_ns = end + (WATCH_SPACING * took > WATCH_PERIOD_NS_MIN ? WATCH_SPACING * took
                                                                  : WATCH_PERIOD_NS_MIN);
  w->next_triggered_ns = end + (2 * took > WATCH_TRIGGERED_NS_MIN ? 2 * took
                                                                  : WATCH_TRIGGERED_NS_MIN);
  return hit;
}

static int watch_due(struct watch *w) {
  unsigned long long now = monotonic_ns();
  if (now >= w->next_ns) return 1;
  if (now < w->next_triggered_ns || w->base_bytes < 0) return 0;
  long long bytes, inodes;
  fs_used(w->upper_fd, &bytes, &inodes);
  if (bytes < 0) return 0;
  if (cfg.disk_bytes &&
      bytes - w->base_bytes > (long long)cfg.disk_bytes - (long long)w->last.alloc_bytes)
    return 1;
  if (cfg.files && inodes - w->base_inodes > (long long)cfg.files - (long long)w->last.entries)
    return 1;
  return 0;
}

/* Brings up the loopback interface of the current network namespace. */
static int loopback_up(void) {
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  struct ifreq req;
  memset(&req, 0, sizeof req);
  strcpy(req.ifr_name, "lo");
  int r = ioctl(fd, SIOCGIFFLAGS, &req);
  if (r == 0) {
    req.ifr_flags |= IFF_UP | IFF_RUNNING;
    r = ioctl(fd, SIOCSIFFLAGS, &req);
  }
  int err = errno;
  close(fd);
  errno = err;
  return r;
}

/*
 * Joins the reusable network namespace bound at PATH (--netns), or makes it
 * there when PATH holds none: a new namespace with its loopback up and no
 * TIME_WAIT sockets kept (tcp_max_tw_buckets 0), so a job meets nothing of
 * the jobs before it (every one of their processes, hence every socket, died
 * with them) and a port they bound is free. Making a namespace costs ~0.6 ms
 * of CPU per job and its clean-up a kernel worker's as much (BENCHMARKS.md);
 * the worker keeps one per running job and hands it to one job at a time.
 */
static void enter_netns(const char *path) {
  /* O_NONBLOCK: a FIFO found there would block the open for good. */
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (fd >= 0) {
    int r = setns(fd, CLONE_NEWNET);
    int err = errno;
    close(fd);
    if (r == 0) {
      /* Only a namespace made below has TIME_WAIT off: never the worker's
         own, or any other, bound there by mistake. */
      char value[32] = "";
      int tw = open("/proc/sys/net/ipv4/tcp_max_tw_buckets", O_RDONLY | O_CLOEXEC);
      ssize_t n = tw < 0 ? -1 : read(tw, value, sizeof value - 1);
      if (tw >= 0) close(tw);
      if (n != 2 || strncmp(value, "0\n", 2) != 0)
        fail_outer("Refusing the network namespace at %s: not one made for jobs", path);
      return;
    }
    /* EINVAL: not a namespace (a plain file, left when making one failed). */
    if (err != EINVAL)
      fail_outer("Cannot join the network namespace %s: %s", path, strerror(err));
  } else if (errno != ENOENT) {
    fail_outer("Cannot open the network namespace %s: %s", path, strerror(errno));
  }
  if (unshare(CLONE_NEWNET)) fail_outer("Cannot create a network namespace: %s", strerror(errno));
  if (loopback_up())
    fail_outer("Cannot bring up the job's loopback interface: %s", strerror(errno));
  int tw = open("/proc/sys/net/ipv4/tcp_max_tw_buckets", O_WRONLY | O_CLOEXEC);
  if (tw < 0 || write(tw, "0", 1) != 1)
    fail_outer("Cannot turn off TIME_WAIT in the job's network namespace: %s", strerror(errno));
  close(tw);
  int target = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0600);
  if (target < 0) fail_outer("Cannot create %s: %s", path, strerror(errno));
  struct stat st;
  int regular = fstat(target, &st) == 0 && S_ISREG(st.st_mode);
  close(target);
  if (!regular) fail_outer("Cannot keep the network namespace at %s: not a regular file", path);
  if (mount("/proc/self/ns/net", path, NULL, MS_BIND, NULL))
    fail_outer("Cannot keep the network namespace at %s: %s", path, strerror(errno));
}

/*
 * --drop-netns PATH...: detaches and removes network namespaces kept by
 * --netns (the worker's pool at close, or a crashed worker's at start).
 * Exits 0 when every PATH is gone, 1 otherwise.
 */
static int drop_netns(int count, char **paths) {
  int status = 0;
  for (int i = 0; i < count; i++) {
    if (umount2(paths[i], MNT_DETACH | UMOUNT_NOFOLLOW) && errno != EINVAL && errno != ENOENT) {
      fprintf(stderr, "termite-launcher: Cannot unmount %s: %s\n", paths[i], strerror(errno));
      status = 1;
    }
    if (unlink(paths[i]) && errno != ENOENT) {
      fprintf(stderr, "termite-launcher: Cannot remove %s: %s\n", paths[i], strerror(errno));
      status = 1;
    }
  }
  return status;
}

/* Returns the "max" count of a pids.events file, or 0. */
static unsigned long long read_pids_events(int fd) {
  char buf[128];
  ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
  if (n <= 0) return 0;
  buf[n] = '\0';
  const char *p = strstr(buf, "max ");
  return p ? strtoull(p + 4, NULL, 10) : 0;
}

int main(int argc, char **argv) {
  unsigned long long start_ns = monotonic_ns();
  if (argc >= 2 && strcmp(argv[1], "--drop-netns") == 0) return drop_netns(argc - 2, argv + 2);
  parse_args(argc, argv);
  close_range(3, ~0U, 0);
  /* SIGTERM when the worker dies (handled below as a cancellation); the check
     after prctl catches a worker that died before it. */
  if (cfg.parent_pid > 0 &&
      (prctl(PR_SET_PDEATHSIG, SIGTERM) || getppid() != cfg.parent_pid)) {
    fprintf(stderr, "termite-launcher: The worker (pid %d) is gone\n", (int)cfg.parent_pid);
    return 1;
  }

  static char status_path[PATH_BYTES_MAX], tmp_status[PATH_BYTES_MAX];
  if (join_path(status_path, cfg.job_dir, "status") ||
      join_path(tmp_status, cfg.job_dir, "status.tmp"))
    usage("Job dir path too long");
  status_path_global = status_path;

  prepare_job_dir();

  struct watch watch = {.upper_fd = -1};
  if (watching()) {
    char upper[PATH_BYTES_MAX];
    join_path(upper, cfg.job_dir, "upper");
    size_t a = strlen(upper), b = strlen(cfg.writable_root);
    path_prefix_bytes = a > b ? a : b;
    watch.upper_fd = open(upper, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (watch.upper_fd < 0) fail_outer("Cannot open %s: %s", upper, strerror(errno));
    fs_used(watch.upper_fd, &watch.base_bytes, &watch.base_inodes);
    watch.next_ns = monotonic_ns() + WATCH_PERIOD_NS_MIN;
  }

  int events_fd = -1;
  if (cfg.cgroup) {
    char path[PATH_BYTES_MAX];
    if (join_path(path, cfg.cgroup, "cgroup.procs")) fail_outer("Path too long: cgroup");
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0 || write(fd, "0", 1) != 1)
      fail_outer("Cannot join cgroup %s: %s", cfg.cgroup, strerror(errno));
    close(fd);
    join_path(path, cfg.cgroup, "pids.events");
    events_fd = open(path, O_RDONLY | O_CLOEXEC);
    if (events_fd >= 0) read_pids_events(events_fd);
  }

  int report_pipe[2], life_pipe[2];
  if (pipe2(report_pipe, O_CLOEXEC) || pipe2(life_pipe, O_CLOEXEC))
    fail_outer("Cannot create pipes: %s", strerror(errno));

  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGCHLD);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  sigaddset(&set, SIGQUIT);
  sigprocmask(SIG_BLOCK, &set, NULL);

  /* A new network namespace holds only a loopback interface (down until
     brought up): the job reaches no host, port or socket of the worker's. */
  int ns_flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS;
  if (cfg.netns) enter_netns(cfg.netns);
  else if (!cfg.host_network) ns_flags |= CLONE_NEWNET;
  if (unshare(ns_flags)) fail_outer("Cannot create namespaces: %s", strerror(errno));
  if (!cfg.host_network && !cfg.netns && loopback_up())
    fail_outer("Cannot bring up the job's loopback interface: %s", strerror(errno));
  pid_t init = fork();
  if (init < 0) fail_outer("Cannot fork: %s", strerror(errno));
  if (init == 0) {
    close(report_pipe[0]);
    close(life_pipe[1]);
    if (events_fd >= 0) close(events_fd);
    run_init(report_pipe[1], life_pipe[0]);
    _exit(1);
  }
  close(report_pipe[1]);
  close(life_pipe[0]);
  /* One descriptor per level of the writable layer while it is measured. */
  struct rlimit files_limit = {PATH_BYTES_MAX, PATH_BYTES_MAX};
  struct rlimit current;
  if (watching() && getrlimit(RLIMIT_NOFILE, &current) == 0 &&
      current.rlim_cur < files_limit.rlim_cur) {
    if (current.rlim_max > files_limit.rlim_max) files_limit.rlim_max = current.rlim_max;
    setrlimit(RLIMIT_NOFILE, &files_limit);
  }

  int sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
  if (sfd < 0) {
    kill(init, SIGKILL);
    fail_outer("Cannot create signalfd: %s", strerror(errno));
  }

  char reports[REPORT_BYTES_MAX + 1];
  size_t reports_len = 0;
  int report_fd = report_pipe[0];
  int init_done = 0, terminated = 0, processes_hit = 0, walked = 0;
  enum limit limit_hit = LIMIT_NONE;
  int poll_ms = watching() ? WATCH_POLL_MS : events_fd >= 0 ? 100 : -1;
  while (!init_done || report_fd >= 0) {
    struct pollfd fds[3];
    int n = 0;
    fds[n++] = (struct pollfd){.fd = init_done ? -1 : sfd, .events = POLLIN};
    fds[n++] = (struct pollfd){.fd = report_fd, .events = POLLIN};
    fds[n++] = (struct pollfd){.fd = init_done ? -1 : events_fd, .events = POLLPRI};
    if (poll(fds, (nfds_t)n, init_done ? -1 : poll_ms) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (report_fd >= 0 && fds[1].revents) {
      char buf[512];
      ssize_t r = read(report_fd, buf, sizeof buf);
      if (r > 0) {
        size_t take = (size_t)r;
        if (take > REPORT_BYTES_MAX - reports_len) take = REPORT_BYTES_MAX - reports_len;
        memcpy(reports + reports_len, buf, take);
        reports_len += take;
      } else if (r == 0 || errno != EINTR) {
        close(report_fd);
        report_fd = -1;
      }
    }
    if (!init_done && events_fd >= 0 && !processes_hit && read_pids_events(events_fd) > 0) {
      processes_hit = 1;
      kill(init, SIGKILL);
    }
    if (!init_done && watching() && limit_hit == LIMIT_NONE && !processes_hit &&
        !terminated && watch_due(&watch)) {
      limit_hit = watch_walk(&watch);
      if (limit_hit != LIMIT_NONE) kill(init, SIGKILL);
    }
    struct signalfd_siginfo si;
    while (!init_done && read(sfd, &si, sizeof si) == sizeof si) {
      int sig = (int)si.ssi_signo;
      if (sig == SIGTERM) {
        terminated = 1;
        kill(init, SIGKILL);
      } else if (sig != SIGCHLD) {
        kill(init, sig);
      }
    }
    if (!init_done) {
      int status;
      if (waitpid(init, &status, WNOHANG) == init) init_done = 1;
    }
  }
  reports[reports_len] = '\0';

  /* Every process of the job is gone: the measure is exact. */
  if (watching() && limit_hit == LIMIT_NONE && !processes_hit && !terminated) {
    limit_hit = watch_walk(&watch);
    walked = limit_hit == LIMIT_NONE;
  }

  /* The job's status is the init's last report, unless setup or exec failed. */
  const char *result = NULL, *ready = NULL, *tmpfull = NULL, *tmpleft = NULL, *jobcpu = NULL;
  for (char *line = reports; line && *line;) {
    char *next = strchr(line, '\n');
    if (next) *next++ = '\0';
    if (strncmp(line, "ready ", 6) == 0) ready = line + 6;
    else if (strncmp(line, "tmpfull ", 8) == 0) tmpfull = line + 8;
    else if (strncmp(line, "tmpleft ", 8) == 0) tmpleft = line + 8;
    else if (strncmp(line, "jobcpu ", 7) == 0) jobcpu = line + 7;
    else if (!result || (strncmp(result, "error ", 6) != 0 && strncmp(result, "nocmd ", 6) != 0))
      result = line;
    line = next;
  }
  FILE *f = fopen(tmp_status, "we");
  if (!f) {
    fprintf(stderr, "termite-launcher: Cannot write %s: %s\n", tmp_status, strerror(errno));
    return 1;
  }
  fprintf(f, "%s\n", result ? result : "killed");
  if (ready) {
    unsigned long long t = strtoull(ready, NULL, 10);
    if (t > start_ns) fprintf(f, "setup_ns %llu\n", t - start_ns);
  }
  if (jobcpu) fprintf(f, "job_cpu_us %llu\n", strtoull(jobcpu, NULL, 10));
  if (processes_hit) fprintf(f, "processes 1\n");
  if (limit_hit != LIMIT_NONE) {
    unsigned long long max = limit_hit == LIMIT_FILES    ? cfg.files
                             : limit_hit == LIMIT_DISK   ? cfg.disk_bytes
                             : limit_hit == LIMIT_RESULT ? cfg.result_bytes
                                                         : PATH_BYTES_MAX - 1;
    fprintf(f, "limit %s %llu\n", LIMIT_NAMES[limit_hit], max);
  }
  if (walked) fprintf(f, "walked 1\n");
  if (tmpfull) fprintf(f, "tmpfull %s\n", tmpfull);
  if (tmpleft) fprintf(f, "tmpleft %s\n", tmpleft);
  if (terminated) fprintf(f, "terminated 1\n");
  if (fclose(f) || rename(tmp_status, status_path)) {
    fprintf(stderr, "termite-launcher: Cannot write %s: %s\n", status_path, strerror(errno));
    return 1;
  }
  return 0;
}
