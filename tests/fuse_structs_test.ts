/**
 * Checks every size, offset and constant in fuse/structs.ts (and errno.ts)
 * against a C probe compiled at test time from the headers on this machine.
 */
import assert from "node:assert/strict";
import * as errno from "../fuse/errno.ts";
import * as s from "../fuse/structs.ts";

const PROBE_C = String.raw`
#define FUSE_USE_VERSION 35
#define _GNU_SOURCE
#include <fuse_lowlevel.h>
#include <stdio.h>
#include <stddef.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <poll.h>
#include <dirent.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/mount.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <time.h>

struct linux_dirent64 { unsigned long long d_ino; long long d_off; unsigned short d_reclen; unsigned char d_type; char d_name[]; };

#define P(name, value) printf("%s %lld\n", name, (long long)(value))
#define OFF(name, type, field) P(name, offsetof(type, field))

static int bit_of(void (*set)(struct fuse_file_info *)) {
  struct fuse_file_info fi; memset(&fi, 0, sizeof fi); set(&fi);
  unsigned char *b = (unsigned char *)&fi;
  for (int i = 0; i < (int)sizeof fi; i++) if (b[i]) return i * 256 + b[i];
  return -1;
}
static void s_direct_io(struct fuse_file_info *f) { f->direct_io = 1; }
static void s_keep_cache(struct fuse_file_info *f) { f->keep_cache = 1; }
static void s_nonseekable(struct fuse_file_info *f) { f->nonseekable = 1; }
static void s_cache_readdir(struct fuse_file_info *f) { f->cache_readdir = 1; }

int main(void) {
  P("STAT_SIZE", sizeof(struct stat));
  OFF("STAT_DEV", struct stat, st_dev); OFF("STAT_INO", struct stat, st_ino);
  OFF("STAT_NLINK", struct stat, st_nlink); OFF("STAT_MODE", struct stat, st_mode);
  OFF("STAT_UID", struct stat, st_uid); OFF("STAT_GID", struct stat, st_gid);
  OFF("STAT_RDEV", struct stat, st_rdev); OFF("STAT_SIZE_FIELD", struct stat, st_size);
  OFF("STAT_BLKSIZE", struct stat, st_blksize); OFF("STAT_BLOCKS", struct stat, st_blocks);
  OFF("STAT_ATIM", struct stat, st_atim); OFF("STAT_MTIM", struct stat, st_mtim);
  OFF("STAT_CTIM", struct stat, st_ctim);
  P("ENTRY_PARAM_SIZE", sizeof(struct fuse_entry_param));
  OFF("ENTRY_PARAM_INO", struct fuse_entry_param, ino);
  OFF("ENTRY_PARAM_GENERATION", struct fuse_entry_param, generation);
  OFF("ENTRY_PARAM_ATTR", struct fuse_entry_param, attr);
  OFF("ENTRY_PARAM_ATTR_TIMEOUT", struct fuse_entry_param, attr_timeout);
  OFF("ENTRY_PARAM_ENTRY_TIMEOUT", struct fuse_entry_param, entry_timeout);
  P("FILE_INFO_SIZE", sizeof(struct fuse_file_info));
  OFF("FILE_INFO_FLAGS", struct fuse_file_info, flags);
  OFF("FILE_INFO_FH", struct fuse_file_info, fh);
  OFF("FILE_INFO_LOCK_OWNER", struct fuse_file_info, lock_owner);
  OFF("FILE_INFO_POLL_EVENTS", struct fuse_file_info, poll_events);
  P("BIT_DIRECT_IO", bit_of(s_direct_io)); P("BIT_KEEP_CACHE", bit_of(s_keep_cache));
  P("BIT_NONSEEKABLE", bit_of(s_nonseekable)); P("BIT_CACHE_READDIR", bit_of(s_cache_readdir));
  P("ARGS_SIZE", sizeof(struct fuse_args));
  OFF("ARGS_ARGC", struct fuse_args, argc); OFF("ARGS_ARGV", struct fuse_args, argv);
  OFF("ARGS_ALLOCATED", struct fuse_args, allocated);
  P("CTX_SIZE", sizeof(struct fuse_ctx));
  OFF("CTX_UID", struct fuse_ctx, uid); OFF("CTX_GID", struct fuse_ctx, gid);
  OFF("CTX_PID", struct fuse_ctx, pid); OFF("CTX_UMASK", struct fuse_ctx, umask);
  P("CONN_INFO_SIZE", sizeof(struct fuse_conn_info));
  OFF("CONN_PROTO_MAJOR", struct fuse_conn_info, proto_major);
  OFF("CONN_PROTO_MINOR", struct fuse_conn_info, proto_minor);
  OFF("CONN_MAX_WRITE", struct fuse_conn_info, max_write);
  OFF("CONN_MAX_READ", struct fuse_conn_info, max_read);
  OFF("CONN_MAX_READAHEAD", struct fuse_conn_info, max_readahead);
  OFF("CONN_CAPABLE", struct fuse_conn_info, capable);
  OFF("CONN_WANT", struct fuse_conn_info, want);
  OFF("CONN_MAX_BACKGROUND", struct fuse_conn_info, max_background);
  OFF("CONN_CONGESTION_THRESHOLD", struct fuse_conn_info, congestion_threshold);
  OFF("CONN_TIME_GRAN", struct fuse_conn_info, time_gran);
  P("BUF_SIZE", sizeof(struct fuse_buf));
  OFF("BUF_SIZE_FIELD", struct fuse_buf, size); OFF("BUF_FLAGS", struct fuse_buf, flags);
  OFF("BUF_MEM", struct fuse_buf, mem); OFF("BUF_FD", struct fuse_buf, fd);
  OFF("BUF_POS", struct fuse_buf, pos);
  P("BUFVEC_SIZE", sizeof(struct fuse_bufvec));
  OFF("BUFVEC_COUNT", struct fuse_bufvec, count); OFF("BUFVEC_IDX", struct fuse_bufvec, idx);
  OFF("BUFVEC_OFF", struct fuse_bufvec, off); OFF("BUFVEC_BUF", struct fuse_bufvec, buf);
  P("FUSE_BUF_IS_FD", FUSE_BUF_IS_FD); P("FUSE_BUF_FD_SEEK", FUSE_BUF_FD_SEEK);
  P("FUSE_BUF_SPLICE_MOVE", FUSE_BUF_SPLICE_MOVE);
  P("LOWLEVEL_OPS_SIZE", sizeof(struct fuse_lowlevel_ops));
#define OP(name) printf("op %s %lld\n", #name, (long long)offsetof(struct fuse_lowlevel_ops, name))
  OP(init); OP(destroy); OP(lookup); OP(forget); OP(getattr); OP(setattr); OP(readlink);
  OP(mknod); OP(mkdir); OP(unlink); OP(rmdir); OP(symlink); OP(rename); OP(link); OP(open);
  OP(read); OP(write); OP(flush); OP(release); OP(fsync); OP(opendir); OP(readdir);
  OP(releasedir); OP(fsyncdir); OP(statfs); OP(setxattr); OP(getxattr); OP(listxattr);
  OP(removexattr); OP(access); OP(create); OP(getlk); OP(setlk); OP(bmap); OP(ioctl); OP(poll);
  OP(write_buf); OP(retrieve_reply); OP(forget_multi); OP(flock); OP(fallocate); OP(readdirplus);
  OP(copy_file_range); OP(lseek);
  P("FORGET_DATA_SIZE", sizeof(struct fuse_forget_data));
  OFF("FORGET_DATA_INO", struct fuse_forget_data, ino);
  OFF("FORGET_DATA_NLOOKUP", struct fuse_forget_data, nlookup);
  P("STATVFS_SIZE", sizeof(struct statvfs));
  OFF("STATVFS_BSIZE", struct statvfs, f_bsize); OFF("STATVFS_FRSIZE", struct statvfs, f_frsize);
  OFF("STATVFS_BLOCKS", struct statvfs, f_blocks); OFF("STATVFS_BFREE", struct statvfs, f_bfree);
  OFF("STATVFS_BAVAIL", struct statvfs, f_bavail); OFF("STATVFS_FILES", struct statvfs, f_files);
  OFF("STATVFS_FFREE", struct statvfs, f_ffree); OFF("STATVFS_FAVAIL", struct statvfs, f_favail);
  OFF("STATVFS_FSID", struct statvfs, f_fsid); OFF("STATVFS_FLAG", struct statvfs, f_flag);
  OFF("STATVFS_NAMEMAX", struct statvfs, f_namemax);
  P("POLLFD_SIZE", sizeof(struct pollfd));
  OFF("POLLFD_FD", struct pollfd, fd); OFF("POLLFD_EVENTS", struct pollfd, events);
  OFF("POLLFD_REVENTS", struct pollfd, revents);
  P("POLLIN", POLLIN); P("POLLERR", POLLERR); P("POLLHUP", POLLHUP); P("POLLNVAL", POLLNVAL);
  OFF("DIRENT64_INO", struct linux_dirent64, d_ino); OFF("DIRENT64_OFF", struct linux_dirent64, d_off);
  OFF("DIRENT64_RECLEN", struct linux_dirent64, d_reclen);
  OFF("DIRENT64_TYPE", struct linux_dirent64, d_type);
  OFF("DIRENT64_NAME", struct linux_dirent64, d_name);
  P("DT_UNKNOWN", DT_UNKNOWN); P("DT_DIR", DT_DIR); P("DT_REG", DT_REG); P("DT_LNK", DT_LNK);
  P("S_IFMT", S_IFMT); P("S_IFSOCK", S_IFSOCK); P("S_IFLNK", S_IFLNK); P("S_IFREG", S_IFREG);
  P("S_IFBLK", S_IFBLK); P("S_IFDIR", S_IFDIR); P("S_IFCHR", S_IFCHR); P("S_IFIFO", S_IFIFO);
  P("O_RDONLY", O_RDONLY); P("O_NONBLOCK", O_NONBLOCK); P("O_DIRECTORY", O_DIRECTORY);
  P("O_NOFOLLOW", O_NOFOLLOW); P("O_CLOEXEC", O_CLOEXEC); P("O_PATH", O_PATH);
  P("O_ACCMODE", O_ACCMODE); P("F_GETFL", F_GETFL); P("F_SETFL", F_SETFL);
  P("R_OK", R_OK); P("W_OK", W_OK); P("X_OK", X_OK);
  P("AT_FDCWD", AT_FDCWD); P("AT_SYMLINK_NOFOLLOW", AT_SYMLINK_NOFOLLOW);
  P("AT_EMPTY_PATH", AT_EMPTY_PATH); P("MNT_FORCE", MNT_FORCE); P("MNT_DETACH", MNT_DETACH);
  P("EFD_CLOEXEC", EFD_CLOEXEC); P("EFD_NONBLOCK", EFD_NONBLOCK);
  P("CLOCK_MONOTONIC", CLOCK_MONOTONIC); P("TFD_CLOEXEC", TFD_CLOEXEC);
  P("TFD_NONBLOCK", TFD_NONBLOCK); P("ITIMERSPEC_SIZE", sizeof(struct itimerspec));
  OFF("ITIMERSPEC_INTERVAL", struct itimerspec, it_interval);
  OFF("ITIMERSPEC_VALUE", struct itimerspec, it_value);
  OFF("TIMESPEC_NSEC", struct timespec, tv_nsec);
#define CAP(name) P(#name, name)
  CAP(FUSE_CAP_ASYNC_READ); CAP(FUSE_CAP_EXPORT_SUPPORT); CAP(FUSE_CAP_SPLICE_WRITE);
  CAP(FUSE_CAP_SPLICE_MOVE); CAP(FUSE_CAP_SPLICE_READ); CAP(FUSE_CAP_AUTO_INVAL_DATA);
  CAP(FUSE_CAP_READDIRPLUS); CAP(FUSE_CAP_READDIRPLUS_AUTO); CAP(FUSE_CAP_ASYNC_DIO);
  CAP(FUSE_CAP_NO_OPEN_SUPPORT); CAP(FUSE_CAP_PARALLEL_DIROPS); CAP(FUSE_CAP_CACHE_SYMLINKS);
  CAP(FUSE_CAP_NO_OPENDIR_SUPPORT); CAP(FUSE_CAP_EXPLICIT_INVAL_DATA);
  P("FUSE_ROOT_ID", FUSE_ROOT_ID);
#define E(name) printf("errno %s %d\n", #name, name)
  E(EPERM); E(ENOENT); E(EINTR); E(EIO); E(ENXIO); E(E2BIG); E(EBADF); E(EAGAIN); E(ENOMEM);
  E(EACCES); E(EFAULT); E(EBUSY); E(EEXIST); E(EXDEV); E(ENODEV); E(ENOTDIR); E(EISDIR);
  E(EINVAL); E(ENFILE); E(EMFILE); E(EFBIG); E(ENOSPC); E(ESPIPE); E(EROFS); E(EMLINK);
  E(EPIPE); E(ERANGE); E(ENAMETOOLONG); E(ENOSYS); E(ENOTEMPTY); E(ELOOP); E(ENODATA);
  E(EOVERFLOW); E(EOPNOTSUPP); E(ENOTSUP); E(ECONNREFUSED); E(ENOTCONN); E(ETIMEDOUT); E(ESTALE);
  return 0;
}
`;

async function runProbe(): Promise<string[]> {
  const dir = await Deno.makeTempDir({ prefix: "fuse_probe_" });
  try {
    await Deno.writeTextFile(`${dir}/probe.c`, PROBE_C);
    const cc = await new Deno.Command("gcc", {
      args: ["-Wall", "-I/usr/include/fuse3", "-o", `${dir}/probe`, `${dir}/probe.c`],
    }).output();
    assert.equal(cc.code, 0, new TextDecoder().decode(cc.stderr));
    const run = await new Deno.Command(`${dir}/probe`).output();
    assert.equal(run.code, 0);
    return new TextDecoder().decode(run.stdout).trim().split("\n");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const lines = await runProbe();

Deno.test("structs.ts sizes, offsets and constants match the C headers", () => {
  const exported = s as unknown as Record<string, unknown>;
  let checked = 0;
  for (const line of lines) {
    const parts = line.split(" ");
    if (parts.length !== 2) continue;
    const [name, text] = parts;
    const value = Number(text);
    if (name.startsWith("BIT_")) {
      assert.equal(Math.floor(value / 256), s.FILE_INFO_BITS, `${name}: byte`);
      assert.equal(value % 256, exported[`FILE_INFO_${name}`], `${name}: mask`);
    } else if (name === "FUSE_ROOT_ID") {
      assert.equal(BigInt(value), s.FUSE_ROOT_ID);
    } else {
      assert.equal(exported[name], value, name);
    }
    checked++;
  }
  assert.ok(checked > 120, `only ${checked} values checked`);
});

Deno.test("LOWLEVEL_OPS lists every fuse_lowlevel_ops member at its offset", () => {
  const ops = lines.filter((line) => line.startsWith("op ")).map((line) => line.split(" "));
  assert.equal(ops.length, s.LOWLEVEL_OPS.length);
  for (const [, name, offset] of ops) {
    assert.equal(s.lowlevelOpOffset(name as s.LowlevelOp), Number(offset), name);
  }
  assert.equal(s.LOWLEVEL_OPS.length * 8, s.LOWLEVEL_OPS_SIZE);
});

Deno.test("errno.ts matches errno.h", () => {
  const exported = errno as unknown as Record<string, unknown>;
  const rows = lines.filter((line) => line.startsWith("errno "));
  assert.ok(rows.length > 30);
  for (const row of rows) {
    const [, name, value] = row.split(" ");
    assert.equal(exported[name], Number(value), name);
    assert.equal(errno.errnoFromCode(name), Number(value), name);
  }
});

Deno.test("encodeStat() and decodeStat() keep exact nanosecond times", () => {
  const view = new DataView(new ArrayBuffer(s.STAT_SIZE));
  const attr = {
    ino: 123n,
    mode: s.S_IFREG | 0o644,
    nlink: 2,
    uid: 1000,
    gid: 100,
    size: 2 ** 40 + 3,
    mtimeMs: 1_700_000_000_999.999999,
    mtimeNsec: 999_999_999,
    atimeMs: 1_600_000_000_000.5,
    ctimeMs: 5,
  };
  s.encodeStat(view, 0, attr);
  const back = s.decodeStat(view, 0);
  assert.equal(back.ino, 123n);
  assert.equal(back.size, 2 ** 40 + 3);
  assert.equal(view.getBigInt64(s.STAT_MTIM, true), 1_700_000_000n);
  assert.equal(back.mtimeNsec, 999_999_999);
  assert.equal(back.atimeNsec, 500_000);
  assert.equal(back.ctimeNsec, 5_000_000);
  assert.equal(back.blocks, Math.ceil(attr.size / 512));
});
