#!/usr/bin/env bash
# Fuzzes the API from its own OpenAPI document with schemathesis (PyPI), authenticated,
# every check on. Fails on any finding. Usage: scripts/api-fuzz.sh [BINARY]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${1:-$ROOT/target/debug/shipshape}
# Absolute: it also runs from the scratch server's directory.
BIN=$(realpath -m "$BIN")
command -v st >/dev/null || python3 -m pip install -q schemathesis
[ -x "$BIN" ] || { echo "api-fuzz: no binary at $BIN (cargo build first)" >&2; exit 1; }
# shellcheck source=scripts/lib/scratch-server.sh
. "$ROOT/scripts/lib/scratch-server.sh"

# fuzz LABEL [VAR=value ...]: one scratch server with these settings, one schemathesis run.
fuzz() {
    local label=$1
    shift
    echo "api-fuzz: $label"
    # Limits off: the fuzzer sends thousands of requests from one address.
    local settings=(LOG_LEVEL=warn SECRET_KEY=api-fuzz-signing-key-0123456789abcdef0123
        RATE_LIMIT_GLOBAL=off RATE_LIMIT_LOGIN=off RATE_LIMIT_SIGNUP=off RATE_LIMIT_PASSWORD_RESET=off)
    # A fixed seed makes a CI failure reproducible; change it to explore further.
    local st_args=(--checks all --max-examples "${FUZZ_EXAMPLES:-100}" --seed "${FUZZ_SEED:-20261122}" --no-color)
    # example-domain:begin
    settings+=(RATE_LIMIT_INVOICE_CREATE=off)
    # The event stream never ends by design, so it is tested by tests/api/events.rs instead.
    st_args+=(--exclude-path /api/v1/invoices/events)
    # example-domain:end
    # A logout would end the fuzzer's own session halfway: tests/api/sessions.rs covers it.
    st_args+=(--exclude-path /api/v1/auth/logout)
    start_scratch_server "$BIN" "${settings[@]}" "$@"
    # An admin, made as an operator makes the first one, so the admin routes are fuzzed too.
    local password="correct horse battery staple" token
    printf '%s\n' "$password" | (cd "$WORK" && env -i PATH="$PATH" DATABASE_URL="sqlite://$WORK/app.db" "$BIN" \
        user create fuzz@example.com --admin) >/dev/null
    token=$(curl -fs -H 'content-type: application/json' \
        -d "{\"email\":\"fuzz@example.com\",\"password\":\"$password\"}" \
        "http://127.0.0.1:$PORT/api/v1/auth/login" | python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')
    (cd "$ROOT" && st run "http://127.0.0.1:$PORT/openapi.json" -H "Authorization: Bearer $token" "${st_args[@]}") || { echo "api-fuzz ($label): findings above; server log:" >&2; grep -E "ERROR|panicked" "$WORK/server.log" >&2 || true; exit 1; }
    stop_scratch_server
    APP_PID=
}

# example-domain:begin
# The webhook is mounted, and documented, only with its secret: both documents must hold.
fuzz "with WEBHOOK_SECRET" WEBHOOK_SECRET=whsec_api_fuzz_0123456789abcdef0123
# example-domain:end
fuzz "default settings"
