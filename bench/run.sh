#!/usr/bin/env bash
# Load benchmark: shipshape (production settings) against a bare axum baseline, same machine,
# same session, alternating runs. Server pinned to CPU 0, wrk to CPU 1 (64 connections,
# 3 s warm-up, 10 s measured). Writes bench/RESULTS.md. Needs wrk and taskset (Debian: wrk,
# util-linux); TEST_DATABASE_URL (a Postgres admin URL) adds the /readyz-on-Postgres row.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
command -v wrk >/dev/null || { echo "bench: wrk is not installed (apt-get install wrk)" >&2; exit 1; }
command -v taskset >/dev/null || { echo "bench: taskset is not installed (util-linux)" >&2; exit 1; }
echo "==> building release binaries"
cargo build --release --locked
cargo build --release --manifest-path bench/baseline/Cargo.toml --target-dir target
exec python3 bench/bench.py "$@"
