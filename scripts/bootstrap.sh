#!/usr/bin/env bash
# Installs what Termite needs on a fresh Debian 12 machine (run as root):
# Deno (npm package `deno`, pinned), libfuse3, and Termite's one npm dependency
# into node_modules/ beside deno.json ("nodeModulesDir": "manual"), readable by
# every user: the roles then start with no network, whoever runs them.
# Fast when all are present.
set -euo pipefail
DENO_VERSION=2.9.6
cd "$(dirname "$0")/.."

have_deno() {
  command -v deno >/dev/null 2>&1 && [ "$(deno --version 2>/dev/null | head -n1 | cut -d' ' -f2)" = "$DENO_VERSION" ]
}

need_apt=()
[ -e /usr/lib/x86_64-linux-gnu/libfuse3.so.3 ] || need_apt+=(fuse3 libfuse3-3)
[ -e /usr/include/fuse3/fuse_lowlevel.h ] || need_apt+=(libfuse3-dev)
command -v gcc >/dev/null 2>&1 || need_apt+=(gcc)
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
