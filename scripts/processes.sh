# Shared by quickstart.sh and tests/interop/run.sh (sourced, not run): a private work
# folder, the background processes a script starts (append each PID to `pids`), and a
# trap that stops them and removes the folder however the script ends.
work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# True when something listens on 127.0.0.1:PORT (bash alone, no curl or nc).
in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# The first port from $1 up that nothing listens on.
free_port() { local port=$1; while in_use "$port"; do port=$((port + 1)); done; echo "$port"; }
# Runs "$@" every 0.1 s until it succeeds; gives up after 30 s.
wait_for() { for _ in $(seq 1 300); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "timed out: $*" >&2; return 1; }
