#!/usr/bin/env bash
# Opens the landing page in headless Chromium (Debian's `chromium`) against a real shipshape
# with the default Content-Security-Policy, and fails on any CSP violation or failed request.
# Saves a screenshot. Usage: scripts/browser-check.sh [BINARY] [OUT_DIR]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${1:-$ROOT/target/debug/shipshape}
OUT=${2:-$ROOT/target/browser-check}
CHROMIUM=${CHROMIUM:-chromium}
command -v "$CHROMIUM" >/dev/null || { echo "browser-check: $CHROMIUM not installed (apt-get install chromium)" >&2; exit 1; }
[ -x "$BIN" ] || { echo "browser-check: no binary at $BIN (cargo build first)" >&2; exit 1; }

mkdir -p "$OUT"
# Absolute paths: the server runs in a scratch directory.
BIN=$(realpath "$BIN")
OUT=$(realpath "$OUT")
WORK=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cleanup() {
    [ -n "${APP_PID:-}" ] && kill "$APP_PID" 2>/dev/null && wait "$APP_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

# JSON logs: every request the page makes is one line we can check.
(cd "$WORK" && exec env -i PATH="$PATH" PORT="$PORT" LOG_FORMAT=json STATIC_DIR="$ROOT/static" \
    DATABASE_URL="sqlite://$WORK/app.db" "$BIN" serve > "$WORK/app.log" 2>&1) &
APP_PID=$!
for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
    sleep 0.1
done

"$CHROMIUM" --headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --user-data-dir="$WORK/profile" \
    --enable-logging=stderr --v=0 --window-size=1280,900 \
    --screenshot="$OUT/landing.png" "http://127.0.0.1:$PORT/" > "$WORK/chromium.log" 2>&1 || true

failed=0
if grep -Ei "Content Security Policy|Refused to|violates" "$WORK/chromium.log"; then
    echo "browser-check: CSP violations (above)" >&2
    failed=1
fi
# Requests the page made (the curl probe is excluded by its path).
requests=$(grep '"target":"http"' "$WORK/app.log" | grep -v '"route":"/healthz"' || true)
echo "$requests" | python3 -c '
import json, sys
lines = [json.loads(l) for l in sys.stdin if l.strip()]
for l in lines:
    print("  %s %s %s" % (l["status"], l["method"], l["route"]))
bad = [l for l in lines if l["status"] >= 400]
assert lines, "the page made no requests"
assert not bad, f"failed requests: {bad}"
assert any(l["route"].startswith("/static") for l in lines), "the stylesheet was loaded"
' || failed=1
[ -s "$OUT/landing.png" ] || { echo "browser-check: no screenshot" >&2; failed=1; }
[ "$failed" = 0 ] && echo "browser-check: OK, no CSP violation, no failed request; screenshot $OUT/landing.png"
exit "$failed"
