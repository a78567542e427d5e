#!/usr/bin/env bash
# A backup of a 1 GB SQLite database while a writer runs (docs/backups.md), for
# bench/RESULTS.md: builds the database (about a minute), times one writer alone and then
# beside `backup::create`, then the restore (examples/backup_bench.rs). Prints one JSON line.
# Needs about 3 GB free under target/.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
echo "==> building the release example" >&2
cargo build --release --locked --example backup_bench >&2
exec target/release/examples/backup_bench target/backup-bench "${1:-1024}"
