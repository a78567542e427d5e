# shellcheck shell=bash
# Sourced by the scripts that drive a real shipshape (browser-check.sh, api-fuzz.sh).
#
#   start_scratch_server BINARY [VAR=value ...]
#
# Runs `BINARY serve` in a new scratch directory on a free port, with only PATH, PORT, a
# SQLite DATABASE_URL in that directory and the given variables, then waits until /healthz
# answers. Sets WORK, PORT and APP_PID; the server log is $WORK/server.log. The server and
# the directory are removed when the calling script exits.

start_scratch_server() {
    local bin
    # Absolute: the server runs in the scratch directory, not where the caller stands.
    bin=$(realpath "$1")
    shift
    WORK=$(mktemp -d)
    PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    trap stop_scratch_server EXIT
    (cd "$WORK" && exec env -i PATH="$PATH" PORT="$PORT" DATABASE_URL="sqlite://$WORK/app.db" "$@" \
        "$bin" serve > "$WORK/server.log" 2>&1) &
    APP_PID=$!
    for _ in $(seq 100); do
        curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "the server did not answer /healthz; its log:" >&2
    cat "$WORK/server.log" >&2
    return 1
}

stop_scratch_server() {
    if [ -n "${APP_PID:-}" ]; then
        kill "$APP_PID" 2>/dev/null && wait "$APP_PID" 2>/dev/null
    fi
    rm -rf "${WORK:-}"
}
