#!/usr/bin/env bash
# The unit under a real systemd (not part of `cargo test`): boots systemd as PID 1 in a
# container of this test's own, installs the binary, config and unit exactly as the
# docs/operations.md#systemd says, and checks what an operator relies on: a start that
# waits for Redis, delivery, reload (a bad file refused), a stop during a collector
# outage that returns every event in order, a clean stop with Redis down, STATUS=
# following readiness, the watchdog restarting a frozen relay, a lease lost to another
# relay (the relay carries on), a root-only password file passed as a systemd credential,
# a bad configuration that fails the unit without a restart loop, Redis on a unix socket
# of group redis (SupplementaryGroups=), the Debian package (install, upgrade, removal,
# purge), and the sandbox
# (dynamic user, no capabilities, seccomp). Redis and the collector run on the host; the container shares its network.
#
# A drop-in makes the watchdog 6 s (90 s in the unit) and a refused system call fatal
# (SystemCallErrorNumber=kill instead of EPERM), so any denial shows.
#
# Usage: tests/systemd/run.sh      exit 0 pass, 1 fail, 77 docker cannot run here
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/docker/lib.sh
begin_test systemd relay-systemd-test
container=relay-systemd-test

failures=0
pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
in_box() { docker exec "$container" "$@"; }
prop() { in_box systemctl show -p "$1" --value snowplow-relay; }
# wait_for SECONDS COMMAND...: true once COMMAND succeeds within SECONDS.
wait_for() {
  local limit=$1; shift
  for _ in $(seq 1 $((limit * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  return 1
}
state_is() { [ "$(prop ActiveState)" = "$1" ]; }

start_dockerd
import_rootfs local/systemd:bookworm-binutils systemd,systemd-sysv,dbus,procps,binutils
[ -x target/release/snowplow-relay ] || cargo build --release --locked
# The Debian package and a next version of it, for scenario 12.
deb=$(bash scripts/build-deb.sh)
deb_next_version="$(dpkg-deb -f "$deb" Version)+next"
deb_next=$(DEB_VERSION="$deb_next_version" bash scripts/build-deb.sh)

# --- Redis and a collector on the host ---
redis_port=$(free_port); collector_port=$(free_port); admin_port=$(free_port)
start_redis() {
  redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
  redis_pid=$!
  wait_for 10 redis-cli -p "$redis_port" ping
}
stop_redis() { kill "$redis_pid"; wait "$redis_pid" 2>/dev/null || true; redis_pid=; }
cli() { redis-cli -p "$redis_port" "$@"; }
start_collector "$collector_port"
# Conditions for wait_for (evaluated on every try).
received_at_least() { [ "$(received)" -ge "$1" ]; }
list_below() { [ "$(cli LLEN snowplow)" -lt "$1" ]; }

# A second Redis on a unix socket only, as Debian's package lays it out
# (/run/redis/redis-server.sock, group redis, unixsocketperm 770), its directory shared
# with the container (scenario 11).
mkdir -p "$work/redis-socket"
redis-server --port 0 --unixsocket "$work/redis-socket/redis-server.sock" --unixsocketperm 770 \
  --save "" --appendonly no >/dev/null &
socket_redis_pid=$!
wait_for 10 test -S "$work/redis-socket/redis-server.sock"
chgrp 4242 "$work/redis-socket/redis-server.sock"
chmod 0755 "$work/redis-socket"
socket_cli() { redis-cli -s "$work/redis-socket/redis-server.sock" "$@"; }

# --- systemd as PID 1 (the recipe from issue 20) ---
docker run -d --name "$container" --cap-add ALL --cap-drop SYS_RESOURCE \
  --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
  --security-opt systempaths=unconfined --device-cgroup-rule 'a *:* rwm' \
  --cgroupns=host -v /sys/fs/cgroup:/sys/fs/cgroup:rw --tmpfs /run --tmpfs /run/lock \
  -v "$work/redis-socket:/run/redis" \
  --network host -e container=docker --stop-signal SIGRTMIN+3 \
  local/systemd:bookworm-binutils /sbin/init >/dev/null
booted() { in_box systemctl is-system-running 2>/dev/null | grep -Eq '^(running|degraded)$'; }
wait_for 60 booted || { docker logs "$container" 2>&1 | tail -n 20; skip "systemd does not boot in a container here"; }
echo "systemd $(in_box systemctl --version | head -n 1 | cut -d' ' -f2) is PID 1 in the container"
# Docker mounts the container's /run (--tmpfs) private; on a host it is shared, and
# systemd's credentials (LoadCredential=, a ramfs it moves under /run/credentials) need
# that: without it the service sees an empty, root-only directory.
in_box mount --make-rshared /run

# --- install exactly as docs/operations.md#systemd says ---
docker exec "$container" mkdir -p /src/target/release /src/config /src/systemd
docker cp target/release/snowplow-relay "$container:/src/target/release/snowplow-relay"
docker cp config/snowplow-relay.toml "$container:/src/config/snowplow-relay.toml"
docker cp systemd/snowplow-relay.service "$container:/src/systemd/snowplow-relay.service"
in_box sh -ec '
  cd /src
  install -s -m 0755 target/release/snowplow-relay /usr/local/bin/
  install -d /etc/snowplow-relay && install -m 0644 config/snowplow-relay.toml /etc/snowplow-relay/config.toml
  install -m 0644 systemd/snowplow-relay.service /etc/systemd/system/'
# "edit /etc/snowplow-relay/config.toml (collector.url at least)"
in_box sed -i \
  -e "s|^# url = \"redis://127.0.0.1:6379\"|url = \"redis://127.0.0.1:$redis_port\"|" \
  -e "s|^# url = \"https://collector.example.com\"|url = \"http://127.0.0.1:$collector_port\"|" \
  -e "s|^# listen = \"127.0.0.1:9187\"|listen = \"127.0.0.1:$admin_port\"|" \
  /etc/snowplow-relay/config.toml
in_box cp /etc/snowplow-relay/config.toml /etc/snowplow-relay/good.toml
in_box mkdir -p /etc/systemd/system/snowplow-relay.service.d
printf '[Service]\nWatchdogSec=6s\nSystemCallErrorNumber=kill\n' >"$work/test.conf"
docker cp "$work/test.conf" "$container:/etc/systemd/system/snowplow-relay.service.d/test.conf"
in_box systemctl daemon-reload

# 1. A start waits for Redis, as long as it takes, saying what it waits for.
[ "$(prop TimeoutStartUSec)" = infinity ] && pass "TimeoutStartSec=infinity" || fail "TimeoutStartUSec=$(prop TimeoutStartUSec)"
in_box systemctl enable --now --no-block snowplow-relay >/dev/null 2>&1
sleep 5
status=$(prop StatusText)
if state_is activating && [[ "$status" == *"waiting for Redis at"*"attempt"* ]]; then
  pass "Redis down: the start waits in activating; STATUS=$status"
else
  fail "Redis down: state $(prop ActiveState), STATUS=$status"
fi
start_redis
if wait_for 40 state_is active; then pass "Redis up: active (READY=1 once registered)"; else fail "not active once Redis answered: $(prop ActiveState)"; fi

# 2. Delivery.
push 1 1000
wait_for 60 received_at_least 1000 || true
[ "$(received)" = 1000 ] && pass "1000 of 1000 delivered" || fail "$(received) of 1000 delivered"

# 3. The sandbox.
pid=$(prop MainPID)
user=$(in_box ps -o user= -p "$pid" | tr -d ' ')
caps=$(in_box awk '/^CapEff:/ {print $2}' "/proc/$pid/status")
seccomp=$(in_box awk '/^Seccomp:/ {print $2}' "/proc/$pid/status")
if [ "$user" != root ] && [ "$caps" = 0000000000000000 ] && [ "$seccomp" = 2 ]; then
  pass "runs as dynamic user $user, no capabilities (CapEff $caps), seccomp filter on"
else
  fail "user $user, CapEff $caps, Seccomp $seccomp"
fi
echo "exposure: $(in_box systemd-analyze security snowplow-relay --no-pager | tail -n 1)"

# 4. Reload: a good file applies; a bad one is refused and the running one kept.
if in_box systemctl reload snowplow-relay && state_is active; then pass "reload"; else fail "reload"; fi
break_config() { in_box sed -i 's/^# buffer_size = .*/buffer_size = 0/' /etc/snowplow-relay/config.toml; }
break_config
if in_box systemctl reload snowplow-relay 2>/dev/null; then fail "a bad file was reloaded"; else
  state_is active && pass "a bad file is refused at reload; still active" || fail "bad reload: $(prop ActiveState)"
fi
in_box cp /etc/snowplow-relay/good.toml /etc/snowplow-relay/config.toml

# 5. STATUS= follows readiness; a stop during an outage returns every event in order.
touch "$work/outage"
push 1001 1200
wait_for 30 list_below 200 || true
status_fails() { [[ "$(prop StatusText)" == *"not ready: collector requests failing"* ]]; }
if wait_for 30 status_fails; then pass "collector failing: STATUS=$(prop StatusText)"; else fail "STATUS=$(prop StatusText) while the collector fails"; fi
started=$(date +%s.%N)
in_box systemctl stop snowplow-relay
took=$(python3 -c "print(round($(date +%s.%N) - $started, 1))")
first=$(cli LINDEX snowplow 0 | python3 -c 'import json,sys; print(json.load(sys.stdin)["eid"])')
last=$(cli LINDEX snowplow -1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["eid"])')
if [ "$(cli LLEN snowplow)" = 200 ] && [ "$first" = e1001 ] && [ "$last" = e1200 ] && [ "$(prop Result)" = success ]; then
  pass "stop during an outage: $took s, 200 of 200 back in the list in order, result success"
else
  fail "stop during an outage: $took s, $(cli LLEN snowplow) in the list ($first..$last), result $(prop Result)"
fi
rm -f "$work/outage"

# 6. A stop with Redis down, nothing held: a clean stop.
in_box systemctl start snowplow-relay
wait_for 60 received_at_least 1200 || true
wait_for 10 list_below 1 || true
sleep 1
stop_redis
in_box systemctl stop snowplow-relay
if [ "$(prop Result)" = success ] && [ "$(prop ExecMainStatus)" = 0 ]; then
  pass "stop with Redis down, nothing held: exit 0, result success"
else
  fail "stop with Redis down: exit $(prop ExecMainStatus), result $(prop Result)"
fi
start_redis

# 7. The watchdog restarts a frozen relay.
in_box systemctl start snowplow-relay
restarts=$(prop NRestarts)
pid=$(prop MainPID)
in_box kill -STOP "$pid"
restarted() { [ "$(prop NRestarts)" -gt "$restarts" ] && state_is active && [ "$(prop MainPID)" != "$pid" ]; }
if wait_for 60 restarted; then
  pass "a frozen relay: watchdog timeout, killed and restarted ($(in_box journalctl -u snowplow-relay --no-pager | grep -c 'Watchdog timeout') watchdog timeout in the journal)"
else
  fail "frozen relay not restarted: $(prop ActiveState), NRestarts $(prop NRestarts)"
fi
push 1201 1300
wait_for 30 received_at_least 1300 || true
[ "$(received)" = 1300 ] && pass "after the restart, 1300 of 1300 delivered" || fail "$(received) of 1300 after the restart"

# 8. A lease lost to another relay (the relay frozen past its lease while another one
# recovers its events): it carries on as a new instance. No STOPPING=1, so no SIGKILL
# 15 s later and no restart; every event delivered.
printf '[Service]\nWatchdogSec=60s\nSystemCallErrorNumber=kill\n' >"$work/test.conf"
docker cp "$work/test.conf" "$container:/etc/systemd/system/snowplow-relay.service.d/test.conf"
in_box systemctl daemon-reload
in_box sed -i 's/^# lease_ttl_ms = .*/lease_ttl_ms = 2000/' /etc/snowplow-relay/config.toml
in_box systemctl restart snowplow-relay
wait_for 30 state_is active || true
restarts=$(prop NRestarts)
pid=$(prop MainPID)
since=$(in_box date '+%Y-%m-%d %H:%M:%S')
push 1301 3300
in_box kill -STOP "$pid"
SNOWPLOW_RELAY_REDIS__LEASE_TTL_MS=2000 target/release/snowplow-relay \
  --redis-url "redis://127.0.0.1:$redis_port" --collector "http://127.0.0.1:$collector_port" \
  >"$work/other.log" 2>&1 &
other_pid=$!
recovered() { grep -q "returned the events of relays whose lease expired" "$work/other.log"; }
wait_for 30 recovered || true
in_box kill -CONT "$pid"
journal_has() { in_box journalctl -u snowplow-relay --since "$since" --no-pager | grep -q "$1"; }
carried_on() { journal_has "registering again as a new instance"; }
wait_for 30 carried_on || true
sleep 20
wait_for 60 received_at_least 3300 || true
if carried_on && state_is active && [ "$(prop MainPID)" = "$pid" ] && [ "$(prop NRestarts)" = "$restarts" ] \
  && ! journal_has "stop-sigterm" && [ "$(received)" = 3300 ]; then
  pass "lease lost to another relay: carried on as a new instance (same process, still active 20 s later, no restart), 3300 of 3300 delivered"
else
  fail "lease lost: $(prop ActiveState), pid $pid -> $(prop MainPID), NRestarts $restarts -> $(prop NRestarts), $(received) of 3300 delivered"
  in_box journalctl -u snowplow-relay --no-pager -n 20
fi
kill "$other_pid"; wait "$other_pid" 2>/dev/null || true
in_box cp /etc/snowplow-relay/good.toml /etc/snowplow-relay/config.toml

# 9. A password file kept as secrets are kept (0600, root) reaches the dynamic user as a
# systemd credential (LoadCredential=, as the unit's comment shows).
cli ACL SETUSER relay on '>cred-pw-9' '~*' '&*' '+@all' >/dev/null
in_box sh -ec 'printf "cred-pw-9\n" > /etc/snowplow-relay/redis-password; chmod 0600 /etc/snowplow-relay/redis-password'
in_box sed -i \
  -e 's|^# username = "relay"|username = "relay"|' \
  -e 's|^# password_file = .*|password_file = "/run/credentials/snowplow-relay.service/redis-password"|' \
  /etc/snowplow-relay/config.toml
printf '[Service]\nLoadCredential=redis-password:/etc/snowplow-relay/redis-password\n' >"$work/credential.conf"
docker cp "$work/credential.conf" "$container:/etc/systemd/system/snowplow-relay.service.d/credential.conf"
in_box systemctl daemon-reload
in_box systemctl restart snowplow-relay || true
wait_for 30 state_is active || true
push 3301 3400
wait_for 30 received_at_least 3400 || true
if state_is active && [ "$(received)" = 3400 ] && cli CLIENT LIST | grep -q 'user=relay'; then
  pass "a root-only password file as a systemd credential: logged in as relay, 3400 of 3400 delivered"
else
  fail "LoadCredential: $(prop ActiveState), $(received) of 3400 delivered"
  in_box journalctl -u snowplow-relay --no-pager -n 10
fi
in_box rm /etc/systemd/system/snowplow-relay.service.d/credential.conf
in_box systemctl daemon-reload
in_box cp /etc/snowplow-relay/good.toml /etc/snowplow-relay/config.toml

# 10. A bad configuration fails the unit with the message in the journal, no restart loop.
break_config
in_box systemctl restart snowplow-relay 2>/dev/null || true
failed_state() { state_is failed; }
wait_for 20 failed_state || true
restarts=$(prop NRestarts)
sleep 10
journal=$(in_box journalctl -u snowplow-relay --no-pager -n 50)
if state_is failed && [ "$(prop NRestarts)" = "$restarts" ] && [[ "$journal" == *"collector.buffer_size"* ]]; then
  pass "bad configuration: unit failed, no restart in 10 s, the journal names collector.buffer_size"
else
  fail "bad configuration: $(prop ActiveState), NRestarts $restarts -> $(prop NRestarts)"
  echo "$journal" | tail -n 5
fi

# 11. Redis on a unix socket (redis.url = "unix:///run/redis/redis-server.sock"), owned by
# group redis with unixsocketperm 770, as Debian's package has it: the dynamic user
# reaches it with SupplementaryGroups=redis (docs/operations.md#systemd).
in_box groupadd --gid 4242 redis
in_box cp /etc/snowplow-relay/good.toml /etc/snowplow-relay/config.toml
in_box sed -i "s|^url = \"redis://127.0.0.1:$redis_port\"|url = \"unix:///run/redis/redis-server.sock\"|" \
  /etc/snowplow-relay/config.toml
# Without the group: the socket refuses the dynamic user (the relay waits, saying so).
in_box systemctl restart --no-block snowplow-relay || true
socket_refused() { in_box journalctl -u snowplow-relay --no-pager -n 20 | grep -q 'Permission denied'; }
if wait_for 20 socket_refused; then
  pass "unix socket without SupplementaryGroups=redis: permission denied, said in the journal"
else
  fail "unix socket without the group: no 'Permission denied' in the journal"
fi
in_box systemctl stop snowplow-relay || true
printf '[Service]\nSupplementaryGroups=redis\n' >"$work/socket.conf"
docker cp "$work/socket.conf" "$container:/etc/systemd/system/snowplow-relay.service.d/socket.conf"
in_box systemctl daemon-reload
in_box systemctl reset-failed snowplow-relay 2>/dev/null || true
before=$(received)
for i in $(seq 1 50); do
  socket_cli RPUSH snowplow "{\"e\":\"pv\",\"p\":\"srv\",\"tv\":\"py-0.15.0\",\"eid\":\"socket-$i\",\"url\":\"https://a.example/\"}" >/dev/null
done
in_box systemctl restart snowplow-relay || true
wait_for 30 received_at_least $((before + 50)) || true
if state_is active && [ "$(received)" -ge $((before + 50)) ] && [ "$(socket_cli LLEN snowplow)" = 0 ]; then
  pass "Redis on a unix socket (group redis, 770) through SupplementaryGroups=redis: 50 of 50 delivered"
else
  fail "unix socket: $(prop ActiveState), $(( $(received) - before )) of 50 delivered"
  in_box journalctl -u snowplow-relay --no-pager -n 10
fi
in_box systemctl stop snowplow-relay || true
in_box rm /etc/systemd/system/snowplow-relay.service.d/socket.conf
in_box systemctl daemon-reload
in_box cp /etc/snowplow-relay/good.toml /etc/snowplow-relay/config.toml
kill "$socket_redis_pid"; wait "$socket_redis_pid" 2>/dev/null || true

# 12. The Debian package (scripts/build-deb.sh) in place of the manual install: not
# started on install, started once configured, restarted on an upgrade (the new binary
# running), stopped on removal with every held event back in the list, gone on purge.
# The test drop-in (watchdog, SystemCallErrorNumber=kill) applies to the packaged unit.
in_box systemctl disable --now snowplow-relay >/dev/null 2>&1 || true
in_box rm -f /usr/local/bin/snowplow-relay /etc/systemd/system/snowplow-relay.service
in_box mv /etc/snowplow-relay /etc/snowplow-relay.manual
in_box systemctl daemon-reload
in_box mkdir -p /debs
docker cp "$deb" "$container:/debs/"
docker cp "$deb_next" "$container:/debs/"
apt_in_box() { in_box env DEBIAN_FRONTEND=noninteractive apt-get "$@" -y -q -o Dpkg::Use-Pty=0; }
installed=$(apt_in_box install "/debs/$(basename "$deb")" 2>&1) || { echo "$installed" | tail -n 20; fail "apt-get install of the package"; }
if [[ "$installed" == *"installed and not started"* ]] && state_is inactive \
  && [ "$(in_box systemctl is-enabled snowplow-relay 2>/dev/null)" = disabled ] \
  && [ "$(prop FragmentPath)" = /lib/systemd/system/snowplow-relay.service ]; then
  pass "package installed: unit at /lib/systemd/system, not enabled, not started"
else
  fail "package install: $(prop ActiveState), $(in_box systemctl is-enabled snowplow-relay 2>&1), $(prop FragmentPath)"
fi
in_box cp /etc/snowplow-relay.manual/good.toml /etc/snowplow-relay/config.toml
in_box systemctl enable --now snowplow-relay >/dev/null 2>&1 || true
before=$(received)
push 5001 5100
wait_for 60 received_at_least $((before + 100)) || true
before_upgrade=$(prop MainPID)
if state_is active && [ "$(received)" = $((before + 100)) ]; then
  pass "configured and enabled: active, 100 of 100 delivered"
else
  fail "packaged relay: $(prop ActiveState), $(( $(received) - before )) of 100 delivered"
fi
apt_in_box install "/debs/$(basename "$deb_next")" >/dev/null 2>&1 || fail "apt-get install of the next version"
wait_for 30 state_is active || true
after_upgrade=$(prop MainPID)
version=$(in_box dpkg-query -W -f '${Version}' snowplow-relay)
if state_is active && [ "$after_upgrade" != "$before_upgrade" ] && [ "$version" = "$deb_next_version" ] \
  && in_box grep -q "$redis_port" /etc/snowplow-relay/config.toml; then
  pass "upgrade to $version: the relay restarted (pid $before_upgrade -> $after_upgrade), the edited conffile kept"
else
  fail "upgrade: $(prop ActiveState), pid $before_upgrade -> $after_upgrade, version $version"
fi
touch "$work/outage"
push 5101 5200
wait_for 30 list_below 100 || true
apt_in_box remove snowplow-relay >/dev/null 2>&1 || fail "apt-get remove"
rm -f "$work/outage"
first=$(cli LINDEX snowplow 0 | python3 -c 'import json,sys; print(json.load(sys.stdin)["eid"])')
if [ "$(cli LLEN snowplow)" = 100 ] && [ "$first" = e5101 ] && [ "$(cli SCARD '{snowplow}:instances')" = 0 ] \
  && ! in_box test -e /usr/bin/snowplow-relay && in_box test -e /etc/snowplow-relay/config.toml; then
  pass "removal stopped the relay: 100 of 100 held events back in the list in order; the conffile stays until purge"
else
  fail "removal: $(cli LLEN snowplow) in the list (first $first), $(cli SCARD '{snowplow}:instances') instances"
fi
apt_in_box purge snowplow-relay >/dev/null 2>&1 || fail "apt-get purge"
if ! in_box test -e /etc/snowplow-relay && ! in_box test -e /lib/systemd/system/snowplow-relay.service \
  && ! in_box test -e /etc/systemd/system/multi-user.target.wants/snowplow-relay.service; then
  pass "purge: /etc/snowplow-relay, the unit and its enablement gone"
else
  fail "purge left files: $(in_box ls /etc/snowplow-relay /etc/systemd/system/multi-user.target.wants 2>&1 | tr '\n' ' ')"
fi
cli DEL snowplow >/dev/null

# No system call was refused (with SystemCallErrorNumber=kill a refusal kills the relay
# with SIGSYS, which the journal would show).
if in_box journalctl --no-pager | grep -q 'SIGSYS\|status=31/SYS'; then fail "a system call was refused"; else pass "no system call refused (SystemCallErrorNumber=kill)"; fi

if [ "$failures" -gt 0 ]; then
  in_box journalctl -u snowplow-relay --no-pager -n 30
  echo "FAIL: $failures systemd check(s)"
  exit 1
fi
echo "PASS: the unit under a real systemd"
