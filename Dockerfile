# shipshape container image.
#
#   docker build -t shipshape .
#   docker run --rm -p 8080:8080 -e SECRET_KEY=... -e ALLOWED_HOSTS=... -e DATABASE_URL=... shipshape
#
# Base images are build arguments so they can be pinned (by digest) or pulled from a mirror:
#   docker build --build-arg RUST_IMAGE=rust:1.95-slim-bookworm@sha256:... .
# No "# syntax=" line on purpose: the builder's own Dockerfile frontend is used, so a build
# never needs to pull a frontend image (offline and mirrored builds work).

ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# ---------------------------------------------------------------------------------------------
# Builder
# ---------------------------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS builder
WORKDIR /build

# 1. Dependencies only. This layer depends on nothing but Cargo.toml and Cargo.lock, so it is
#    reused until the dependency set changes (the cargo-chef idea, without the extra tool):
#    stub sources, build every dependency, then throw the stubs away.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && echo '' > src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src

# 2. The service itself. Migrations are embedded at compile time (sqlx::migrate!), so they must
#    be here before the build. COPY keeps the files' original mtimes, which can be older than
#    the stub build above; touching the crate roots makes cargo rebuild the crate, not reuse
#    the stub.
COPY build.rs ./
COPY src ./src
COPY migrations ./migrations
COPY static ./static
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && ./target/release/shipshape --version \
    && ./target/release/shipshape compress-static static \
    && mkdir -p /out/data

# ---------------------------------------------------------------------------------------------
# Runtime: glibc + libgcc + CA certificates, no shell, no package manager, user 65532 (nonroot)
# ---------------------------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS runtime

LABEL org.opencontainers.image.title="shipshape" \
      org.opencontainers.image.description="A production-ready Rust web service to fork" \
      org.opencontainers.image.licenses="MIT"

WORKDIR /app

# The binary and static files stay owned by root (read-only to the service user), so a
# compromised process cannot rewrite its own code. Only /app/data (the default SQLite location,
# DATABASE_URL=sqlite://data/app.db, and uploads directory, STORAGE_URL=data/uploads) belongs to
# the runtime user.
COPY --from=builder /build/target/release/shipshape /app/shipshape
COPY --from=builder /build/static /app/static
COPY --from=builder --chown=65532:65532 /out/data /app/data

# /app on PATH: `shipshape migrate` works as a platform release command (Railway, Fly).
ENV APP_ENV=production PORT=8080 PATH=/app:/usr/local/bin:/usr/bin:/bin

USER 65532:65532
EXPOSE 8080

# No curl in the image: the binary checks itself (GET 127.0.0.1:$PORT/healthz, exit 0 on 200).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 CMD ["/app/shipshape","healthcheck"]

# Exec form: the service is PID 1 and receives SIGTERM itself, then drains
# (SHUTDOWN_TIMEOUT_SECS, default 25 s).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/app/shipshape"]
CMD ["serve"]
