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
OUT=$(realpath "$OUT")
# shellcheck source=scripts/lib/scratch-server.sh
. "$ROOT/scripts/lib/scratch-server.sh"
# JSON logs: every request the page makes is one line we can check.
start_scratch_server "$BIN" LOG_FORMAT=json STATIC_DIR="$ROOT/static"

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
requests=$(grep '"target":"http"' "$WORK/server.log" | grep -v '"route":"/healthz"' || true)
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
