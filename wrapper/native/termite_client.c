/*
 * termite-client: the wrapper's fast path in C (opt-in; the Deno wrapper,
 * bin/termite-wrap, stays the default). Symlinked under a tool's name (gcc,
 * cc, termite-sh, ...), it hands the command to the master over its unix
 * socket with the wrapper protocol of wrapper/protocol.ts and behaves like the
 * tool: the same stdout/stderr bytes and exit status. It finds, checks and
 * cleans exactly as wrapper/client.ts does (findSocket, distrustSocket,
 * cleanPath, runShellBuiltin). Every other path (no socket, a socket it does
 * not trust, no master listening, termite-make, the launcher names, a bad
 * shell command line) execs bin/termite-wrap beside it, telling it the link's
 * path in TERMITE_WRAP_LINK, so messages and the local fallback live in one
 * place. Built by scripts/build_client.ts: gcc -O2 -Wall -Wextra -Werror.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* wrapper/protocol.ts */
#define PROTOCOL_VERSION 1
#define FRAME_BYTES_MAX (1u << 20)
#define F_REQUEST 0x52
#define F_STDIN 0x49
#define F_CANCEL 0x43
#define F_STDOUT 0x4f
#define F_STDERR 0x45
#define F_EXIT 0x58
/* wrapper/client.ts */
#define SOCKET_NAME ".termite-socket"
#define STDIN_CHUNK (256 * 1024)
/* Nesting of JSON values skipped in an exit frame. */
#define JSON_DEPTH_MAX 32

extern char **environ;

/* ---- growable byte buffers, bounded ---- */

/*
 * Bytes past `max` are counted in `len` but not kept: the request's size is
 * known (for the message) without holding more than a frame.
 */
struct buf {
  char *p;
  size_t len, cap, max;
};

static void die_oom(void) {
  static const char msg[] = "termite: out of memory\n";
  if (write(2, msg, sizeof msg - 1) < 0) _exit(255);
  _exit(255);
}

static void buf_add(struct buf *b, const void *data, size_t n) {
  if (b->len + n > b->max) {
    b->len += n;
    return;
  }
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + n) cap *= 2;
    if (cap > b->max) cap = b->max;
    char *p = realloc(b->p, cap);
    if (!p) die_oom();
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->len, data, n);
  b->len += n;
}

static void buf_str(struct buf *b, const char *s) { buf_add(b, s, strlen(s)); }

static void buf_byte(struct buf *b, char c) { buf_add(b, &c, 1); }

/* ---- UTF-8, as TextDecoder and Rust's from_utf8_lossy read it ---- */

/*
 * Length of the valid UTF-8 sequence at s (n bytes left), or 0 when invalid;
 * then *skip is the maximal subpart to replace with one U+FFFD (at least 1).
 */
static size_t utf8_seq(const unsigned char *s, size_t n, size_t *skip) {
  unsigned char c = s[0];
  size_t need;
  unsigned char lo = 0x80, hi = 0xbf;
  if (c < 0x80) return 1;
  if (c >= 0xc2 && c <= 0xdf) {
    need = 1;
  } else if (c >= 0xe0 && c <= 0xef) {
    need = 2;
    if (c == 0xe0) lo = 0xa0;
    if (c == 0xed) hi = 0x9f;
  } else if (c >= 0xf0 && c <= 0xf4) {
    need = 3;
    if (c == 0xf0) lo = 0x90;
    if (c == 0xf4) hi = 0x8f;
  } else {
    *skip = 1;
    return 0;
  }
  size_t i = 1;
  for (; i <= need; i++) {
    if (i >= n || s[i] < lo || s[i] > hi) {
      *skip = i;
      return 0;
    }
    lo = 0x80;
    hi = 0xbf;
  }
  return need + 1;
}

static int utf8_valid(const char *s, size_t n) {
  size_t skip;
  for (size_t i = 0; i < n;) {
    size_t k = utf8_seq((const unsigned char *)s + i, n - i, &skip);
    if (k == 0) return 0;
    i += k;
  }
  return 1;
}

/* Appends s as a JSON string, as JSON.stringify writes it, invalid UTF-8 replaced. */
static void json_string(struct buf *b, const char *s, size_t n) {
  static const char hex[] = "0123456789abcdef";
  buf_byte(b, '"');
  for (size_t i = 0; i < n;) {
    unsigned char c = (unsigned char)s[i];
    if (c < 0x80) {
      if (c == '"' || c == '\\') {
        buf_byte(b, '\\');
        buf_byte(b, (char)c);
      } else if (c < 0x20) {
        const char *esc = c == '\b' ? "\\b"
                        : c == '\f' ? "\\f"
                        : c == '\n' ? "\\n"
                        : c == '\r' ? "\\r"
                        : c == '\t' ? "\\t"
                                    : NULL;
        if (esc) {
          buf_str(b, esc);
        } else {
          char u[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
          buf_add(b, u, 6);
        }
      } else {
        buf_byte(b, (char)c);
      }
      i++;
      continue;
    }
    size_t skip;
    size_t k = utf8_seq((const unsigned char *)s + i, n - i, &skip);
    if (k) {
      buf_add(b, s + i, k);
      i += k;
    } else {
      buf_str(b, "\xef\xbf\xbd");
      i += skip;
    }
  }
  buf_byte(b, '"');
}

/* Writes s to fd with invalid UTF-8 replaced (what console.error writes). */
static void lossy_append(struct buf *b, const char *s, size_t n) {
  for (size_t i = 0; i < n;) {
    size_t skip;
    size_t k = utf8_seq((const unsigned char *)s + i, n - i, &skip);
    if (k) {
      buf_add(b, s + i, k);
      i += k;
    } else {
      buf_str(b, "\xef\xbf\xbd");
      i += skip;
    }
  }
}

/* ---- output ---- */

/* Writes all of data to fd (waiting out a non-blocking fd); -1 with errno on failure. */
static int write_all(int fd, const void *data, size_t n) {
  const char *p = data;
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        struct pollfd pfd = {.fd = fd, .events = POLLOUT};
        poll(&pfd, 1, -1);
        continue;
      }
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* "termite: " + message + "\n" on stderr, as console.error prints it. */
static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...) {
  char msg[4096];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if ((size_t)n >= sizeof msg) n = sizeof msg - 1;
  struct buf b = {.max = sizeof msg + 64};
  buf_str(&b, "termite: ");
  lossy_append(&b, msg, (size_t)n);
  buf_byte(&b, '\n');
  write_all(2, b.p, b.len);
  free(b.p);
}

/* Deno's wording of an OS error: "Broken pipe (os error 32)". */
static const char *os_error(int err) {
  static char text[256];
  snprintf(text, sizeof text, "%s (os error %d)", strerror(err), err);
  return text;
}

/* ---- paths ---- */

static char *xstrdup(const char *s) {
  char *p = strdup(s);
  if (!p) die_oom();
  return p;
}

/* dir + "/" + name, with "/" for a dir of "/" (`${dir === "/" ? "" : dir}/${name}`). */
static char *join(const char *dir, const char *name) {
  size_t d = strcmp(dir, "/") == 0 ? 0 : strlen(dir), n = strlen(name);
  char *p = malloc(d + n + 2);
  if (!p) die_oom();
  memcpy(p, dir, d);
  p[d] = '/';
  memcpy(p + d + 1, name, n + 1);
  return p;
}

/*
 * An absolute path with ".", ".." and repeated slashes taken out, as Deno
 * resolves the script path it is given (the link, when run through a shebang).
 */
static char *normalize(const char *path, const char *cwd) {
  char *full = path[0] == '/' ? xstrdup(path) : join(cwd, path);
  size_t n = strlen(full);
  char *out = malloc(n + 2);
  if (!out) die_oom();
  size_t o = 0;
  for (size_t i = 0; i < n;) {
    while (i < n && full[i] == '/') i++;
    size_t start = i;
    while (i < n && full[i] != '/') i++;
    size_t len = i - start;
    if (len == 0 || (len == 1 && full[start] == '.')) continue;
    if (len == 2 && full[start] == '.' && full[start + 1] == '.') {
      while (o > 0 && out[o - 1] != '/') o--;
      if (o > 0) o--;
      continue;
    }
    out[o++] = '/';
    memcpy(out + o, full + start, len);
    o += len;
  }
  if (o == 0) out[o++] = '/';
  out[o] = 0;
  free(full);
  return out;
}

/* ---- the environment, as Deno.env.toObject() gives it ---- */

struct var {
  const char *entry; /* "KEY=VALUE" */
  size_t key_len;
  size_t index;
};

static int var_cmp(const void *a, const void *b) {
  const struct var *x = a, *y = b;
  size_t n = x->key_len < y->key_len ? x->key_len : y->key_len;
  int c = memcmp(x->entry, y->entry, n);
  if (c) return c;
  if (x->key_len != y->key_len) return x->key_len < y->key_len ? -1 : 1;
  return x->index < y->index ? -1 : x->index > y->index;
}

/*
 * The variables Deno sees: "KEY=VALUE" with a key not starting with "=", key
 * and value valid UTF-8; of repeated keys the last. Sorted by key.
 */
static struct var *env_vars(size_t *count) {
  size_t n = 0;
  while (environ[n]) n++;
  struct var *vars = calloc(n + 1, sizeof *vars);
  if (!vars) die_oom();
  size_t m = 0;
  for (size_t i = 0; i < n; i++) {
    const char *e = environ[i];
    const char *eq = strchr(e, '=');
    if (!eq || eq == e || !utf8_valid(e, strlen(e))) continue;
    /* bin/termite-wrap deletes it before any job sees the environment. */
    if (strncmp(e, "TERMITE_WRAP_LINK=", 18) == 0) continue;
    vars[m++] = (struct var){.entry = e, .key_len = (size_t)(eq - e), .index = i};
  }
  qsort(vars, m, sizeof *vars, var_cmp);
  size_t k = 0;
  for (size_t i = 0; i < m; i++) {
    int last = i + 1 == m || vars[i + 1].key_len != vars[i].key_len ||
               memcmp(vars[i + 1].entry, vars[i].entry, vars[i].key_len) != 0;
    if (last) vars[k++] = vars[i];
  }
  *count = k;
  return vars;
}

static const char *env_get(const struct var *vars, size_t n, const char *key) {
  size_t len = strlen(key);
  for (size_t i = 0; i < n; i++) {
    if (vars[i].key_len == len && memcmp(vars[i].entry, key, len) == 0) {
      return vars[i].entry + len + 1;
    }
  }
  return NULL;
}

/* ---- findSocket, distrustSocket, cleanPath (wrapper/client.ts) ---- */

static char *find_socket(const char *cwd, const char *named) {
  if (named && *named) return named[0] == '/' ? xstrdup(named) : join(cwd, named);
  char *dir = xstrdup(cwd);
  for (;;) {
    char *candidate = join(dir, SOCKET_NAME);
    struct stat st;
    if (lstat(candidate, &st) == 0 && (S_ISSOCK(st.st_mode) || S_ISLNK(st.st_mode))) {
      free(dir);
      return candidate;
    }
    free(candidate);
    if (strcmp(dir, "/") == 0) {
      free(dir);
      return NULL;
    }
    char *slash = strrchr(dir, '/');
    if (slash == dir) {
      dir[1] = 0;
    } else {
      *slash = 0;
    }
  }
}

/* Whether the socket at path may be given the command (distrustSocket() returns null). */
static int trust_socket(const char *path, uid_t uid) {
  struct stat st;
  if (lstat(path, &st) != 0 || !S_ISSOCK(st.st_mode)) return 0;
  if ((st.st_uid != uid && st.st_uid != 0) || (st.st_mode & 022)) return 0;
  const char *slash = strrchr(path, '/');
  if (!slash) return 0;
  size_t d = slash == path ? 1 : (size_t)(slash - path);
  char *dir = strndup(path, d);
  if (!dir) die_oom();
  int ok = stat(dir, &st) == 0 && (st.st_uid == uid || st.st_uid == 0) && !(st.st_mode & 022);
  free(dir);
  return ok;
}

static char *real(const char *dir, const char *cwd) {
  char *full = dir[0] == '/' ? xstrdup(dir) : join(cwd, dir);
  char *r = realpath(full, NULL);
  free(full);
  return r;
}

/* PATH without the wrapper's directory, in any spelling (cleanPath). */
static char *clean_path(const char *path, const char *wrapper_dir, const char *cwd) {
  if (!*wrapper_dir) return xstrdup(path);
  char *self = real(wrapper_dir, cwd);
  if (!self) self = xstrdup(wrapper_dir);
  struct buf out = {.max = SIZE_MAX};
  int first = 1;
  for (const char *p = path;;) {
    const char *end = strchr(p, ':');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    char *dir = strndup(p, len);
    if (!dir) die_oom();
    int keep = len > 0 && strcmp(dir, wrapper_dir) != 0;
    if (keep) {
      char *r = real(dir, cwd);
      if (r && strcmp(r, self) == 0) keep = 0;
      free(r);
    }
    if (keep) {
      if (!first) buf_byte(&out, ':');
      buf_add(&out, dir, len);
      first = 0;
    }
    free(dir);
    if (!end) break;
    p = end + 1;
  }
  buf_byte(&out, 0);
  free(self);
  return out.p;
}

/* ---- runShellBuiltin (wrapper/client.ts) ---- */

/* Length of the JavaScript white space or line terminator at s, or 0. */
static size_t js_space(const unsigned char *s, size_t n) {
  if (n >= 1 && (s[0] == ' ' || (s[0] >= '\t' && s[0] <= '\r'))) return 1;
  if (n >= 2 && s[0] == 0xc2 && s[1] == 0xa0) return 2; /* U+00A0 */
  if (n < 3) return 0;
  unsigned cp = ((s[0] & 0x0fu) << 12) | ((s[1] & 0x3fu) << 6) | (s[2] & 0x3fu);
  if ((s[0] & 0xf0) != 0xe0 || (s[1] & 0xc0) != 0x80 || (s[2] & 0xc0) != 0x80) return 0;
  if (cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 || cp == 0x2029 ||
      cp == 0x202f || cp == 0x205f || cp == 0x3000 || cp == 0xfeff) {
    return 3;
  }
  return 0;
}

/* Whether s[i - k, i) is a JavaScript space ending at i (k of 1, 2 or 3 bytes). */
static size_t js_space_before(const unsigned char *s, size_t i) {
  for (size_t k = 1; k <= 3 && k <= i; k++) {
    if (js_space(s + i - k, k) == k) return k;
  }
  return 0;
}

static int builtin_char(unsigned char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
         strchr("_.,:=@%+/ -", c) != NULL;
}

/*
 * Runs script here when runShellBuiltin() would (true, false, :, plain echo):
 * returns 1 and sets *code and out; 0 when the script goes to the master.
 */
static int shell_builtin(const char *script, int *code, struct buf *out) {
  const unsigned char *s = (const unsigned char *)script;
  size_t start = 0, end = strlen(script), k;
  while (start < end && (k = js_space(s + start, end - start)) > 0) start += k;
  while (end > start && (k = js_space_before(s + start, end - start)) > 0) end -= k;
  for (size_t i = start; i < end; i++) {
    if (!builtin_char(s[i])) return 0;
  }
  /* The words, split on spaces. */
  const char *words[64];
  size_t lens[64], n = 0;
  for (size_t i = start; i < end;) {
    while (i < end && s[i] == ' ') i++;
    if (i == end) break;
    size_t w = i;
    while (i < end && s[i] != ' ') i++;
    if (n == 64) return 0; /* Long echo lines go to the master. */
    words[n] = script + w;
    lens[n++] = i - w;
  }
#define IS(j, lit) (lens[j] == sizeof(lit) - 1 && memcmp(words[j], lit, lens[j]) == 0)
  if (n == 0) return 0;
  if (IS(0, "true") || IS(0, ":")) {
    *code = 0;
    return 1;
  }
  if (IS(0, "false")) {
    *code = 1;
    return 1;
  }
  if (!IS(0, "echo")) return 0;
  size_t from = 1;
  int newline = 1;
  if (n > 1 && IS(1, "-n")) {
    from = 2;
    newline = 0;
  } else if (n > 1 && words[1][0] == '-') {
    return 0;
  }
#undef IS
  for (size_t j = from; j < n; j++) {
    if (j > from) buf_byte(out, ' ');
    buf_add(out, words[j], lens[j]);
  }
  if (newline) buf_byte(out, '\n');
  *code = 0;
  return 1;
}

/* ---- the Deno wrapper, for every other path ---- */

static const char *link_path; /* the link as run, absolute */

static void exec_deno(char **argv) {
  char *self = realpath("/proc/self/exe", NULL);
  char *slash = self ? strrchr(self, '/') : NULL;
  if (!slash) {
    say("cannot find the Deno wrapper: /proc/self/exe: %s", os_error(errno));
    exit(255);
  }
  *slash = 0;
  char *deno_wrapper = join(self, "termite-wrap");
  if (link_path) {
    setenv("TERMITE_WRAP_LINK", link_path, 1);
  } else {
    unsetenv("TERMITE_WRAP_LINK");
  }
  execv(deno_wrapper, argv);
  say("cannot run the Deno wrapper %s: %s", deno_wrapper, os_error(errno));
  exit(255);
}

/* ---- the connection ---- */

static int signal_pipe[2] = {-1, -1};

static void on_signal(int sig) {
  (void)sig;
  int saved = errno;
  char c = 0;
  if (write(signal_pipe[1], &c, 1) < 0) { /* Full: a cancel is pending anyway. */
  }
  errno = saved;
}

static void frame_header(char *h, unsigned type, size_t payload) {
  uint32_t len = (uint32_t)payload + 1;
  h[0] = (char)(len >> 24);
  h[1] = (char)(len >> 16);
  h[2] = (char)(len >> 8);
  h[3] = (char)len;
  h[4] = (char)type;
}

/* What an exit frame says: its code and error (NULL when none). */
struct exit_info {
  long code;
  int has_code;
  struct buf error;
  int has_error;
};

struct json {
  const char *p, *end;
};

static void json_ws(struct json *j) {
  while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')) {
    j->p++;
  }
}

static int hex4(const char *p, unsigned *out) {
  unsigned v = 0;
  for (int i = 0; i < 4; i++) {
    char c = p[i];
    v <<= 4;
    if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
    else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
    else return 0;
  }
  *out = v;
  return 1;
}

static void utf8_put(struct buf *b, unsigned cp) {
  char u[4];
  if (cp < 0x80) {
    buf_byte(b, (char)cp);
  } else if (cp < 0x800) {
    u[0] = (char)(0xc0 | (cp >> 6));
    u[1] = (char)(0x80 | (cp & 0x3f));
    buf_add(b, u, 2);
  } else if (cp < 0x10000) {
    u[0] = (char)(0xe0 | (cp >> 12));
    u[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
    u[2] = (char)(0x80 | (cp & 0x3f));
    buf_add(b, u, 3);
  } else {
    u[0] = (char)(0xf0 | (cp >> 18));
    u[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    u[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    u[3] = (char)(0x80 | (cp & 0x3f));
    buf_add(b, u, 4);
  }
}

/* A JSON string at j->p into out (may be NULL): 0 when malformed. */
static int json_parse_string(struct json *j, struct buf *out) {
  if (j->p >= j->end || *j->p != '"') return 0;
  j->p++;
  while (j->p < j->end) {
    unsigned char c = (unsigned char)*j->p;
    if (c == '"') {
      j->p++;
      return 1;
    }
    if (c < 0x20) return 0;
    if (c != '\\') {
      const char *run = j->p;
      while (j->p < j->end && *j->p != '"' && *j->p != '\\' && (unsigned char)*j->p >= 0x20) {
        j->p++;
      }
      if (out) lossy_append(out, run, (size_t)(j->p - run));
      continue;
    }
    if (j->end - j->p < 2) return 0;
    char e = j->p[1];
    j->p += 2;
    const char *simple = strchr("\"\\/bfnrt", e);
    if (e && simple) {
      static const char to[] = "\"\\/\b\f\n\r\t";
      if (out) buf_byte(out, to[simple - "\"\\/bfnrt"]);
      continue;
    }
    if (e != 'u' || j->end - j->p < 4) return 0;
    unsigned cp;
    if (!hex4(j->p, &cp)) return 0;
    j->p += 4;
    if (cp >= 0xd800 && cp <= 0xdbff && j->end - j->p >= 6 && j->p[0] == '\\' &&
        j->p[1] == 'u') {
      unsigned lo;
      if (hex4(j->p + 2, &lo) && lo >= 0xdc00 && lo <= 0xdfff) {
        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
        j->p += 6;
      }
    }
    if (cp >= 0xd800 && cp <= 0xdfff) cp = 0xfffd; /* A lone surrogate prints as U+FFFD. */
    if (out) utf8_put(out, cp);
  }
  return 0;
}

/* A JSON number at j->p; *integer set when it is an integer that fits in an int. */
static int json_parse_number(struct json *j, long *value, int *integer) {
  const char *start = j->p;
  if (j->p < j->end && *j->p == '-') j->p++;
  if (j->p >= j->end || *j->p < '0' || *j->p > '9') return 0;
  if (*j->p == '0') {
    j->p++;
  } else {
    while (j->p < j->end && *j->p >= '0' && *j->p <= '9') j->p++;
  }
  int plain = 1;
  if (j->p < j->end && *j->p == '.') {
    plain = 0;
    j->p++;
    if (j->p >= j->end || *j->p < '0' || *j->p > '9') return 0;
    while (j->p < j->end && *j->p >= '0' && *j->p <= '9') j->p++;
  }
  if (j->p < j->end && (*j->p == 'e' || *j->p == 'E')) {
    plain = 0;
    j->p++;
    if (j->p < j->end && (*j->p == '+' || *j->p == '-')) j->p++;
    if (j->p >= j->end || *j->p < '0' || *j->p > '9') return 0;
    while (j->p < j->end && *j->p >= '0' && *j->p <= '9') j->p++;
  }
  *integer = 0;
  if (plain && j->p - start <= 10) {
    char digits[16];
    memcpy(digits, start, (size_t)(j->p - start));
    digits[j->p - start] = 0;
    *value = strtol(digits, NULL, 10);
    *integer = *value >= INT_MIN && *value <= INT_MAX;
  }
  return 1;
}

static int json_skip_value(struct json *j, int depth);

static int json_literal(struct json *j, const char *lit) {
  size_t n = strlen(lit);
  if ((size_t)(j->end - j->p) < n || memcmp(j->p, lit, n) != 0) return 0;
  j->p += n;
  return 1;
}

static int json_skip_value(struct json *j, int depth) {
  json_ws(j);
  if (j->p >= j->end || depth > JSON_DEPTH_MAX) return 0;
  char c = *j->p;
  if (c == '"') return json_parse_string(j, NULL);
  if (c == 't') return json_literal(j, "true");
  if (c == 'f') return json_literal(j, "false");
  if (c == 'n') return json_literal(j, "null");
  if (c == '[' || c == '{') {
    char close = c == '[' ? ']' : '}';
    j->p++;
    json_ws(j);
    if (j->p < j->end && *j->p == close) {
      j->p++;
      return 1;
    }
    for (;;) {
      if (c == '{') {
        json_ws(j);
        if (!json_parse_string(j, NULL)) return 0;
        json_ws(j);
        if (j->p >= j->end || *j->p != ':') return 0;
        j->p++;
      }
      if (!json_skip_value(j, depth + 1)) return 0;
      json_ws(j);
      if (j->p >= j->end) return 0;
      if (*j->p == close) {
        j->p++;
        return 1;
      }
      if (*j->p != ',') return 0;
      j->p++;
    }
  }
  long v;
  int integer;
  return json_parse_number(j, &v, &integer);
}

/* The exit frame's JSON: {"code": integer, "error"?: string}; 0 when malformed. */
static int parse_exit(const char *payload, size_t n, struct exit_info *x) {
  struct json j = {.p = payload, .end = payload + n};
  json_ws(&j);
  if (j.p >= j.end || *j.p != '{') return 0;
  j.p++;
  json_ws(&j);
  if (j.p < j.end && *j.p == '}') {
    j.p++;
  } else {
    for (;;) {
      json_ws(&j);
      struct buf key = {.max = 64};
      int ok = json_parse_string(&j, &key);
      int is_code = ok && key.len == 4 && memcmp(key.p, "code", 4) == 0;
      int is_error = ok && key.len == 5 && memcmp(key.p, "error", 5) == 0;
      free(key.p);
      if (!ok) return 0;
      json_ws(&j);
      if (j.p >= j.end || *j.p != ':') return 0;
      j.p++;
      json_ws(&j);
      if (is_code) {
        int integer;
        if (!json_parse_number(&j, &x->code, &integer)) return 0;
        x->has_code = integer;
      } else if (is_error && j.p < j.end && *j.p == '"') {
        x->error.len = 0;
        if (!json_parse_string(&j, &x->error)) return 0;
        x->has_error = x->error.len > 0;
      } else if (is_error && j.p < j.end && (*j.p == 'n' || *j.p == 'f')) {
        if (!json_skip_value(&j, 0)) return 0;
        x->has_error = 0;
      } else if (is_error) {
        return 0; /* An error that is not a string: nothing to print. */
      } else if (!json_skip_value(&j, 0)) {
        return 0;
      }
      json_ws(&j);
      if (j.p >= j.end) return 0;
      if (*j.p == '}') {
        j.p++;
        break;
      }
      if (*j.p != ',') return 0;
      j.p++;
    }
  }
  json_ws(&j);
  return j.p == j.end && x->has_code;
}

/* Not an exit: more frames follow. */
#define FRAME_MORE INT_MIN

/* One whole frame from the master: FRAME_MORE, or the exit status to end with. */
static int handle_frame(const char *payload, size_t payload_len) {
  unsigned char type = (unsigned char)payload[0];
  const char *body = payload + 1;
  size_t body_len = payload_len - 1;
  if (type == F_STDOUT || type == F_STDERR) {
    if (write_all(type == F_STDOUT ? 1 : 2, body, body_len) < 0) {
      say("lost the master: %s", os_error(errno));
      return 255;
    }
    return FRAME_MORE;
  }
  if (type != F_EXIT) {
    say("unexpected frame type %u from the master", type);
    return 255;
  }
  struct exit_info x = {.error = {.max = FRAME_BYTES_MAX}};
  if (!parse_exit(body, body_len, &x)) {
    say("lost the master: a malformed exit frame (not {\"code\": integer})");
    return 255;
  }
  if (x.has_error) {
    struct buf line = {.max = FRAME_BYTES_MAX + 64};
    buf_str(&line, "termite: ");
    buf_add(&line, x.error.p, x.error.len);
    buf_byte(&line, '\n');
    write_all(2, line.p, line.len);
  }
  return (int)x.code;
}

/* The job's result: stdout/stderr frames written, the exit frame's code returned. */
static int run_job(int sock, int with_stdin) {
  /* Frames to the master: whole frames only (a cancel never splits one). */
  struct buf out = {.max = STDIN_CHUNK + 64};
  size_t out_off = 0;
  int writable = 1, stdin_open = with_stdin, cancel_queued = 0;
  char header[4];
  size_t have_header = 0, have_payload = 0, payload_len = 0;
  char *payload = malloc(FRAME_BYTES_MAX);
  char *chunk = with_stdin ? malloc(STDIN_CHUNK) : NULL;
  if (!payload || (with_stdin && !chunk)) die_oom();
  for (;;) {
    struct pollfd pfd[3];
    nfds_t n = 0;
    pfd[n++] = (struct pollfd){.fd = sock, .events = POLLIN | (out.len > out_off ? POLLOUT : 0)};
    pfd[n++] = (struct pollfd){.fd = signal_pipe[0], .events = POLLIN};
    int stdin_slot = -1;
    if (stdin_open && out.len == out_off) {
      stdin_slot = (int)n;
      pfd[n++] = (struct pollfd){.fd = 0, .events = POLLIN};
    }
    if (poll(pfd, n, -1) < 0) {
      if (errno == EINTR) continue;
      say("lost the master: %s", os_error(errno));
      return 255;
    }
    if (pfd[1].revents) {
      char drain[64];
      if (read(signal_pipe[0], drain, sizeof drain) < 0) { /* EAGAIN: nothing more. */
      }
      if (writable && !cancel_queued) {
        char h[5];
        frame_header(h, F_CANCEL, 0);
        buf_add(&out, h, 5);
        cancel_queued = 1;
      }
    }
    if (stdin_slot >= 0 && pfd[stdin_slot].revents) {
      ssize_t r = read(0, chunk, STDIN_CHUNK);
      if (r < 0 && errno != EINTR && errno != EAGAIN) {
        stdin_open = 0; /* As the Deno wrapper: stdin no longer matters. */
      } else if (r >= 0) {
        char h[5];
        frame_header(h, F_STDIN, (size_t)r);
        out.len = out_off = 0;
        buf_add(&out, h, 5);
        buf_add(&out, chunk, (size_t)r);
        if (r == 0) stdin_open = 0;
      }
    }
    if (out.len > out_off && writable) {
      ssize_t w = send(sock, out.p + out_off, out.len - out_off, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (w >= 0) {
        out_off += (size_t)w;
        if (out_off == out.len) {
          out.len = out_off = 0;
          cancel_queued = 0;
        }
      } else if (errno != EAGAIN && errno != EINTR) {
        writable = stdin_open = 0; /* The master went away or the job ended. */
        out.len = out_off = 0;
      }
    }
    if (!(pfd[0].revents & (POLLIN | POLLHUP | POLLERR))) continue;
    /* Read frames until the socket has no more: each header, then exactly its length. */
    for (;;) {
      ssize_t r;
      if (have_header < 4) {
        r = recv(sock, header + have_header, 4 - have_header, MSG_DONTWAIT);
      } else {
        r = recv(sock, payload + have_payload, payload_len - have_payload, MSG_DONTWAIT);
      }
      if (r < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN) break;
        say("lost the master: %s", os_error(errno));
        return 255;
      }
      if (r == 0) {
        if (have_header == 0) {
          say("the master closed the connection before the job ended");
        } else {
          say("lost the master: %s",
              have_header < 4 ? "Truncated frame header" : "Truncated frame");
        }
        return 255;
      }
      if (have_header < 4) {
        have_header += (size_t)r;
        if (have_header < 4) continue;
        const unsigned char *h = (const unsigned char *)header;
        uint32_t len = (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | h[3];
        if (len < 1 || len > FRAME_BYTES_MAX) {
          say("lost the master: Bad frame length: %u", len);
          return 255;
        }
        payload_len = len;
        have_payload = 0;
        continue;
      }
      have_payload += (size_t)r;
      if (have_payload < payload_len) continue;
      have_header = 0;
      int code = handle_frame(payload, payload_len);
      if (code != FRAME_MORE) return code;
    }
  }
}

int main(int argc, char **argv) {
  const char *execfn = (const char *)getauxval(AT_EXECFN);
  char cwd[PATH_MAX];
  if (!execfn || !getcwd(cwd, sizeof cwd) || !utf8_valid(cwd, strlen(cwd))) exec_deno(argv);
  char *link = normalize(execfn, cwd);
  link_path = link;
  const char *slash = strrchr(link, '/');
  const char *tool = slash + 1;
  char *wrapper_dir = strndup(link, (size_t)(slash - link));
  if (!wrapper_dir) die_oom();
  if (!utf8_valid(link, strlen(link))) exec_deno(argv);
  if (strcmp(tool, "termite-client") == 0) {
    link_path = NULL; /* Run by its own name: as bin/termite-wrap run by its own. */
    exec_deno(argv);
  }
  if (strcmp(tool, "termite-make") == 0 || strcmp(tool, "termite") == 0 ||
      strcmp(tool, "termite-wrap") == 0) {
    exec_deno(argv);
  }
  int shell = strcmp(tool, "sh") == 0 || strcmp(tool, "termite-sh") == 0 ||
              strcmp(tool, "bash") == 0;
  if (shell) {
    if (argc < 3 || strcmp(argv[1], "-c") != 0) exec_deno(argv); /* Its usage message. */
    int code;
    struct buf out = {.max = 1 << 20};
    if (shell_builtin(argv[2], &code, &out)) {
      signal(SIGPIPE, SIG_IGN); /* As Deno: a closed stdout is an error, not a signal. */
      if (out.len && write_all(1, out.p, out.len) < 0) {
        say("%s", os_error(errno));
        return 1;
      }
      return code;
    }
  }

  size_t nvars;
  struct var *vars = env_vars(&nvars);
  char *socket_path = find_socket(cwd, env_get(vars, nvars, "TERMITE_SOCKET"));
  if (!socket_path || !trust_socket(socket_path, getuid())) exec_deno(argv);
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  if (strlen(socket_path) >= sizeof addr.sun_path) exec_deno(argv);
  strcpy(addr.sun_path, socket_path);
  int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (sock < 0) exec_deno(argv);
  while (connect(sock, (struct sockaddr *)&addr, sizeof addr) != 0) {
    if (errno != EINTR) exec_deno(argv);
  }
  /*
   * Beyond the Deno wrapper (Deno gives no descriptor to ask): the process
   * listening must be ours or root's too, else the socket was swapped between
   * the checks and the connect. Under such a race: fail, send nothing.
   */
  struct ucred peer;
  socklen_t peer_len = sizeof peer;
  uid_t me = getuid();
  if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &peer, &peer_len) != 0 ||
      (peer.uid != me && peer.uid != 0)) {
    say("refusing the master socket %s: the process listening on it is not yours (uid %u) or "
        "root's; anyone who could put it there would get this command and its environment",
        socket_path, (unsigned)me);
    return 255;
  }

  /* The request, as JSON.stringify writes a WrapperRequest. */
  struct buf req = {.max = FRAME_BYTES_MAX + 5};
  char h[5] = {0};
  buf_add(&req, h, 5);
  buf_str(&req, "{\"version\":");
  char num[16];
  snprintf(num, sizeof num, "%d", PROTOCOL_VERSION);
  buf_str(&req, num);
  buf_str(&req, ",\"argv\":[");
  if (shell) {
    buf_str(&req, "\"/bin/sh\",\"-c\",");
    json_string(&req, argv[2], strlen(argv[2]));
    for (int i = 3; i < argc; i++) {
      buf_byte(&req, ',');
      json_string(&req, argv[i], strlen(argv[i]));
    }
  } else {
    json_string(&req, tool, strlen(tool));
    for (int i = 1; i < argc; i++) {
      buf_byte(&req, ',');
      json_string(&req, argv[i], strlen(argv[i]));
    }
  }
  buf_str(&req, "],\"cwd\":");
  json_string(&req, cwd, strlen(cwd));
  buf_str(&req, ",\"env\":{");
  const char *local_path = env_get(vars, nvars, "PATH");
  char *clean = local_path ? clean_path(local_path, wrapper_dir, cwd) : NULL;
  for (size_t i = 0; i < nvars; i++) {
    const char *e = vars[i].entry;
    size_t k = vars[i].key_len;
    if (i) buf_byte(&req, ',');
    json_string(&req, e, k);
    buf_byte(&req, ':');
    const char *value = k == 4 && memcmp(e, "PATH", 4) == 0 ? clean : e + k + 1;
    json_string(&req, value, strlen(value));
  }
  struct stat st0;
  int with_stdin = fstat(0, &st0) == 0 && (S_ISREG(st0.st_mode) || S_ISFIFO(st0.st_mode));
  buf_str(&req, with_stdin ? "},\"stdin\":true" : "},\"stdin\":false");
  if (shell) buf_str(&req, ",\"shell\":true");
  if (local_path && strcmp(local_path, clean) != 0) {
    buf_str(&req, ",\"localPath\":");
    json_string(&req, local_path, strlen(local_path));
  }
  buf_byte(&req, '}');

  /* ^C and SIGTERM cancel the job; the master then sends its exit. */
  if (pipe2(signal_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
    say("lost the master: %s", os_error(errno));
    return 255;
  }
  struct sigaction sa = {.sa_handler = on_signal};
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);

  if (req.len - 5 + 1 > FRAME_BYTES_MAX) {
    say("lost the master: Frame too large: %zu bytes", req.len - 5 + 1);
    return 255;
  }
  frame_header(req.p, F_REQUEST, req.len - 5);
  if (write_all(sock, req.p, req.len) < 0) {
    say("lost the master: %s", os_error(errno));
    return 255;
  }
  free(req.p);
  return run_job(sock, with_stdin);
}
