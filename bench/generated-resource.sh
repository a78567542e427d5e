#!/usr/bin/env bash
# A resource made by scripts/new-resource, measured against the example's invoices on the same
# binary (docs/adding-a-resource.md): `notes` is generated in a throwaway worktree of this
# checkout's HEAD, built in release in target/generated (its own folder: the copy's crate has
# this one's name, and its binary must not replace this checkout's), then `bench.py
# --generated` prints the table for bench/RESULTS.md.
# TEST_DATABASE_URL (a PostgreSQL admin URL) adds the PostgreSQL rows.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
COPY=$(mktemp -d)
trap 'git -C "$ROOT" worktree remove --force "$COPY" >/dev/null 2>&1 || true; rm -rf "$COPY"' EXIT
git -C "$ROOT" worktree add --detach --force "$COPY" HEAD >/dev/null
(cd "$COPY" && python3 scripts/new-resource notes title:text body:text? pinned:bool >&2)
echo "==> building the copy with notes" >&2
CARGO_TARGET_DIR="$ROOT/target/generated" cargo build --release --locked --bin shipshape \
  --manifest-path "$COPY/Cargo.toml" >&2
python3 "$ROOT/bench/bench.py" --generated "$ROOT/target/generated/release/shipshape" "$@"
