#!/usr/bin/env bash
# One binary per role with `deno compile`, in dist/. `deno compile` builds on
# denort, Deno's runtime for compiled programs: it downloads it (internet
# access) unless DENORT_BIN names a denort binary of the same Deno version.
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(deno --version | head -n1 | cut -d' ' -f2)
if [ -n "${DENORT_BIN:-}" ] && [ ! -x "$DENORT_BIN" ]; then
  echo "compile: DENORT_BIN=$DENORT_BIN is not an executable file (want denort $version)" >&2
  exit 1
fi
mkdir -p dist
# The worker carries its sandbox launcher built here, and the source it was
# built from: it runs on hosts with no compiler (sandbox/launcher.ts).
if ! out=$(deno run -A scripts/build_launcher.ts 2>&1); then
  echo "compile: cannot build the sandbox launcher ahead (needs gcc): $out" >&2
  exit 1
fi
for role in coordinator worker master wrapper; do
  include=()
  [ "$role" = worker ] && include=(--include sandbox/launcher.c --include sandbox/prebuilt)
  if ! out=$(deno compile -A --quiet "${include[@]}" --output "dist/termite-$role" "$role.ts" 2>&1); then
    if [ -z "${DENORT_BIN:-}" ] && grep -qiE 'denort|error sending request|dns error' <<<"$out"; then
      reason=$(grep -m1 -iE 'error sending request|dns error' <<<"$out" | sed -E 's/^[[:space:]]*[0-9]+: //' || true)
      echo "compile: deno compile needs internet access to download denort $version (Deno's" \
        "runtime for compiled programs), or DENORT_BIN=/path/to/denort naming one of that" \
        "version${reason:+; the download failed: $reason}" >&2
    else
      echo "compile: deno compile of $role.ts failed:" >&2
      echo "$out" >&2
    fi
    exit 1
  fi
done
echo "built: dist/termite-{coordinator,worker,master,wrapper}" >&2
