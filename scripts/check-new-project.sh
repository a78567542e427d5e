#!/usr/bin/env bash
# Proves scripts/new-project and scripts/new-resource: generates acme-billing (a name that is
# neither a prefix nor a suffix of shipshape), full and --bare, into temporary folders, adds
# a resource to each with `scripts/new-resource notes title:text body:text? pinned:bool
# due_on:date?`, and in each
#   - finds no "shipshape" in any case (file names and text) but the README's credit line,
#   - in the bare copy, finds no docs/example-domain.md and no word of the example domain
#     (invoices, webhook, SSE, stats) in any Markdown file,
#   - runs cargo fmt --check, cargo clippy --all-targets -- -D warnings and
#     scripts/ci-github-checks.sh (actionlint, zizmor, schemas, cargo-deny);
#   - in the full copy, builds the tests and lists them (this checkout's own run covers them);
#   - in the bare copy, runs cargo test (its core tests and the resource's, on both databases
#     when TEST_DATABASE_URL is set), starts the binary on SQLite and gets 200 from /healthz
#     and /readyz, finds only the account, health and notes routes in /openapi.json, runs
#     check --deploy, then the copy's own scripts/browser-check.sh (headless Chromium: no CSP
#     violation, every operation drawn, "Try it out" with a pasted token) and
#     scripts/api-fuzz.sh (schemathesis, every check, the notes routes included), as .ci/run's
#     steps f2 and f3 do for this checkout; they need chromium and curl, and `st` (installed
#     by api-fuzz.sh with pip when missing);
#   - with both variants, compares their test names: the bare copy runs every core test the
#     full copy runs (scripts/compare-core-tests.sh).
#
#   bash scripts/check-new-project.sh [VARIANT ...]      variants: full bare   [both]
#
# Environment (all optional):
#   CARGO_TARGET_DIR    one target folder for both copies, so dependencies compile once
#                                                           [target/new-project of this checkout]
#   KEEP_NEW_PROJECT    1 keeps the generated copies (their paths are printed)     [0]
#   NEW_PROJECT_CARGO_LOCK  a lock file each cargo command holds (flock), on a shared machine
#   TEST_DATABASE_URL, TEST_REDIS_URL   passed on to the copies' tests, as in .ci/run
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
NAME=acme-billing
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/new-project}
case $CARGO_TARGET_DIR in /*) ;; *) CARGO_TARGET_DIR=$ROOT/$CARGO_TARGET_DIR ;; esac
export CARGO_TERM_COLOR=never

variants=("$@")
[ "${#variants[@]}" -gt 0 ] || variants=(full bare)

TMP=$(mktemp -d "${TMPDIR:-/tmp}/new-project-check.XXXXXX")
APP_PID=
cleanup() {
    if [ -n "$APP_PID" ]; then
        kill "$APP_PID" 2>/dev/null || true
        wait "$APP_PID" 2>/dev/null || true
    fi
    if [ "${KEEP_NEW_PROJECT:-0}" = 1 ]; then
        echo "kept: $TMP"
    else
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT

cargo_() {
    if [ -n "${NEW_PROJECT_CARGO_LOCK:-}" ]; then
        flock "$NEW_PROJECT_CARGO_LOCK" cargo "$@"
    else
        cargo "$@"
    fi
}

say() { printf '\n--- new-project %s: %s\n' "$variant" "$*"; }
fail() {
    printf 'check-new-project: %s: %s\n' "$variant" "$*" >&2
    exit 1
}

serve_and_probe() { # dir (a bare copy): starts the binary on SQLite, probes health and OpenAPI
    local dir=$1 bin=$CARGO_TARGET_DIR/debug/$NAME port work path
    work=$TMP/run-$variant
    mkdir -p "$work"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    (cd "$dir" && exec env -i PATH="$PATH" PORT="$port" DATABASE_URL="sqlite://$work/app.db" \
        "$bin" serve >"$work/server.log" 2>&1) &
    APP_PID=$!
    for _ in $(seq 150); do
        curl -fs "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
        sleep 0.1
    done
    for path in /healthz /readyz; do
        curl -fsS "http://127.0.0.1:$port$path" >/dev/null ||
            { cat "$work/server.log" >&2; fail "GET $path did not answer 200"; }
        echo "GET $path: 200"
    done
    curl -fsS "http://127.0.0.1:$port/openapi.json" >"$work/openapi.json" ||
        fail "GET /openapi.json did not answer 200"
    python3 - "$work/openapi.json" <<'EOF'
import json, sys
spec = json.load(open(sys.argv[1]))
paths = sorted(spec["paths"])
print("OpenAPI paths:", " ".join(paths))
allowed = {"/api/v1/auth/signup", "/api/v1/auth/login", "/api/v1/auth/refresh",
           "/api/v1/auth/logout", "/api/v1/auth/password-reset", "/api/v1/auth/password-reset/confirm",
           "/api/v1/me", "/api/v1/me/password", "/api/v1/admin/users",
           "/api/v1/admin/users/{id}/disable", "/api/v1/admin/users/{id}/enable",
           "/api/v1/notes", "/api/v1/notes/{id}", "/healthz", "/readyz", "/openapi.json"}
extra = [p for p in paths if p not in allowed]
if extra:
    sys.exit("the bare API has routes beyond accounts, health and notes: %s" % extra)
for p in ("/api/v1/auth/signup", "/api/v1/auth/login", "/api/v1/me", "/api/v1/notes/{id}"):
    if p not in paths:
        sys.exit("the bare API lacks %s" % p)
EOF
    kill "$APP_PID" && wait "$APP_PID" 2>/dev/null || true
    APP_PID=

    # check --deploy judges an empty production configuration: errors, exit 1, each named.
    local code=0
    (cd "$work" && env -i PATH="$PATH" "$bin" check --deploy >"$work/check.txt" 2>&1) || code=$?
    if [ "$code" != 1 ] || ! grep -q 'E001' "$work/check.txt"; then
        cat "$work/check.txt" >&2
        fail "$NAME check --deploy: exit $code, expected 1 with E001"
    fi
    echo "$NAME check --deploy: $(grep -c '^[[:space:]]*[EW][0-9][0-9][0-9]' "$work/check.txt" || true) findings, exit 1"
    if grep -q 'W008' "$work/check.txt"; then
        fail "check --deploy of the bare copy reports W008 (WEBHOOK_SECRET)"
    fi
}

for variant in "${variants[@]}"; do
    case $variant in
        full) flags=() ;;
        bare) flags=(--bare) ;;
        *) echo "check-new-project: unknown variant $variant (full, bare)" >&2; exit 2 ;;
    esac
    dir=$TMP/$variant/$NAME
    start=$(date +%s)
    say "generate into $dir"
    "$ROOT/scripts/new-project" "$NAME" "${flags[@]}" --out "$dir"

    say "no shipshape left"
    left=$(cd "$dir" && { grep -rniI shipshape . || true; } | grep -v '^\./README\.md:[0-9]*:Started from \[shipshape\]' || true)
    [ -z "$left" ] || fail "shipshape is left in: $left"
    names=$(cd "$dir" && find . -iname '*shipshape*')
    [ -z "$names" ] || fail "file names with shipshape: $names"
    [ "$(grep -ci shipshape "$dir/README.md")" = 1 ] || fail "README.md: not exactly one credit line"
    if [ "$variant" = bare ]; then
        say "no example domain left in the documentation"
        [ ! -e "$dir/docs/example-domain.md" ] || fail "docs/example-domain.md is in the bare copy"
        left=$(cd "$dir" && { grep -rniI -E 'invoice|webhook|(^|[^a-z])(sse|stats)([^a-z]|$)' --include='*.md' . || true; })
        [ -z "$left" ] || fail "the documentation still describes the example domain: $left"
    fi

    say "scripts/new-resource notes title:text body:text? pinned:bool due_on:date?"
    (cd "$dir" && python3 scripts/new-resource notes title:text body:text? pinned:bool due_on:date?)

    say "cargo fmt --check"
    (cd "$dir" && cargo_ fmt --check)
    say "cargo clippy --all-targets -- -D warnings"
    (cd "$dir" && cargo_ clippy --all-targets -- -D warnings)
    say "scripts/ci-github-checks.sh (the renamed workflows)"
    (cd "$dir" && bash scripts/ci-github-checks.sh </dev/null)
    if [ "$variant" = full ]; then
        say "cargo test --no-run (this checkout's own run covers the tests)"
        (cd "$dir" && cargo_ test --no-run)
        say "ok ($(($(date +%s) - start)) s)"
        continue
    fi
    say "cargo test"
    (cd "$dir" && cargo_ test) 2>&1 | tee "$TMP/test-$variant.log"
    # With TEST_DATABASE_URL and TEST_REDIS_URL given (as .ci/run gives them), none may be skipped.
    if [ -n "${TEST_DATABASE_URL:-}" ] && [ -n "${TEST_REDIS_URL:-}" ]; then
        ignored=$(grep -Eo '[0-9]+ ignored' "$TMP/test-$variant.log" | awk '{ total += $1 } END { print total + 0 }')
        [ "$ignored" = 0 ] || fail "$ignored tests were skipped (ignored) in the $variant copy"
    fi
    say "serve: /healthz, /readyz, /openapi.json"
    serve_and_probe "$dir"
    # The copy's own scripts, run as .ci/run runs this checkout's (steps f2 and f3).
    say "scripts/browser-check.sh (the copy's: /docs, Try it out, no CSP violation)"
    (cd "$dir" && bash scripts/browser-check.sh "$CARGO_TARGET_DIR/debug/$NAME" "$TMP/browser-check-$variant" </dev/null)
    say "scripts/api-fuzz.sh (the copy's: schemathesis against its /openapi.json)"
    (cd "$dir" && bash scripts/api-fuzz.sh "$CARGO_TARGET_DIR/debug/$NAME" </dev/null)
    say "ok ($(($(date +%s) - start)) s)"
done

if [ -d "$TMP/full/$NAME" ] && [ -d "$TMP/bare/$NAME" ]; then
    variant=both
    say "the bare copy runs every core test of the full copy"
    bash "$ROOT/scripts/compare-core-tests.sh" "$TMP/full/$NAME" "$TMP/bare/$NAME"
fi
