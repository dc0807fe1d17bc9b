#!/usr/bin/env bash
# Builds snowplow-relay at 582e716 (the last build before the key layout's version was
# stored in Redis) for the two-build tests of tests/upgrades.rs: from a git worktree,
# into this repository's target directory (so it shares the dependencies already built),
# then copied to target/builds/582e716/snowplow-relay. Prints that path. Run before the
# current build (.ci/run does): the old build's binary passes through
# target/debug/snowplow-relay, and the current build puts its own back.
set -euo pipefail
cd "$(dirname "$0")/.."
commit=582e716
out="$PWD/target/builds/$commit"
if [ -x "$out/snowplow-relay" ]; then
  echo "$out/snowplow-relay"
  exit 0
fi
git cat-file -e "$commit^{commit}" 2>/dev/null || {
  echo "build-582e716.sh: commit $commit is not in this clone (a shallow clone?); fetch it" >&2
  exit 1
}
work=$(mktemp -d)
trap 'git worktree remove --force "$work/src" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
git worktree add --quiet --detach "$work/src" "$commit" >&2
CARGO_TARGET_DIR="$PWD/target" cargo build --locked --quiet \
  --manifest-path "$work/src/Cargo.toml" --bin snowplow-relay >&2
mkdir -p "$out"
cp target/debug/snowplow-relay "$out/snowplow-relay"
echo "$out/snowplow-relay"
