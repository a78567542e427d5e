#!/usr/bin/env python3
"""Times POST /api/v1/auth/password-reset for a known and an unknown email against a real
shipshape (release, production settings, SQLite), and its throughput under wrk against the
bare axum baseline's /healthz in the same session; then writes the jobs section of
bench/RESULTS.md with the queue figures given as JSON (from examples/jobs_bench.rs).

Usage: bench/reset-timing.py SQLITE_JSON POSTGRES_JSON|null   (run by bench/jobs.sh)
"""
import json, os, statistics, sys, time

sys.path.insert(0, os.path.dirname(__file__))
import bench  # noqa: E402  the servers, wrk and the RESULTS.md plumbing of bench/run.sh

ROUNDS = 300


def timed(server, email):
    started = time.perf_counter()
    status, _ = bench.http(server.url("/api/v1/auth/password-reset"), {"email": email})
    elapsed = (time.perf_counter() - started) * 1000
    assert status == 202, status
    return elapsed


def main():
    sqlite = json.loads(sys.argv[1])
    postgres = json.loads(sys.argv[2]) if len(sys.argv) > 2 else None
    server = bench.Server("shipshape", f"sqlite://{bench.work}/reset.db")
    baseline = bench.Server("baseline", f"sqlite://{bench.work}/baseline.db?mode=rwc")
    try:
        bench.signup(server)
        known, unknown = [], []
        for i in range(ROUNDS):
            known.append(timed(server, bench.CREDS["email"]))
            unknown.append(timed(server, f"nobody{i}@example.com"))
        lua = bench.lua("reset", {"email": "nobody@example.com"})
        ship = bench.wrk(server.url("/api/v1/auth/password-reset"), script=lua)
        base = bench.wrk(baseline.url("/healthz"))
    finally:
        server.stop()
        baseline.stop()

    def pct(values, p):
        values = sorted(values)
        return values[round((len(values) - 1) * p)]

    rows = bench.run_header("## Jobs and the password-reset request", "bench/jobs.sh") + [
        "",
        "Queue figures from `examples/jobs_bench.rs` (release, pinned to CPU 0): 5,000 no-op jobs "
        "queued up front, then drained by 4 or 16 workers; 200 idle pickups, each timed from the "
        "moment its enqueuing transaction began to its handler's start, at random gaps; 1,000 "
        "write transactions (one small insert) alone and 1,000 with one enqueue beside it.",
        "",
        "| figure | SQLite | PostgreSQL |",
        "|---|---:|---:|",
    ]
    def cell(figures, key, unit=""):
        return "—" if not figures else f"{figures[key]:,}{unit}"
    for key, label, unit in [
        ("jobs_per_second_4", "no-op jobs per second, 4 workers", ""),
        ("jobs_per_second_16", "no-op jobs per second, 16 workers", ""),
        ("pickup_ms_p50", "idle pickup p50", " ms"),
        ("pickup_ms_p99", "idle pickup p99", " ms"),
        ("write_us_p50", "a write transaction, p50", " µs"),
        ("write_with_enqueue_us_p50", "the same with one enqueue, p50", " µs"),
    ]:
        rows.append(f"| {label} | {cell(sqlite, key, unit)} | {cell(postgres, key, unit)} |")
    rows += [
        "",
        f"`POST /api/v1/auth/password-reset` on SQLite, {ROUNDS} sequential requests each, known and "
        "unknown email interleaved (the request enqueues the same job for both):",
        "",
        "| email | p50 ms | p99 ms | mean ms |",
        "|---|---:|---:|---:|",
        f"| known | {pct(known, 0.5):.2f} | {pct(known, 0.99):.2f} | {statistics.mean(known):.2f} |",
        f"| unknown | {pct(unknown, 0.5):.2f} | {pct(unknown, 0.99):.2f} | {statistics.mean(unknown):.2f} |",
        "",
        "Under load (wrk, 64 connections, one unknown email, limit raised out of the way), against the "
        "bare axum baseline's `/healthz` in this same session: the request's whole cost, a write "
        "transaction with the enqueue included.",
        "",
        "| endpoint | shipshape req/s | baseline req/s (path) | ratio | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|",
        f"| POST /api/v1/auth/password-reset (SQLite) | {ship['rps']:,.0f} | {base['rps']:,.0f} (/healthz) | "
        f"{ship['rps'] / base['rps']:.2f}× | {ship['p50']:.2f} | {ship['p99']:.2f} |",
    ]
    bench.write_results(os.path.join(bench.ROOT, "bench", "RESULTS.md"), jobs="\n".join(rows))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
