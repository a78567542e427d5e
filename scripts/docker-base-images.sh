#!/usr/bin/env bash
# Build, locally, the two base images the Dockerfile names by default, for machines that can
# reach the Debian mirror and the crate registry but no container registry:
#
#   gcr.io/distroless/cc-debian12:nonroot   runtime: a distroless-like image made from a
#                                           `debootstrap --variant=minbase bookworm` rootfs:
#                                           glibc, libgcc, libstdc++, tzdata, the CA bundle,
#                                           user/group nonroot 65532, no shell, no apt
#   rust:1.95-slim-bookworm                 builder: the full minbase rootfs + gcc/libc6-dev
#                                           + this machine's Rust toolchain + its CA bundle
#
# Images that already exist are left alone (delete them to rebuild). The debootstrap rootfs is
# cached as a tarball, so only the first run downloads Debian (about 3 minutes).
#
# Needs: DOCKER_HOST pointing at a running daemon, root or passwordless sudo (debootstrap,
# chroot-free file copies that keep ownership), dpkg-query, and a Rust toolchain (rustup's
# layout: the real cargo/rustc live in `rustc --print sysroot`/bin; ~/.cargo/bin only holds
# rustup proxies, which cannot run inside an image).
#
# Environment (all optional):
#   DOCKER              docker client                 [/usr/bin/docker]
#   RUNTIME_IMAGE       runtime tag                   [gcr.io/distroless/cc-debian12:nonroot]
#   RUST_IMAGE          builder tag                   [rust:1.95-slim-bookworm]
#   BASE_IMAGE          full minbase rootfs tag       [shipshape-local/debian:bookworm-minbase]
#   SHIPSHAPE_DOCKER_CACHE  cache dir                 [${XDG_CACHE_HOME:-$HOME/.cache}/shipshape-docker]
#   DEBIAN_MIRROR       debootstrap mirror            [http://deb.debian.org/debian]
#   RUST_SYSROOT        toolchain to copy in          [$(rustc --print sysroot)]
#   HOST_CA_BUNDLE      CA bundle trusted in builds   [/etc/ssl/certs/ca-certificates.crt]
set -euo pipefail

DOCKER=${DOCKER:-/usr/bin/docker}
RUNTIME_IMAGE=${RUNTIME_IMAGE:-gcr.io/distroless/cc-debian12:nonroot}
RUST_IMAGE=${RUST_IMAGE:-rust:1.95-slim-bookworm}
BASE_IMAGE=${BASE_IMAGE:-shipshape-local/debian:bookworm-minbase}
CACHE_DIR=${SHIPSHAPE_DOCKER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/shipshape-docker}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
HOST_CA_BUNDLE=${HOST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
SUITE=bookworm
ROOTFS_TAR=$CACHE_DIR/debian-$SUITE-minbase-rootfs.tar
STD_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

log() { printf '[base-images] %s\n' "$*" >&2; }
die() { printf '[base-images] ERROR: %s\n' "$*" >&2; exit 1; }

# debootstrap and the ownership-preserving copies need root.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    else
        command -v sudo >/dev/null || die "run as root or install sudo (debootstrap needs root)"
        sudo -n "$@"
    fi
}

WORK_DIRS=()
cleanup() {
    local d
    for d in "${WORK_DIRS[@]+"${WORK_DIRS[@]}"}"; do
        [ -n "$d" ] && [ -d "$d" ] && as_root rm -rf -- "$d"
    done
    return 0
}
trap cleanup EXIT

new_work_dir() { # $1: name; the result is in WORK_DIR
    mkdir -p "$CACHE_DIR"
    WORK_DIR=$(mktemp -d "$CACHE_DIR/$1.XXXXXX")
    WORK_DIRS+=("$WORK_DIR")
}

image_exists() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }

check_daemon() {
    [ -x "$DOCKER" ] || die "docker client $DOCKER not found (apt-get install docker.io, or set DOCKER)"
    [ -n "${DOCKER_HOST:-}" ] || log "DOCKER_HOST is not set; using the client's default daemon"
    "$DOCKER" version >/dev/null 2>&1 \
        || die "cannot reach a docker daemon at ${DOCKER_HOST:-the default socket}; start one and set DOCKER_HOST"
}

# --- the debootstrap rootfs (cached tarball) -----------------------------------------------
ensure_rootfs_tar() {
    if [ -s "$ROOTFS_TAR" ]; then
        log "rootfs cache: $ROOTFS_TAR"
        return
    fi
    if ! command -v debootstrap >/dev/null; then
        log "installing debootstrap"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    fi
    new_work_dir rootfs
    local rootfs=$WORK_DIR/rootfs
    log "debootstrap --variant=minbase $SUITE from $DEBIAN_MIRROR (a few minutes)"
    as_root debootstrap --variant=minbase --include=ca-certificates,netbase,tzdata \
        "$SUITE" "$rootfs" "$DEBIAN_MIRROR" >"$WORK_DIR/debootstrap.log" 2>&1 \
        || { tail -n 30 "$WORK_DIR/debootstrap.log" >&2; die "debootstrap failed"; }
    # Leave out package caches, indexes and logs; the builder runs apt-get update itself.
    as_root find "$rootfs/var/cache/apt" "$rootfs/var/lib/apt/lists" "$rootfs/var/log" \
        "$rootfs/tmp" -mindepth 1 \( -type f -o -type l \) -delete
    as_root tar --numeric-owner -C "$rootfs" -cf "$ROOTFS_TAR.part" .
    as_root mv -f "$ROOTFS_TAR.part" "$ROOTFS_TAR"
    log "cached $ROOTFS_TAR ($(du -h "$ROOTFS_TAR" | cut -f1))"
}

# --- the full minbase rootfs as an image (root, with apt): the builder's starting point ----
ensure_base_image() {
    if image_exists "$BASE_IMAGE"; then
        log "exists: $BASE_IMAGE"
        return
    fi
    ensure_rootfs_tar
    log "docker import -> $BASE_IMAGE"
    "$DOCKER" import \
        --change "ENV PATH=$STD_PATH" \
        --change 'CMD ["/bin/bash"]' \
        "$ROOTFS_TAR" "$BASE_IMAGE" >/dev/null
}

# --- runtime: distroless-like subset of the rootfs ------------------------------------------
build_runtime_image() {
    if image_exists "$RUNTIME_IMAGE"; then
        log "exists: $RUNTIME_IMAGE"
        return
    fi
    ensure_rootfs_tar
    command -v dpkg-query >/dev/null || die "dpkg-query is needed to pick the runtime files"
    new_work_dir runtime
    local rootfs=$WORK_DIR/rootfs slim=$WORK_DIR/slim list=$WORK_DIR/files
    mkdir -p "$rootfs" "$slim"
    as_root tar --numeric-owner -C "$rootfs" -xf "$ROOTFS_TAR"

    # What gcr.io/distroless/cc-debian12 carries: base-files, netbase, tzdata, libc6,
    # libgcc-s1, libstdc++6 and the CA bundle. Paths are resolved through the merged-/usr
    # symlinks (/lib -> usr/lib ...) so every file lands at its real location.
    local pkgs=() pkg
    for pkg in base-files netbase tzdata libc6 libgcc-s1 libstdc++6; do
        if dpkg-query --admindir="$rootfs/var/lib/dpkg" -W -f='${Status}\n' "$pkg" 2>/dev/null \
            | grep -q ' installed$'; then
            pkgs+=("$pkg")
        else
            log "note: $pkg is not in the rootfs, left out"
        fi
    done
    local -A parent_of=()
    local path dir real
    {
        for path in bin sbin lib lib32 lib64 libx32; do
            if [ -L "$rootfs/$path" ]; then echo "$path"; fi
        done
        for path in etc/ssl/certs/ca-certificates.crt etc/nsswitch.conf etc/ld.so.conf etc/ld.so.cache; do
            if [ -e "$rootfs/$path" ]; then echo "$path"; fi
        done
        dpkg-query --admindir="$rootfs/var/lib/dpkg" -L "${pkgs[@]}" | grep '^/' \
            | grep -Ev '^/usr/share/(doc|man|info|lintian|gdb|gcc)(/|$)' \
            | while IFS= read -r path; do
                [ -L "$rootfs$path" ] || [ -f "$rootfs$path" ] || continue
                dir=${path%/*}
                [ -n "$dir" ] || dir=/
                real=${parent_of[$dir]:-}
                if [ -z "$real" ]; then
                    real=$(cd "$rootfs$dir" && pwd -P)
                    parent_of[$dir]=$real
                fi
                case $real in
                    "$rootfs") echo "${path##*/}" ;;
                    "$rootfs"/*) echo "${real#"$rootfs"/}/${path##*/}" ;;
                    *) log "skipping $path (resolves outside the rootfs)" ;;
                esac
            done
    } | sort -u >"$list"
    [ -s "$list" ] || die "no runtime files found in the rootfs"

    as_root tar --numeric-owner -C "$rootfs" -cf - -T "$list" \
        | as_root tar --numeric-owner -C "$slim" -xpf -

    # Users as distroless has them, nonroot = 65532, no login shells anywhere.
    printf '%s\n' \
        'root:x:0:0:root:/root:/sbin/nologin' \
        'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
        'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' \
        | as_root tee "$slim/etc/passwd" >/dev/null
    printf '%s\n' 'root:x:0:' 'nobody:x:65534:' 'tty:x:5:' 'staff:x:50:' 'nonroot:x:65532:' \
        | as_root tee "$slim/etc/group" >/dev/null
    as_root install -d -m 1777 -o 0 -g 0 "$slim/tmp"
    as_root install -d -m 0700 -o 0 -g 0 "$slim/root"
    as_root install -d -m 0700 -o 65532 -g 65532 "$slim/home/nonroot"
    for path in usr/lib/x86_64-linux-gnu/libc.so.6 usr/lib/x86_64-linux-gnu/libgcc_s.so.1 \
        etc/ssl/certs/ca-certificates.crt; do
        as_root test -e "$slim/$path" || die "runtime rootfs lacks /$path (unexpected rootfs layout)"
    done

    log "docker import -> $RUNTIME_IMAGE"
    as_root tar --numeric-owner -C "$slim" -cf - . \
        | "$DOCKER" import \
            --change "ENV PATH=$STD_PATH" \
            --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
            --change 'USER 65532:65532' \
            --change 'WORKDIR /home/nonroot' \
            - "$RUNTIME_IMAGE" >/dev/null
}

# --- builder: base + gcc + this machine's toolchain + this machine's CA bundle --------------
build_rust_image() {
    if image_exists "$RUST_IMAGE"; then
        log "exists: $RUST_IMAGE"
        return
    fi
    ensure_base_image

    local sysroot=${RUST_SYSROOT:-}
    if [ -z "$sysroot" ]; then
        command -v rustc >/dev/null || die "no rustc on PATH; install rustup or set RUST_SYSROOT"
        sysroot=$(rustc --print sysroot)
    fi
    [ -x "$sysroot/bin/rustc" ] || die "$sysroot/bin/rustc not found (RUST_SYSROOT must be a toolchain directory)"
    case $sysroot in
        / | /usr | /usr/local)
            die "toolchain sysroot is $sysroot (a system install); point RUST_SYSROOT at a standalone toolchain, e.g. ~/.rustup/toolchains/<name>" ;;
    esac
    [ -f "$HOST_CA_BUNDLE" ] || die "CA bundle $HOST_CA_BUNDLE not found"

    new_work_dir rust-image
    local ctx=$WORK_DIR
    mkdir -p "$ctx/extra-bin"
    # rustup installs cargo inside the toolchain; anything else (cargo on PATH, not a rustup
    # proxy) is copied beside rustc.
    if [ ! -x "$sysroot/bin/cargo" ]; then
        local cargo real
        cargo=$(command -v cargo) || die "no cargo in $sysroot/bin nor on PATH"
        real=$(readlink -f "$cargo")
        case ${real##*/} in rustup*) die "cargo on PATH is a rustup proxy and $sysroot/bin has none" ;; esac
        cp "$real" "$ctx/extra-bin/cargo"
    fi
    cp -L "$HOST_CA_BUNDLE" "$ctx/ca-certificates.crt"
    cat >"$ctx/Dockerfile" <<EOF
FROM $BASE_IMAGE
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \\
    && apt-get install -y --no-install-recommends gcc libc6-dev ca-certificates \\
    && rm -rf /var/lib/apt/lists/*
# This machine's CA bundle: connections to the crate registry may be re-signed by a local
# authority, which only this bundle trusts.
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY rust/ /usr/local/rust/
COPY extra-bin/ /usr/local/rust/bin/
ENV CARGO_HOME=/usr/local/cargo \\
    PATH=/usr/local/cargo/bin:/usr/local/rust/bin:$STD_PATH \\
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \\
    CARGO_HTTP_CAINFO=/etc/ssl/certs/ca-certificates.crt
RUN mkdir -p /usr/local/cargo/bin \\
    && test -x /usr/local/rust/bin/cargo \\
    && test -x /usr/local/rust/bin/rustc
EOF

    log "docker build -> $RUST_IMAGE (toolchain from $sysroot)"
    # The context is streamed: Dockerfile, CA bundle, extra-bin/ and the toolchain as rust/
    # (its bundled HTML docs left out), so the toolchain is not copied on disk first.
    tar -cf - -C "$ctx" Dockerfile ca-certificates.crt extra-bin \
        -C "$sysroot" --exclude=./share/doc --transform='s,^\./,rust/,' . \
        | DOCKER_BUILDKIT=1 "$DOCKER" build --network=host -t "$RUST_IMAGE" -
}

main() {
    check_daemon
    build_runtime_image
    build_rust_image
    log "ready: $RUNTIME_IMAGE ($("$DOCKER" image inspect -f '{{.Size}}' "$RUNTIME_IMAGE") bytes), $RUST_IMAGE"
}

main "$@"
