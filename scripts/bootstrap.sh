#!/usr/bin/env bash
# Installs what Termite needs on a fresh Debian 12 machine (run as root):
# Deno (npm package `deno`, pinned), libfuse3, and Termite's one npm dependency
# into node_modules/ beside deno.json ("nodeModulesDir": "manual"), readable by
# every user: the roles then start with no network, whoever runs them.
# Fast when all are present.
#
# --test also installs what only the tests use: Debian's chromium (the
# dashboard's browser test), bpftrace (the action cache's recorder, which a
# worker needs only with --record-reads) and promtool (checks /metrics), the latter
# unpacked from Debian's prometheus package into .cache/tools/ so that no
# Prometheus server gets installed and started.
set -euo pipefail
DENO_VERSION=2.9.6
cd "$(dirname "$0")/.."
test_tools=false
for arg in "$@"; do
  case "$arg" in
    --test) test_tools=true ;;
    *) echo "bootstrap: unknown argument $arg (want --test or nothing)" >&2; exit 2 ;;
  esac
done

have_deno() {
  command -v deno >/dev/null 2>&1 && [ "$(deno --version 2>/dev/null | head -n1 | cut -d' ' -f2)" = "$DENO_VERSION" ]
}

need_apt=()
[ -e /usr/lib/x86_64-linux-gnu/libfuse3.so.3 ] || need_apt+=(fuse3 libfuse3-3)
[ -e /usr/include/fuse3/fuse_lowlevel.h ] || need_apt+=(libfuse3-dev)
command -v gcc >/dev/null 2>&1 || need_apt+=(gcc)
# A static libc: the sandbox launcher is linked statically (sandbox/launcher.ts).
[ -e /usr/lib/x86_64-linux-gnu/libc.a ] || need_apt+=(libc6-dev)
# musl: the launcher linked against it starts in a third of the time (a static
# glibc probes the CPU with CPUID, which a VM traps), once per job.
command -v musl-gcc >/dev/null 2>&1 || need_apt+=(musl-tools)
command -v make >/dev/null 2>&1 || need_apt+=(make)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v dpkg-source >/dev/null 2>&1 || need_apt+=(dpkg-dev)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "bootstrap: apt-get install ${need_apt[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if $test_tools && ! command -v chromium >/dev/null 2>&1; then
  echo "bootstrap: apt-get install chromium (for the tests)" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi

# bpftrace: what a worker started with --record-reads (the action cache) traces jobs with.
if $test_tools && ! command -v bpftrace >/dev/null 2>&1; then
  echo "bootstrap: apt-get install bpftrace (the action cache's recorder, for the tests)" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends bpftrace >/dev/null
fi

if $test_tools && ! command -v promtool >/dev/null 2>&1 && [ ! -x .cache/tools/bin/promtool ]; then
  echo "bootstrap: promtool from Debian's prometheus package into .cache/tools/" >&2
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1) || {
    apt-get update -qq && (cd "$tmp" && apt-get download prometheus >/dev/null)
  }
  dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
  mkdir -p .cache/tools/bin
  install -m 0755 "$tmp/x/usr/bin/promtool" .cache/tools/bin/promtool
  rm -rf "$tmp"
fi

if ! have_deno; then
  command -v npm >/dev/null 2>&1 || {
    echo "bootstrap: npm is needed to install Deno (apt-get install npm)" >&2
    exit 1
  }
  echo "bootstrap: npm install -g deno@$DENO_VERSION" >&2
  npm install -g --allow-scripts=deno "deno@$DENO_VERSION" >/dev/null 2>&1 ||
    npm install -g "deno@$DENO_VERSION" >/dev/null
  hash -r
  if ! have_deno; then
    # The package ships the binary in a platform package; link it if the
    # postinstall script was not allowed to run.
    root=$(npm root -g)
    bin=$(find "$root/deno" "$root/@deno" -type f -name deno -perm -u+x 2>/dev/null | head -n1)
    [ -n "$bin" ] && ln -sf "$bin" /usr/local/bin/deno
    hash -r
  fi
  have_deno || { echo "bootstrap: could not install deno $DENO_VERSION" >&2; exit 1; }
fi

# The npm dependency, from the lock file, where every user's Deno finds it
# (a per-user DENO_DIR would make another user, e.g. the master's, download
# it again, and fail on a host without network).
deno install --frozen --quiet >/dev/null || {
  echo "bootstrap: deno install failed: the npm dependencies need the npm registry once" >&2
  exit 1
}
chmod -R a+rX node_modules

# The sandbox launcher, built once ahead: a worker then compiles nothing at
# start (sandbox/launcher.ts); root-owned like the checkout.
deno run -A scripts/build_launcher.ts 2>/dev/null || {
  echo "bootstrap: cannot build the sandbox launcher ahead (workers will build it with gcc)" >&2
}

# The native wrapper client (opt-in: links made to bin/termite-client instead
# of bin/termite-wrap); its tests and `deno task dev --native-client` use it.
deno run -A scripts/build_client.ts 2>/dev/null || {
  echo "bootstrap: cannot build the native wrapper client (the Deno wrapper still works)" >&2
}
