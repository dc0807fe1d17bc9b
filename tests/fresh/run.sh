#!/usr/bin/env bash
# A fresh machine (not part of `cargo test`): a Debian bookworm chroot made with
# `debootstrap --variant=minbase`, holding only what a Rust toolchain needs (gcc and
# the C library's headers, for linking), with the host's rustup toolchain and
# cargo registry bind-mounted in. It asserts that redis-server, redis-cli, openssl and
# promtool are absent, clones this repository fresh, and runs the two commands of
# README.md#quick-start: ./quickstart.sh and ./test.sh; then installs, upgrades and purges
# the Debian package with apt-get. Both must succeed: ./test.sh must install what the
# tests need, build and list as many tests as the host lists, and pass the smoke set
# below, one test per tool it installs. (The whole suite runs on the host just before,
# in .ci/run; running it twice cost CI about four minutes: docs/development.md#ci.)
# Prints how long each took. Needs root (chroot, mounts) and network access to Debian's
# mirror.
#
# The chroot builds the release profile unoptimised (the environment overrides the
# workspace's fat LTO, single codegen unit and opt-level 3): what a fresh machine shows
# is that the two commands install and build everything from nothing and that the
# quick start runs; the tuned release build is made, tested, packaged and run under
# systemd on the host (.ci/run). Optimising it here again cost CI's two cores most of
# the time of a build from nothing (docs/development.md#ci). For the same reason the
# tests are built without debug information (the smoke set passes or fails the same).
#
# Usage: tests/fresh/run.sh       exit 0 pass, 1 fail, 77 cannot run here
#        HOST_TESTS=N tests/fresh/run.sh   the host's test count, when the caller knows it
#        (.ci/run, which runs this in the background while cargo runs other steps)
set -euo pipefail
cd "$(dirname "$0")/../.."
skip() { echo "fresh-machine test skipped: $*"; exit 77; }
[ "$(id -u)" = 0 ] || skip "needs root for chroot and mounts"
command -v debootstrap >/dev/null 2>&1 || {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null \
    || skip "cannot install debootstrap"
}
rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
cargo_home=${CARGO_HOME:-$HOME/.cargo}
[ -d "$rustup_home/toolchains" ] || skip "no rustup toolchain at $rustup_home"

work=$(mktemp -d /tmp/relay-fresh.XXXXXX)
root="$work/root"
cleanup() {
  set +e
  # Processes the commands left (none, normally), then the mounts, then the files.
  for pid in $(ls /proc | grep -E '^[0-9]+$'); do
    [ "$(readlink "/proc/$pid/root" 2>/dev/null)" = "$root" ] && kill -9 "$pid" 2>/dev/null
  done
  mount | awk -v r="$root" 'index($3, r) == 1 {print $3}' | sort -r | while read -r m; do umount -l "$m"; done
  rm -rf "$work"
}
trap cleanup EXIT
# A caller stopping this (.ci/run when another step fails) gets the mounts undone too.
trap 'exit 143' TERM INT

# The host's test count, for comparison (the host has built the tests already).
host_tests=${HOST_TESTS:-$(cargo test --locked --workspace --tests -q -- --list 2>/dev/null | grep -c ': test$')}
echo "host: $host_tests tests listed"

mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)
mirror=${mirror:-http://deb.debian.org/debian}
started=$(date +%s)
debootstrap --variant=minbase --include=gcc,libc6-dev bookworm "$root" "$mirror" \
  >"$work/debootstrap.log" 2>&1 || { tail -n 20 "$work/debootstrap.log"; skip "debootstrap failed"; }
echo "chroot made in $(( $(date +%s) - started )) s"
cp /etc/resolv.conf "$root/etc/resolv.conf"
# As in any chroot: packages' services are not started (no init here; redis-server's
# would otherwise keep running on the host's network).
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod +x "$root/usr/sbin/policy-rc.d"
for dir in proc sys dev dev/pts; do mount --bind "/$dir" "$root/$dir"; done
mkdir -p "$root/root/.rustup" "$root/root/.cargo"
mount --bind "$rustup_home" "$root/root/.rustup"
mount --bind "$cargo_home" "$root/root/.cargo"
git clone --quiet "$PWD" "$root/src"

in_chroot() {
  chroot "$root" /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 \
    PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_OPT_LEVEL=0 \
    CARGO_PROFILE_DEV_DEBUG=0 \
    bash -c "cd /src && $1"
}

for tool in redis-server redis-cli openssl promtool; do
  if in_chroot "command -v $tool" >/dev/null 2>&1; then
    echo "FAIL: $tool is already in the chroot; the test proves nothing"; exit 1
  fi
done
echo "the chroot has none of redis-server, redis-cli, openssl, promtool; it has $(in_chroot 'cargo --version')"

started=$(date +%s)
in_chroot ./quickstart.sh >"$work/quickstart.log" 2>&1 || { tail -n 30 "$work/quickstart.log"; echo "FAIL: ./quickstart.sh"; exit 1; }
quickstart_s=$(( $(date +%s) - started ))
grep -m1 'quickstart: installing' "$work/quickstart.log" || true
grep 'GET /micro/all' "$work/quickstart.log"
echo "./quickstart.sh: ok in $quickstart_s s"

# One test for each tool ./test.sh installs, and the relay's own path: redis-server
# (relay), redis-cli (cluster), openssl and Redis's TLS (tls), promtool (prometheus),
# Sentinel mode (sentinel).
smoke=(
  relay::post_delivers_every_fixture_event_with_every_field
  cluster::relays_through_a_three_master_cluster
  tls::redis_over_tls_with_a_ca_file_and_client_certificates
  prometheus::the_alert_rules_load_and_their_unit_tests_prove_each_alert
  sentinel::the_relay_follows_two_switchovers_there_and_back
)
started=$(date +%s)
in_chroot './test.sh -- --list' >"$work/list.log" 2>&1 || { tail -n 30 "$work/list.log"; echo "FAIL: ./test.sh -- --list"; exit 1; }
grep -m1 'test.sh: installing' "$work/list.log" || true
listed=$(grep -c ': test$' "$work/list.log" || true)
[ "$listed" = "$host_tests" ] || { echo "FAIL: ./test.sh lists $listed tests in the chroot, the host $host_tests"; exit 1; }
in_chroot "./test.sh -- --exact ${smoke[*]}" >"$work/test.log" 2>&1 || { grep -E 'FAILED|panicked|failed' "$work/test.log" | head -n 30; tail -n 20 "$work/test.log"; echo "FAIL: ./test.sh (the smoke set)"; exit 1; }
test_s=$(( $(date +%s) - started ))
passed=$(grep -E '^test result: ok\.' "$work/test.log" | awk '{sum += $4} END {print sum + 0}')
echo "./test.sh: ok in $test_s s; $listed tests built and listed, as on the host; the smoke set: $passed of ${#smoke[@]} passed"
[ "$passed" = "${#smoke[@]}" ] || { echo "FAIL: $passed of the ${#smoke[@]} tests of the smoke set ran in the chroot"; exit 1; }

# The Debian package (scripts/build-deb.sh, built on the host) on this fresh Debian:
# apt-get install, the files where they belong, the binary stripped, the conffile kept
# (edited) across an upgrade, purge removing everything. (Under systemd:
# tests/systemd/run.sh, scenario 12.)
deb=$(bash scripts/build-deb.sh)
next_version="$(dpkg-deb -f "$deb" Version)+next"
deb_next=$(DEB_VERSION="$next_version" bash scripts/build-deb.sh)
mkdir -p "$root/debs"
cp "$deb" "$deb_next" "$root/debs/"
apt_in_chroot() { in_chroot "DEBIAN_FRONTEND=noninteractive apt-get $* -y -q -o Dpkg::Use-Pty=0"; }
apt_in_chroot install "/debs/$(basename "$deb")" >"$work/deb.log" 2>&1 || { tail -n 20 "$work/deb.log"; echo "FAIL: apt-get install of the package"; exit 1; }
grep -q 'installed and not started' "$work/deb.log" || { cat "$work/deb.log"; echo "FAIL: the postinst did not say how to start it"; exit 1; }
for f in usr/bin/snowplow-relay lib/systemd/system/snowplow-relay.service etc/snowplow-relay/config.toml \
  usr/share/doc/snowplow-relay/copyright usr/share/doc/snowplow-relay/CHANGELOG.md \
  usr/share/doc/snowplow-relay/docs/operations.md; do
  [ -e "$root/$f" ] || { echo "FAIL: the package installed no /$f"; exit 1; }
done
if readelf -S "$root/usr/bin/snowplow-relay" | grep -q '\.symtab'; then echo "FAIL: /usr/bin/snowplow-relay is not stripped"; exit 1; fi
grep -q '^ExecStart=/usr/bin/snowplow-relay ' "$root/lib/systemd/system/snowplow-relay.service" || { echo "FAIL: the unit does not run /usr/bin/snowplow-relay"; exit 1; }
in_chroot 'snowplow-relay --version' | grep -q '^snowplow-relay ' || { echo "FAIL: the installed binary does not run"; exit 1; }
[ "$(in_chroot "dpkg-query -W -f '\${Conffiles}' snowplow-relay" | awk '{print $1}')" = /etc/snowplow-relay/config.toml ] \
  || { echo "FAIL: /etc/snowplow-relay/config.toml is not a conffile"; exit 1; }
echo '# edited by the operator' >>"$root/etc/snowplow-relay/config.toml"
apt_in_chroot install "/debs/$(basename "$deb_next")" >"$work/deb.log" 2>&1 || { tail -n 20 "$work/deb.log"; echo "FAIL: apt-get install of the next version"; exit 1; }
[ "$(in_chroot "dpkg-query -W -f '\${Version}' snowplow-relay")" = "$next_version" ] || { echo "FAIL: not upgraded to $next_version"; exit 1; }
grep -q 'by the operator' "$root/etc/snowplow-relay/config.toml" || { echo "FAIL: the upgrade replaced the edited conffile"; exit 1; }
apt_in_chroot purge snowplow-relay >"$work/deb.log" 2>&1 || { tail -n 20 "$work/deb.log"; echo "FAIL: apt-get purge"; exit 1; }
for f in usr/bin/snowplow-relay lib/systemd/system/snowplow-relay.service etc/snowplow-relay usr/share/doc/snowplow-relay; do
  [ ! -e "$root/$f" ] || { echo "FAIL: purge left /$f"; exit 1; }
done
echo "the package: installed with apt-get ($(du -k "$deb" | cut -f1) KB), files in place and stripped, edited conffile kept across an upgrade to $next_version, purge removed everything"

echo "PASS: a fresh machine runs the two commands of README.md#quick-start (quickstart $quickstart_s s, tests $test_s s: built, listed, the smoke set) and installs the package"
