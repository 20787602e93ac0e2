/*
 * What a job can do on the network, from the job's side. Steps, in order:
 *
 *   connect ADDR PORT   TCP connect to an IPv4 address: "connect ADDR:PORT ok" or the error
 *   listen PORT MS      listen on 0.0.0.0:PORT (until the probe exits), say "listen PORT ok"
 *                       (or the error), wait MS
 *   sockets             the local ports of /proc/net/tcp and tcp6: "sockets P1 P2 ..."
 *
 * Built by tests/sandbox_test.ts and tests/hostile_test.ts.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void do_connect(const char *addr, int port) {
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0 || inet_pton(AF_INET, addr, &a.sin_addr) != 1) {
    printf("connect %s:%d bad address\n", addr, port);
    return;
  }
  struct timeval t = {.tv_sec = 3};
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &t, sizeof t);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) printf("connect %s:%d ok\n", addr, port);
  else printf("connect %s:%d %s\n", addr, port, strerror(errno));
  close(fd);
}

static void do_listen(int port, int ms) {
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
  int one = 1, fd = socket(AF_INET, SOCK_STREAM, 0);
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) || listen(fd, 8)) {
    printf("listen %d %s\n", port, strerror(errno));
  } else {
    printf("listen %d ok\n", port);
  }
  fflush(stdout);
  usleep((useconds_t)ms * 1000);
}

static void do_sockets(void) {
  printf("sockets");
  const char *files[] = {"/proc/net/tcp", "/proc/net/tcp6"};
  for (int i = 0; i < 2; i++) {
    FILE *f = fopen(files[i], "r");
    if (!f) continue;
    char line[512];
    fgets(line, sizeof line, f); /* header */
    while (fgets(line, sizeof line, f)) {
      char *colon = strchr(line, ':');        /* after the slot number */
      colon = colon ? strchr(colon + 1, ':') : NULL; /* before the local port */
      if (colon) printf(" %ld", strtol(colon + 1, NULL, 16));
    }
    fclose(f);
  }
  printf("\n");
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "connect") == 0 && i + 2 < argc) {
      do_connect(argv[i + 1], atoi(argv[i + 2]));
      i += 2;
    } else if (strcmp(argv[i], "listen") == 0 && i + 2 < argc) {
      do_listen(atoi(argv[i + 1]), atoi(argv[i + 2]));
      i += 2;
    } else if (strcmp(argv[i], "sockets") == 0) {
      do_sockets();
    } else {
      fprintf(stderr, "net_probe: bad step %s\n", argv[i]);
      return 2;
    }
  }
  return 0;
}
