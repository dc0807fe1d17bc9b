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
exec cargo test --locked --workspace --tests "$@"
