# Shared by tests/docker/run.sh and tests/systemd/run.sh (sourced): a private dockerd
# (vfs storage, socket in $work) and base images made with debootstrap from Debian's
# own repository (Docker Hub is not reachable here). A test calls `begin_test NAME
# CONTAINER` first: it makes `work`, defines `skip` and removes what the test started on
# exit (the container, dockerd, the `redis_pid` and `collector_pid` it set, `work`).

# begin_test NAME CONTAINER: the prologue both container tests share.
begin_test() {
  test_name=$1
  test_container=$2
  skip() { echo "$test_name test skipped: $*"; exit 77; }
  need_docker_tools
  work=$(mktemp -d "/tmp/relay-$test_name.XXXXXX")
  trap end_test EXIT
}

end_test() {
  set +e
  docker rm -f "$test_container" >/dev/null 2>&1
  stop_dockerd
  [ -n "${redis_pid:-}" ] && kill "$redis_pid" 2>/dev/null
  [ -n "${collector_pid:-}" ] && kill "$collector_pid" 2>/dev/null
  rm -rf "$work" 2>/dev/null || true
}

# Installs dockerd and debootstrap from Debian's packages when missing.
need_docker_tools() {
  export DEBIAN_FRONTEND=noninteractive
  local need=()
  command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
  command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
      || skip "cannot install ${need[*]}"
  fi
}

# Starts a dockerd of this test's own; DOCKER_HOST points at it.
start_dockerd() {
  sock="$work/docker.sock"
  export DOCKER_HOST="unix://$sock"
  dockerd --storage-driver vfs --data-root "$work/data" --exec-root "$work/exec" \
    --host "$DOCKER_HOST" --pidfile "$work/dockerd.pid" --bridge none --iptables=false \
    >"$work/dockerd.log" 2>&1 &
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { tail -n 20 "$work/dockerd.log"; skip "dockerd does not start"; }
}

# Stops dockerd, any container shim it left, and unmounts what it mounted under $work.
stop_dockerd() {
  [ -f "$work/dockerd.pid" ] && kill "$(cat "$work/dockerd.pid")" 2>/dev/null && sleep 1
  pkill -9 -f "containerd-shim.*$work" 2>/dev/null
  mount | awk -v w="$work" 'index($3, w) == 1 {print $3}' | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null
  done
  true
}

# import_rootfs IMAGE [PACKAGES]: a minbase Debian bookworm (plus PACKAGES, comma-separated)
# imported as IMAGE, unless it exists.
import_rootfs() {
  local image=$1 include=${2:-} mirror
  docker image inspect "$image" >/dev/null 2>&1 && return 0
  mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)
  mirror=${mirror:-http://deb.debian.org/debian}
  local rootfs="$work/rootfs-${image//[:\/]/-}"
  debootstrap --variant=minbase ${include:+--include="$include"} bookworm "$rootfs" "$mirror" \
    >"$work/debootstrap.log" 2>&1 || { tail -n 20 "$work/debootstrap.log"; skip "debootstrap failed"; }
  tar -C "$rootfs" -c . | docker import - "$image" >/dev/null
  rm -rf "$rootfs"
}

# A free TCP port on 127.0.0.1.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_collector PORT: a collector on 127.0.0.1:PORT answering 200, or 503 while
# $work/outage exists; it appends each accepted event's eid to $work/received.
start_collector() {
  touch "$work/received"
  python3 - "$1" "$work" <<'PY' &
import http.server, json, os, sys
port, work = int(sys.argv[1]), sys.argv[2]
class C(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if os.path.exists(os.path.join(work, "outage")):
            self.send_response(503); self.end_headers(); return
        with open(os.path.join(work, "received"), "a") as f:
            for item in json.loads(body)["data"]:
                f.write(item["eid"] + "\n")
        self.send_response(200); self.end_headers()
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), C).serve_forever()
PY
  collector_pid=$!
}

# Distinct events the collector accepted.
received() { sort -u "$work/received" | wc -l; }

# push FROM TO: events eFROM..eTO onto the list `snowplow` of the Redis at $redis_port,
# one RPUSH per line (single quotes keep redis-cli from parsing the JSON's quotes).
push() {
  for i in $(seq "$1" "$2"); do
    echo "RPUSH snowplow '{\"e\":\"pv\",\"p\":\"pc\",\"tv\":\"t\",\"eid\":\"e$i\"}'"
  done | redis-cli -p "$redis_port" >/dev/null
}
