#!/usr/bin/env bash
# Upload throughput and memory (docs/files.md), for bench/RESULTS.md: 1 MiB and 32 MiB PDFs
# uploaded through a release `shipshape serve` (SQLite) to a local directory and to an S3 API
# (s3s-fs), against the same bytes written straight to the same store with plain
# object_store, in alternating rounds (examples/upload_bench.rs); and the server's peak RSS
# growth while it took them. Prints one JSON line.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
echo "==> building release binaries" >&2
cargo build --release --locked --example upload_bench --bin shipshape >&2
exec target/release/examples/upload_bench target/release/shipshape
