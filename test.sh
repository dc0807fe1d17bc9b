#!/usr/bin/env bash
# The project's test command: installs what the tests need when it is missing
# (redis-server, redis-cli, openssl, promtool; Debian/Ubuntu: apt-get), then runs every
# unit and integration test of the workspace. Extra arguments go to `cargo test`.
#
#   ./test.sh
#
# Each test starts its own private redis-server on a free port and an HTTP collector of
# its own; nothing needs to be running. It ends with cargo's summary lines
# ("test result: ok. N passed; 0 failed …"), one per test binary.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/install-deps.sh
ensure_cargo test.sh
ensure_tools test.sh \
  "the tests start private Redis servers, make TLS certificates and lint the metrics" \
  redis-server:redis-server:redis redis-cli:redis-tools:redis openssl:openssl:openssl \
  promtool:prometheus:prometheus
# Three tests at a time on any machine: they wait on Redis, collectors and timers more
# than they compute (about 120 CPU-seconds in 125 s of wall clock on 2 cores), and more
# at once starve the CPU-heavy ones (docs/development.md#tests). RUST_TEST_THREADS or
# `-- --test-threads N` overrides it.
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-3}"
exec cargo test --locked --workspace --tests "$@"
