/*
 * Benchmark client for bench/fuse_bench.ts.
 *   client stat LISTFILE ROUNDS   lstat every path in LISTFILE (one per line); prints ops/s
 *   client read FILE BUFSIZE      read FILE to the end; prints MB/s
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  if (argc == 4 && !strcmp(argv[1], "stat")) {
    FILE *f = fopen(argv[2], "r");
    if (!f) return perror(argv[2]), 1;
    size_t cap = 1024, n = 0;
    char **paths = malloc(cap * sizeof *paths);
    char line[4096];
    while (fgets(line, sizeof line, f)) {
      line[strcspn(line, "\n")] = 0;
      if (n == cap) paths = realloc(paths, (cap *= 2) * sizeof *paths);
      paths[n++] = strdup(line);
    }
    int rounds = atoi(argv[3]);
    long failures = 0;
    double t0 = now();
    for (int r = 0; r < rounds; r++)
      for (size_t i = 0; i < n; i++) {
        struct stat st;
        if (lstat(paths[i], &st) != 0) failures++;
      }
    double dt = now() - t0;
    printf("%.1f %ld\n", (double)n * rounds / dt, failures);
    return 0;
  }
  if (argc == 4 && !strcmp(argv[1], "read")) {
    int fd = open(argv[2], O_RDONLY);
    if (fd < 0) return perror(argv[2]), 1;
    size_t size = (size_t)atol(argv[3]);
    char *buf = malloc(size);
    double t0 = now();
    long long total = 0;
    ssize_t got;
    while ((got = read(fd, buf, size)) > 0) total += got;
    double dt = now() - t0;
    printf("%.1f %lld\n", total / dt / 1048576.0, total);
    return got < 0;
  }
  fprintf(stderr, "usage: client stat LISTFILE ROUNDS | client read FILE BUFSIZE\n");
  return 2;
}
