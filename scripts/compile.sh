#!/usr/bin/env bash
# One binary per role with `deno compile`. Needs internet access (to download
# denort) or DENORT_BIN naming a denort binary. Not part of the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p dist
for role in coordinator worker master wrapper; do
  deno compile -A --output "dist/termite-$role" "$role.ts"
done
echo "built: dist/termite-{coordinator,worker,master,wrapper}" >&2
