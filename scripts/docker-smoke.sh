#!/usr/bin/env bash
# Container smoke test (CI): build the image from the project's Dockerfile, unchanged, on a
# private Docker daemon, run it, and check what the packaging promises:
#   - the image's own HEALTHCHECK (`shipshape healthcheck`, no curl inside) turns healthy
#   - /readyz answers 200 (the database is reachable: SQLite in a tmpfs, migrated on start)
#   - the process runs as uid 65532, not root
#   - `docker stop` (SIGTERM) ends it cleanly, exit code 0, in under MAX_STOP_SECS
#   - the image size is printed
#
# It starts its own dockerd (own socket, exec-root and pidfile under a temp dir, data-root under
# the cache dir so base images and build layers survive between runs), builds the base images
# with scripts/docker-base-images.sh (no registry is needed), and always stops that daemon, by
# its pid, on the way out. Needs root or passwordless sudo (for dockerd), docker.io (dockerd +
# /usr/bin/docker), curl, and the base-image script's needs.
#
# With SMOKE_DAEMON=running it uses the Docker daemon that is already running (DOCKER_HOST, or
# the client's default socket) instead: no private dockerd, no root, no locally made base
# images; the build pulls them from their registries (GitHub Actions runners, a developer's
# Docker).
#
# Environment (all optional):
#   SMOKE_DAEMON            private | running         [private]
#   DOCKER                  docker client             [/usr/bin/docker]
#   DOCKERD                 daemon binary             [dockerd on PATH]
#   IMAGE                   tag to build              [shipshape:ci]
#   APP_PORT                host port for the app     [18080]
#   HEALTH_TIMEOUT          seconds to reach healthy  [60]
#   MAX_STOP_SECS           docker stop must be under [5]
#   SMOKE_BUILD_ARGS        extra K=V build args, space separated (e.g. pinned base images)
#   SHIPSHAPE_DOCKER_CACHE  cache dir                 [${XDG_CACHE_HOME:-$HOME/.cache}/shipshape-docker]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DOCKER=${DOCKER:-/usr/bin/docker}
DOCKERD=${DOCKERD:-$(command -v dockerd || true)}
IMAGE=${IMAGE:-shipshape:ci}
APP_PORT=${APP_PORT:-18080}
HEALTH_TIMEOUT=${HEALTH_TIMEOUT:-60}
MAX_STOP_SECS=${MAX_STOP_SECS:-5}
CACHE_DIR=${SHIPSHAPE_DOCKER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/shipshape-docker}
export SHIPSHAPE_DOCKER_CACHE=$CACHE_DIR
DATA_ROOT=$CACHE_DIR/dockerd-data
CONTAINER=shipshape-smoke-$$
SMOKE_DAEMON=${SMOKE_DAEMON:-private}
case $SMOKE_DAEMON in private | running) ;; *) printf '[smoke] FAIL: SMOKE_DAEMON must be private or running\n' >&2; exit 1 ;; esac

log() { printf '[smoke] %s\n' "$*" >&2; }
fail() { printf '[smoke] FAIL: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    else
        sudo -n "$@"
    fi
}

# --- preconditions --------------------------------------------------------------------------
if [ "$SMOKE_DAEMON" = private ] && { [ -z "$DOCKERD" ] || [ ! -x "$DOCKERD" ]; }; then
    fail "dockerd not found (apt-get install docker.io)"
fi
[ -x "$DOCKER" ] || fail "docker client $DOCKER not found (apt-get install docker.io)"
command -v curl >/dev/null || fail "curl not found"
if [ "$SMOKE_DAEMON" = private ] && [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null || ! sudo -n true 2>/dev/null; then
        fail "needs root or passwordless sudo to run dockerd"
    fi
fi
if curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$APP_PORT/"; then
    fail "port $APP_PORT is already in use on 127.0.0.1; set APP_PORT"
fi

# --- private daemon -------------------------------------------------------------------------
mkdir -p "$CACHE_DIR"
RUN_DIR=$(mktemp -d /tmp/shipshape-dockerd.XXXXXX) # short path: unix sockets live here
DAEMON_PID=
CONTAINER_CREATED=

cleanup() {
    local status=$?
    set +e
    if [ -n "$CONTAINER_CREATED" ]; then
        if [ "$status" -ne 0 ]; then
            log "container logs (last 40 lines):"
            "$DOCKER" logs --tail 40 "$CONTAINER" >&2 2>&1
        fi
        "$DOCKER" rm -f "$CONTAINER" >/dev/null 2>&1
    fi
    if [ -n "$DAEMON_PID" ]; then
        log "stopping dockerd (pid $DAEMON_PID)"
        as_root kill -TERM "$DAEMON_PID" 2>/dev/null
        local _
        for _ in $(seq 1 60); do
            as_root kill -0 "$DAEMON_PID" 2>/dev/null || break
            sleep 0.5
        done
        if as_root kill -0 "$DAEMON_PID" 2>/dev/null; then
            log "dockerd did not stop in 30 s; sending SIGKILL to pid $DAEMON_PID"
            as_root kill -KILL "$DAEMON_PID" 2>/dev/null
        fi
    fi
    # dockerd leaves mounts behind in its exec-root (e.g. netns/default); unmount, then delete.
    local mnt
    while read -r mnt; do
        as_root umount "$mnt" 2>/dev/null || as_root umount -l "$mnt" 2>/dev/null
    done < <(awk -v dir="$RUN_DIR/" 'index($5, dir) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
    if [ "$status" -ne 0 ] && [ -f "$RUN_DIR/dockerd.log" ]; then
        log "dockerd log (last 20 lines):"
        tail -n 20 "$RUN_DIR/dockerd.log" >&2
    fi
    as_root rm -rf -- "$RUN_DIR"
    if [ "$status" -eq 0 ]; then log "PASS"; else log "failed (exit $status)"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

daemon_args=(
    --host "unix://$RUN_DIR/docker.sock"
    --data-root "$DATA_ROOT"
    --exec-root "$RUN_DIR/exec"
    --pidfile "$RUN_DIR/dockerd.pid"
    --bridge=none
    --iptables=false
)
[ "$(id -u)" -eq 0 ] || daemon_args+=(--group "$(id -gn)")

if [ "$SMOKE_DAEMON" = running ]; then
    "$DOCKER" version >/dev/null 2>&1 || fail "no Docker daemon answers at ${DOCKER_HOST:-the default socket}"
    log "using the running Docker daemon (${DOCKER_HOST:-default socket}); base images from the registry"
else
    log "starting dockerd (socket $RUN_DIR/docker.sock, data-root $DATA_ROOT)"
    as_root "$DOCKERD" "${daemon_args[@]}" >"$RUN_DIR/dockerd.log" 2>&1 &
    launcher=$!
    export DOCKER_HOST=unix://$RUN_DIR/docker.sock
    for _ in $(seq 1 60); do
        if [ -z "$DAEMON_PID" ] && [ -s "$RUN_DIR/dockerd.pid" ]; then
            DAEMON_PID=$(cat "$RUN_DIR/dockerd.pid")
        fi
        if [ -n "$DAEMON_PID" ] && "$DOCKER" version >/dev/null 2>&1; then
            break
        fi
        kill -0 "$launcher" 2>/dev/null || fail "dockerd exited during start-up"
        sleep 0.5
    done
    [ -n "$DAEMON_PID" ] || fail "dockerd wrote no pidfile in 30 s"
    "$DOCKER" version >/dev/null 2>&1 || fail "dockerd (pid $DAEMON_PID) is not answering on $DOCKER_HOST"
    log "dockerd ready (pid $DAEMON_PID)"

    # --- images ---------------------------------------------------------------------------------
    "$ROOT/scripts/docker-base-images.sh" || fail "base images could not be built"
fi

build_args=()
# shellcheck disable=SC2086 # word splitting of the K=V list is intended
for kv in ${SMOKE_BUILD_ARGS:-}; do
    build_args+=(--build-arg "$kv")
done
log "building $IMAGE from $ROOT/Dockerfile"
build_start=$(date +%s)
DOCKER_BUILDKIT=1 "$DOCKER" build --network=host "${build_args[@]+"${build_args[@]}"}" -t "$IMAGE" "$ROOT" \
    || fail "docker build failed"
log "built in $(($(date +%s) - build_start)) s"

# --- run ------------------------------------------------------------------------------------
secret_key=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n') # 48 hex characters
log "starting container $CONTAINER on 127.0.0.1:$APP_PORT"
CONTAINER_CREATED=1
"$DOCKER" run -d --name "$CONTAINER" --network=host \
    --tmpfs /tmp:rw,uid=65532,gid=65532,mode=1777 \
    -e HOST=127.0.0.1 \
    -e PORT="$APP_PORT" \
    -e ALLOWED_HOSTS=localhost,127.0.0.1 \
    -e SECRET_KEY="$secret_key" \
    -e DATABASE_URL=sqlite:///tmp/app.db \
    -e RUN_MIGRATIONS_ON_START=true \
    -e METRICS_PORT=off \
    -e SECURE_SSL_REDIRECT=false \
    "$IMAGE" >/dev/null || fail "docker run failed"

log "waiting up to ${HEALTH_TIMEOUT} s for the image's HEALTHCHECK to report healthy"
deadline=$(($(date +%s) + HEALTH_TIMEOUT))
while :; do
    running=$("$DOCKER" inspect -f '{{.State.Running}}' "$CONTAINER")
    health=$("$DOCKER" inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$CONTAINER")
    [ "$running" = true ] || fail "container exited (code $("$DOCKER" inspect -f '{{.State.ExitCode}}' "$CONTAINER")) before becoming healthy"
    case $health in
        healthy) break ;;
        unhealthy) fail "HEALTHCHECK reports unhealthy: $("$DOCKER" inspect -f '{{range .State.Health.Log}}{{.Output}}{{end}}' "$CONTAINER")" ;;
        none) fail "the image defines no HEALTHCHECK" ;;
    esac
    [ "$(date +%s)" -lt "$deadline" ] || fail "not healthy after ${HEALTH_TIMEOUT} s (status: $health)"
    sleep 1
done
log "healthy"

base=http://127.0.0.1:$APP_PORT
readyz=$(curl -fsS --max-time 5 -H 'Host: localhost' "$base/readyz") || fail "GET /readyz did not answer 200"
log "GET /readyz -> $readyz"
curl -fsS --max-time 5 -o /dev/null -H 'Host: localhost' "$base/healthz" || fail "GET /healthz did not answer 200"
index=$(curl -fsS --max-time 5 -H 'Host: localhost' -H 'Accept: text/html' "$base/") || fail "GET / did not answer 200"
case $index in *shipshape*) ;; *) fail "GET / did not serve static/index.html" ;; esac
encoding=$(curl -fsS --max-time 5 -o /dev/null -D - -H 'Host: localhost' -H 'Accept-Encoding: br, gzip' \
    "$base/static/style.css" | tr -d '\r' | awk -F': ' 'tolower($1) == "content-encoding" { print $2 }')
[ -n "$encoding" ] || fail "GET /static/style.css with Accept-Encoding: br, gzip came back uncompressed"
log "GET /static/style.css -> Content-Encoding: $encoding"

# --- user -----------------------------------------------------------------------------------
config_user=$("$DOCKER" image inspect -f '{{.Config.User}}' "$IMAGE")
case $config_user in 65532 | 65532:65532 | nonroot | nonroot:nonroot) ;;
    *) fail "image USER is '$config_user', expected 65532" ;;
esac
# docker top runs ps on the host and keeps the container's rows (it needs the pid column).
uids=$("$DOCKER" top "$CONTAINER" -o pid,uid | awk 'NR > 1 { print $2 }' | sort -u | tr '\n' ' ')
[ "$uids" = "65532 " ] || fail "processes in the container run as uid(s) $uids, expected only 65532"
log "runs as uid 65532 (image USER $config_user)"

# --- graceful stop --------------------------------------------------------------------------
log "docker stop (SIGTERM; docker would SIGKILL after 10 s)"
stop_start=$(date +%s%N)
"$DOCKER" stop "$CONTAINER" >/dev/null || fail "docker stop failed"
stop_ms=$((($(date +%s%N) - stop_start) / 1000000))
exit_code=$("$DOCKER" inspect -f '{{.State.ExitCode}}' "$CONTAINER")
log "stopped in ${stop_ms} ms, exit code $exit_code"
[ "$stop_ms" -lt $((MAX_STOP_SECS * 1000)) ] || fail "docker stop took ${stop_ms} ms (limit ${MAX_STOP_SECS} s): SIGTERM is not handled promptly"
[ "$exit_code" = 0 ] || fail "exit code $exit_code after SIGTERM, expected 0"

# --- size -----------------------------------------------------------------------------------
size=$("$DOCKER" image inspect -f '{{.Size}}' "$IMAGE")
human=$(numfmt --to=iec --suffix=B "$size" 2>/dev/null || echo "$size bytes")
log "image $IMAGE: $human ($size bytes)"
