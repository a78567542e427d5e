#!/usr/bin/env bash
# The job queue's figures (docs/jobs.md), written to the end of bench/RESULTS.md:
#   - no-op jobs per second at 4 and 16 workers, idle pickup latency p50/p99, and what an
#     enqueue adds to a write transaction (examples/jobs_bench.rs), on SQLite and, with
#     TEST_DATABASE_URL, on PostgreSQL;
#   - the password-reset request's time for a known and an unknown email (it must not tell
#     them apart), and its throughput against the bare axum baseline's /healthz in this same
#     session (bench/reset-timing.py).
# Needs wrk and taskset, as bench/run.sh.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
echo "==> building release binaries"
cargo build --release --locked --example jobs_bench --bin shipshape
cargo build --release --locked --manifest-path bench/baseline/Cargo.toml --target-dir target
sqlite=$(taskset -c 0 target/release/examples/jobs_bench sqlite)
postgres=null
if [ -n "${TEST_DATABASE_URL:-}" ]; then
    postgres=$(taskset -c 0 target/release/examples/jobs_bench postgres "$TEST_DATABASE_URL")
fi
exec python3 bench/reset-timing.py "$sqlite" "$postgres"
