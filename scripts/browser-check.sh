#!/usr/bin/env bash
# Opens the landing page and the API reference (/docs) in headless Chromium (Debian's
# `chromium`) against a real shipshape with the default Content-Security-Policy, and fails on
# any CSP violation or failed request, or an operation of /openapi.json missing from the
# rendered reference, or "Try it out" with a pasted token not working. Saves screenshots.
# Usage: scripts/browser-check.sh [BINARY] [OUT_DIR]
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
start_scratch_server "$BIN" LOG_FORMAT=json STATIC_DIR="$ROOT/static" API_DOCS=true

# One profile for every page, so the later runs reuse its cache. An array, not a function: a
# function run in the background is a subshell, and $! would not be Chromium's own PID.
browse=("$CHROMIUM" --headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking
    --disable-component-update --disable-sync --user-data-dir="$WORK/profile"
    --enable-logging=stderr --v=0 --window-size=1280,900)
"${browse[@]}" --screenshot="$OUT/landing.png" "http://127.0.0.1:$PORT/" > "$WORK/chromium.log" 2>&1 || true
# The reference draws itself after fetching /openapi.json: virtual time lets it finish first.
"${browse[@]}" --virtual-time-budget=10000 --screenshot="$OUT/api-docs.png" "http://127.0.0.1:$PORT/docs" \
    >> "$WORK/chromium.log" 2>&1 || true
"${browse[@]}" --virtual-time-budget=10000 --dump-dom "http://127.0.0.1:$PORT/docs" \
    > "$WORK/docs.html" 2>> "$WORK/chromium.log" || true
# "Try it out" as a person uses it: signup, the token pasted once into Authorize, /me with it
# (scripts/lib/docs-try-it-out.py drives the page over DevTools).
# example-domain:begin
# Then, with the same token, an invoice created and listed and the stats read.
# example-domain:end
failed=0
devtools_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"${browse[@]}" --remote-debugging-port="$devtools_port" "http://127.0.0.1:$PORT/docs" >> "$WORK/chromium.log" 2>&1 &
chromium_pid=$!
timeout 120 python3 "$ROOT/scripts/lib/docs-try-it-out.py" "$devtools_port" || failed=1
kill "$chromium_pid" 2>/dev/null && wait "$chromium_pid" 2>/dev/null || true

if grep -Ei "Content Security Policy|Refused to|violates" "$WORK/chromium.log"; then
    echo "browser-check: CSP violations (above)" >&2
    failed=1
fi
# Requests the pages made (the curl probe is excluded by its path).
requests=$(grep '"target":"http"' "$WORK/server.log" | grep -v '"route":"/healthz"' || true)
echo "$requests" | python3 -c '
import json, sys
lines = [json.loads(l) for l in sys.stdin if l.strip()]
for l in lines:
    print("  %s %s %s" % (l["status"], l["method"], l["route"]))
# But the 401 docs-try-it-out.py asks for on purpose, to see an error shown.
bad = [l for l in lines if l["status"] >= 400 and (l["route"], l["status"]) != ("/api/v1/me", 401)]
assert lines, "the page made no requests"
assert not bad, f"failed requests: {bad}"
assert any(l["route"].startswith("/static") for l in lines), "the stylesheet was loaded"
for route in ("/docs", "/openapi.json"):
    assert any(l["route"] == route for l in lines), f"{route} was loaded"
' || failed=1
# After the check above, which must see only the pages' own requests.
curl -fsS "http://127.0.0.1:$PORT/openapi.json" > "$WORK/openapi.json"
# Every operation of the document is drawn: Swagger UI gives each one a block with its method
# and a data-path attribute.
python3 - "$WORK/openapi.json" "$WORK/docs.html" <<'PY' || failed=1
import json, re, sys
document = json.load(open(sys.argv[1]))
dom = open(sys.argv[2]).read()
wanted = {(method.upper(), path) for path, item in document["paths"].items() for method in item
          if method in ("get", "put", "post", "delete", "options", "head", "patch", "trace")}
drawn = set(re.findall(r'opblock-summary-method">(\w+)</span>.*?data-path="([^"]+)"', dom, re.S))
missing = sorted(wanted - drawn)
assert not missing, f"operations not drawn on /docs: {missing}"
assert "btn authorize" in dom, "no Authorize button on /docs"
print(f"  /docs draws all {len(wanted)} operations and the Authorize button")
PY
for shot in landing.png api-docs.png; do
    [ -s "$OUT/$shot" ] || { echo "browser-check: no screenshot $shot" >&2; failed=1; }
done
[ "$failed" = 0 ] && echo "browser-check: OK, no CSP violation, no failed request; screenshots in $OUT"
exit "$failed"
