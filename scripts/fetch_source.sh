#!/usr/bin/env bash
# Fetches a Debian source package and unpacks its upstream tarball into .cache/src/<package>/ (once).
# Usage: scripts/fetch_source.sh PACKAGE  → prints the unpacked source directory.
set -euo pipefail
pkg=$1
cd "$(dirname "$0")/.."
dest=.cache/src/$pkg
if [ -f "$dest/.unpacked" ]; then
  cat "$dest/.unpacked"
  exit 0
fi
if ! grep -rqs '^Types:.*deb-src\|^deb-src' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  echo "fetch_source: adding a deb-src entry" >&2
  cat >/etc/apt/sources.list.d/termite-deb-src.sources <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  apt-get update -qq >&2
fi
rm -rf "$dest" && mkdir -p "$dest"
(cd "$dest" && apt-get source --download-only -qq "$pkg" >&2)
# The upstream tarball: Debian's patches adapt the build to Debian packaging
# (libtool and friends), while users build the upstream way.
orig=$(ls "$dest"/*.orig.tar.* | head -n1)
mkdir -p "$dest/src"
tar -xf "$orig" -C "$dest/src" --strip-components=1
echo "$(pwd)/$dest/src" >"$dest/.unpacked"
cat "$dest/.unpacked"
