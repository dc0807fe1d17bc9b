# snowplow-relay container image: the stripped binary and the few files it reads, on an
# empty base (no shell, no package manager), as distroless images are.
#
#   docker build -t snowplow-relay .                      # full build on an official Rust image
#   docker build --target runtime-prebuilt \
#     --build-arg BINARY=target/release/snowplow-relay -t snowplow-relay .   # from a local release build
#
# Configure with a mounted /etc/snowplow-relay/config.toml or SNOWPLOW_RELAY_<SECTION>__<KEY>
# environment variables. The admin listener (metrics, health) is on port 9187. The relay
# writes no file: run it with a read-only root filesystem.
#
# The stages needing no Rust image come first: Docker's classic builder stops at the
# --target stage, so `--target runtime-prebuilt` works where no Rust image can be pulled.
ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# --- what the relay reads at run time, gathered from Debian into /out ---
FROM ${RUNTIME_IMAGE} AS files
# Unpinned on purpose: ca-certificates must follow Debian's security updates; binutils
# (strip) stays in this stage.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates binutils \
    && rm -rf /var/lib/apt/lists/*
# The C library, libm, libgcc_s and the dynamic loader (the binary's only shared
# libraries), the CA bundle (https collectors, rediss://), name resolution through
# /etc/hosts and DNS, and a passwd entry for the numeric user.
RUN mkdir -p /out/etc/ssl/certs /out/etc/snowplow-relay /out/usr/local/bin \
    && cp /etc/ssl/certs/ca-certificates.crt /out/etc/ssl/certs/ \
    && for lib in /lib/*-linux-gnu/libc.so.6 /lib/*-linux-gnu/libm.so.6 \
                  /lib/*-linux-gnu/libgcc_s.so.1 /lib*/ld-linux*.so.*; do \
         cp -L --parents "$lib" /out/; \
       done \
    && printf 'hosts: files dns\n' > /out/etc/nsswitch.conf \
    && printf 'relay:x:10001:10001:snowplow-relay:/nonexistent:/sbin/nologin\n' > /out/etc/passwd \
    && printf 'relay:x:10001:\n' > /out/etc/group
# The image's defaults (JSON logs, admin on 0.0.0.0:9187) are in this file, never in its
# environment: a mounted file replaces them, and environment variables override any key.
COPY config/container.toml /out/etc/snowplow-relay/config.toml

# --- the runtime: those files and nothing else ---
FROM scratch AS runtime-base
COPY --from=files /out/ /
LABEL org.opencontainers.image.title="snowplow-relay" \
      org.opencontainers.image.description="Moves Snowplow tracker events from a Redis list to a Snowplow collector, at least once" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"
USER 10001:10001
EXPOSE 9187
# docker stop sends SIGTERM: the relay drains (worker.drain_timeout_ms, 5 s) and returns
# what is left to Redis within 2 s more, inside Docker's 10 s grace.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/snowplow-relay", "--config", "/etc/snowplow-relay/config.toml", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/snowplow-relay", "--config", "/etc/snowplow-relay/config.toml"]
CMD ["run"]

# --- a binary built outside Docker, stripped ---
FROM files AS prebuilt-binary
ARG BINARY=target/release/snowplow-relay
COPY ${BINARY} /usr/local/bin/snowplow-relay
RUN strip /usr/local/bin/snowplow-relay

# --- runtime from a binary built outside Docker (no Rust image needed) ---
FROM runtime-base AS runtime-prebuilt
COPY --from=prebuilt-binary /usr/local/bin/snowplow-relay /usr/local/bin/snowplow-relay

# --- build: dependencies in a layer of their own, rebuilt only when Cargo.* change ---
FROM ${RUST_IMAGE} AS build
ENV CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates/tracker/Cargo.toml crates/tracker/Cargo.toml
# Placeholders for every target Cargo.toml names (the tests are not built here).
RUN mkdir -p src benches tests crates/tracker/src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs crates/tracker/src/lib.rs tests/tests.rs \
    && echo 'fn main() {}' > benches/relay.rs \
    && cargo build --release --locked \
    && rm -rf src benches crates/tracker/src
COPY build.rs ./
COPY src ./src
COPY benches ./benches
COPY config ./config
COPY crates ./crates
COPY iglu ./iglu
# The commit --version and build_info name (.git is not in the build context):
# docker build --build-arg SNOWPLOW_RELAY_COMMIT=$(git rev-parse --short HEAD) .
ARG SNOWPLOW_RELAY_COMMIT=unknown
RUN touch src/main.rs src/lib.rs crates/tracker/src/lib.rs \
    && cargo build --release --locked \
    && cp target/release/snowplow-relay /usr/local/bin/snowplow-relay

# --- runtime from the build stage (the default target) ---
FROM runtime-base AS runtime
COPY --from=build /usr/local/bin/snowplow-relay /usr/local/bin/snowplow-relay
