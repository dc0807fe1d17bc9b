# snowplow-relay container image.
#
#   docker build -t snowplow-relay .                      # full build on an official Rust image
#   docker build --target runtime-prebuilt \
#     --build-arg BINARY=target/release/snowplow-relay -t snowplow-relay .   # from a local release build
#
# Configure with a mounted /etc/snowplow-relay/config.toml or SNOWPLOW_RELAY_<SECTION>__<KEY>
# environment variables. The admin listener (metrics, health) is on port 9187.
#
# The stages needing no Rust image come first: Docker's classic builder stops at the
# --target stage, so `--target runtime-prebuilt` works where no Rust image can be pulled.
ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# --- runtime base: CA certificates (https collectors), a numeric non-root user ---
FROM ${RUNTIME_IMAGE} AS base
# Unpinned on purpose: ca-certificates must follow Debian's security updates.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# The image's defaults (JSON logs, admin on 0.0.0.0:9187) are in this file, never in its
# environment: a mounted file replaces them, and environment variables override any key.
COPY config/container.toml /etc/snowplow-relay/config.toml
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

# --- runtime from a binary built outside Docker (no Rust image needed) ---
FROM base AS runtime-prebuilt
ARG BINARY=target/release/snowplow-relay
COPY ${BINARY} /usr/local/bin/snowplow-relay

# --- build: dependencies in a layer of their own, rebuilt only when Cargo.* change ---
FROM ${RUST_IMAGE} AS build
ENV CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > benches/relay.rs \
    && cargo build --release --locked \
    && rm -rf src benches
COPY src ./src
COPY benches ./benches
COPY config ./config
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && cp target/release/snowplow-relay /usr/local/bin/snowplow-relay

# --- runtime from the build stage (the default target) ---
FROM base AS runtime
COPY --from=build /usr/local/bin/snowplow-relay /usr/local/bin/snowplow-relay
