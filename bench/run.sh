#!/usr/bin/env bash
# Load benchmark: shipshape (production settings) against a bare axum baseline, same machine,
# same session, alternating runs. Server pinned to CPU 0, wrk to CPU 1 (64 connections,
# 3 s warm-up, 10 s measured). Writes bench/RESULTS.md. Needs wrk and taskset (Debian: wrk,
# util-linux); TEST_DATABASE_URL (a Postgres admin URL; psql must be installed) adds the
# PostgreSQL rows, on a database it creates and drops.
#
#   bench/run.sh                   the comparison with the baseline (about 15 minutes)
#   bench/run.sh --sizes           scaling with 1k, 100k and 1M invoices of one user
#   bench/run.sh --sizes 1000,10000 --duration 2 --warmup 1    a quick check that it works
#   bench/run.sh --ab /tmp/old/shipshape --label 62e06a8 --rounds 4
#                                  this build against another shipshape binary (the trivial
#                                  paths, rounds in turn); build the other from a worktree.
#                                  Repeat --ab/--label to compare with several in one run.
#
# Options are bench.py's (`python3 bench/bench.py --help`): --duration, --warmup, --rounds,
# --out FILE; shortened runs are labelled as smoke runs in what they write.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
command -v wrk >/dev/null || { echo "bench: wrk is not installed (apt-get install wrk)" >&2; exit 1; }
command -v taskset >/dev/null || { echo "bench: taskset is not installed (util-linux)" >&2; exit 1; }
if [ -n "${TEST_DATABASE_URL:-}" ]; then
  command -v psql >/dev/null || { echo "bench: TEST_DATABASE_URL is set but psql is not installed" >&2; exit 1; }
fi
echo "==> building release binaries"
cargo build --release --locked
cargo build --release --locked --manifest-path bench/baseline/Cargo.toml --target-dir target
exec python3 bench/bench.py "$@"
