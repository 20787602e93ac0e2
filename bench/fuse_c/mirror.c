/*
 * A read-only mirror of a local directory against libfuse3's low-level API:
 * the C reference for bench/fuse_bench.ts. It does what fuse/loopback.ts does
 * (path per node, nodes keyed by st_dev/st_ino, negative entries, keep_cache,
 * directory listing snapshot at opendir, read via fuse_reply_data from the fd),
 * served by a single thread (fuse_session_loop), like the Deno session.
 *
 * usage: mirror SRC MNT ENTRY_TIMEOUT ATTR_TIMEOUT NEGATIVE_TIMEOUT KEEP_CACHE [NO_OPEN]
 * With NO_OPEN=1 it has no open/release (zero-message opens, like LoopbackFs
 * with noOpen): reads use a descriptor kept per node.
 */
#define FUSE_USE_VERSION 35
#define _GNU_SOURCE
#include <fuse_lowlevel.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

struct node {
  dev_t dev;
  ino_t ino;
  char *path;
  uint64_t nlookup;
  int fd;
  struct node *next;
};

#define BUCKETS 65536
static struct node *buckets[BUCKETS];
static struct node root;
static double entry_timeout, attr_timeout, negative_timeout;
static int keep_cache, no_open;

static struct node *node_of(fuse_ino_t ino) {
  return ino == FUSE_ROOT_ID ? &root : (struct node *)(uintptr_t)ino;
}
static fuse_ino_t ino_of(struct node *n) {
  return n == &root ? FUSE_ROOT_ID : (fuse_ino_t)(uintptr_t)n;
}
static unsigned hash(dev_t dev, ino_t ino) {
  return (unsigned)((ino * 2654435761u) ^ dev) % BUCKETS;
}

static struct node *find_or_add(const char *path, const struct stat *st) {
  unsigned h = hash(st->st_dev, st->st_ino);
  for (struct node *n = buckets[h]; n; n = n->next)
    if (n->dev == st->st_dev && n->ino == st->st_ino) return n;
  struct node *n = calloc(1, sizeof *n);
  n->dev = st->st_dev;
  n->ino = st->st_ino;
  n->path = strdup(path);
  n->fd = -1;
  n->next = buckets[h];
  buckets[h] = n;
  return n;
}

static void drop(struct node *n) {
  unsigned h = hash(n->dev, n->ino);
  for (struct node **p = &buckets[h]; *p; p = &(*p)->next)
    if (*p == n) {
      *p = n->next;
      if (n->fd >= 0) close(n->fd);
      free(n->path);
      free(n);
      return;
    }
}

static void ll_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
  struct node *p = node_of(parent);
  char path[PATH_MAX];
  struct fuse_entry_param e;
  memset(&e, 0, sizeof e);
  if (snprintf(path, sizeof path, "%s/%s", strcmp(p->path, "/") ? p->path : "", name) >= (int)sizeof path)
    return (void)fuse_reply_err(req, ENAMETOOLONG);
  if (fstatat(AT_FDCWD, path, &e.attr, AT_SYMLINK_NOFOLLOW) != 0) {
    int err = errno;
    if (err == ENOENT && negative_timeout > 0) {
      e.ino = 0;
      e.entry_timeout = negative_timeout;
      return (void)fuse_reply_entry(req, &e);
    }
    return (void)fuse_reply_err(req, err);
  }
  struct node *n = find_or_add(path, &e.attr);
  e.ino = ino_of(n);
  e.attr_timeout = attr_timeout;
  e.entry_timeout = entry_timeout;
  if (fuse_reply_entry(req, &e) == 0) n->nlookup++;
}

static void forget_one(fuse_ino_t ino, uint64_t nlookup) {
  struct node *n = node_of(ino);
  if (n == &root) return;
  if (n->nlookup > nlookup) n->nlookup -= nlookup;
  else drop(n);
}
static void ll_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
  forget_one(ino, nlookup);
  fuse_reply_none(req);
}
static void ll_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *f) {
  for (size_t i = 0; i < count; i++) forget_one(f[i].ino, f[i].nlookup);
  fuse_reply_none(req);
}

static void ll_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  (void)fi;
  struct stat st;
  if (fstatat(AT_FDCWD, node_of(ino)->path, &st, AT_SYMLINK_NOFOLLOW) != 0)
    return (void)fuse_reply_err(req, errno);
  fuse_reply_attr(req, &st, attr_timeout);
}

static void ll_readlink(fuse_req_t req, fuse_ino_t ino) {
  char buf[PATH_MAX + 1];
  ssize_t n = readlink(node_of(ino)->path, buf, PATH_MAX);
  if (n < 0) return (void)fuse_reply_err(req, errno);
  buf[n] = 0;
  fuse_reply_readlink(req, buf);
}

struct dirent_copy {
  ino_t ino;
  unsigned char type;
  char *name;
};
struct dir {
  size_t count;
  struct dirent_copy *entries;
};

static void ll_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  DIR *d = opendir(node_of(ino)->path);
  if (!d) return (void)fuse_reply_err(req, errno);
  struct dir *dir = calloc(1, sizeof *dir);
  size_t cap = 64;
  dir->entries = malloc(cap * sizeof *dir->entries);
  struct dirent *de;
  while ((de = readdir(d))) {
    if (dir->count == cap) dir->entries = realloc(dir->entries, (cap *= 2) * sizeof *dir->entries);
    dir->entries[dir->count++] = (struct dirent_copy){de->d_ino, de->d_type, strdup(de->d_name)};
  }
  closedir(d);
  fi->fh = (uintptr_t)dir;
  fi->cache_readdir = keep_cache;
  fi->keep_cache = keep_cache;
  fuse_reply_open(req, fi);
}

static void ll_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  (void)ino;
  struct dir *dir = (struct dir *)(uintptr_t)fi->fh;
  char *buf = malloc(size);
  size_t used = 0;
  for (size_t i = (size_t)off; i < dir->count; i++) {
    struct stat st;
    memset(&st, 0, sizeof st);
    st.st_ino = dir->entries[i].ino;
    st.st_mode = (mode_t)dir->entries[i].type << 12;
    size_t need = fuse_add_direntry(req, buf + used, size - used, dir->entries[i].name, &st, (off_t)i + 1);
    if (need > size - used) break;
    used += need;
  }
  fuse_reply_buf(req, buf, used);
  free(buf);
}

static void ll_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  (void)ino;
  struct dir *dir = (struct dir *)(uintptr_t)fi->fh;
  for (size_t i = 0; i < dir->count; i++) free(dir->entries[i].name);
  free(dir->entries);
  free(dir);
  fuse_reply_err(req, 0);
}

static void ll_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  if ((fi->flags & O_ACCMODE) != O_RDONLY) return (void)fuse_reply_err(req, EROFS);
  int fd = open(node_of(ino)->path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return (void)fuse_reply_err(req, errno);
  fi->fh = (uint64_t)fd;
  fi->keep_cache = keep_cache;
  fuse_reply_open(req, fi);
}

static void ll_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  (void)ino;
  struct fuse_bufvec buf = FUSE_BUFVEC_INIT(size);
  buf.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
  buf.buf[0].fd = (int)fi->fh;
  buf.buf[0].pos = off;
  fuse_reply_data(req, &buf, 0);
}

static void ll_read_by_node(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  (void)fi;
  struct node *n = node_of(ino);
  if (n->fd < 0) n->fd = open(n->path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (n->fd < 0) return (void)fuse_reply_err(req, errno);
  struct fuse_bufvec buf = FUSE_BUFVEC_INIT(size);
  buf.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
  buf.buf[0].fd = n->fd;
  buf.buf[0].pos = off;
  fuse_reply_data(req, &buf, 0);
}

static void ll_init(void *userdata, struct fuse_conn_info *conn) {
  (void)userdata;
  if (no_open) conn->want |= conn->capable & FUSE_CAP_NO_OPEN_SUPPORT;
}

static void ll_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  (void)ino;
  close((int)fi->fh);
  fuse_reply_err(req, 0);
}

static void ll_statfs(fuse_req_t req, fuse_ino_t ino) {
  (void)ino;
  struct statvfs st;
  if (statvfs(root.path, &st) != 0) return (void)fuse_reply_err(req, errno);
  fuse_reply_statfs(req, &st);
}

static struct fuse_lowlevel_ops ops = {
  .init = ll_init,
  .lookup = ll_lookup,
  .forget = ll_forget,
  .forget_multi = ll_forget_multi,
  .getattr = ll_getattr,
  .readlink = ll_readlink,
  .opendir = ll_opendir,
  .readdir = ll_readdir,
  .releasedir = ll_releasedir,
  .open = ll_open,
  .read = ll_read,
  .release = ll_release,
  .statfs = ll_statfs,
};

int main(int argc, char **argv) {
  if (argc != 7 && argc != 8) {
    fprintf(stderr, "usage: %s SRC MNT ENTRY_TIMEOUT ATTR_TIMEOUT NEGATIVE_TIMEOUT KEEP_CACHE [NO_OPEN]\n", argv[0]);
    return 2;
  }
  root.path = realpath(argv[1], NULL);
  if (!root.path) return perror(argv[1]), 1;
  entry_timeout = atof(argv[3]);
  attr_timeout = atof(argv[4]);
  negative_timeout = atof(argv[5]);
  keep_cache = atoi(argv[6]);
  no_open = argc == 8 && atoi(argv[7]);
  if (no_open) {
    ops.open = NULL;
    ops.release = NULL;
    ops.read = ll_read_by_node;
  }
  char *fargv[] = {argv[0], "-o", "ro,fsname=cmirror,default_permissions,allow_other", NULL};
  struct fuse_args args = FUSE_ARGS_INIT(3, fargv);
  struct fuse_session *se = fuse_session_new(&args, &ops, sizeof ops, NULL);
  if (!se) return 1;
  if (fuse_set_signal_handlers(se) != 0) return 1;
  if (fuse_session_mount(se, argv[2]) != 0) return 1;
  printf("ready\n");
  fflush(stdout);
  int res = fuse_session_loop(se);
  fuse_session_unmount(se);
  fuse_remove_signal_handlers(se);
  fuse_session_destroy(se);
  return res ? 1 : 0;
}
