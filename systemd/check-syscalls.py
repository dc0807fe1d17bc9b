#!/usr/bin/env python3
"""Checks that the relay runs under the unit's SystemCallFilter.

Runs the given snowplow-relay binary under strace against a private redis-server and a
small collector: it relays events, serves /metrics, and stops on SIGTERM. Every system
call it made must be in @system-service minus @privileged and @resources (the unit's
filter), as `systemd-analyze syscall-filter` defines those sets on this machine.

Usage: check-syscalls.py BINARY   (needs strace, redis-server, redis-cli, systemd-analyze)
"""
import http.server
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time


def groups():
    """Every syscall group systemd knows, as {name: [members]} (members may be groups)."""
    out = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True,
                         text=True, check=True).stdout
    result, current = {}, None
    for line in out.splitlines():
        if line.startswith("@"):
            current = line.strip()
            result[current] = []
        elif current and line.strip() and not line.strip().startswith("#"):
            result[current].append(line.strip())
    return result


def expand(name, table, seen=None):
    seen = seen if seen is not None else set()
    out = set()
    for member in table.get(name, []):
        if member.startswith("@"):
            if member not in seen:
                seen.add(member)
                out |= expand(member, table, seen)
        else:
            out.add(member)
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Collector(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def main():
    binary = sys.argv[1]
    table = groups()
    allowed = expand("@system-service", table) - expand("@privileged", table) - expand("@resources", table)
    redis_port, admin_port = free_port(), free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--save", "",
                              "--appendonly", "no"], stdout=subprocess.DEVNULL)
    collector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    trace = tempfile.NamedTemporaryFile(suffix=".strace", delete=False).name
    try:
        time.sleep(0.5)
        events = [json.dumps({"e": "pv", "p": "pc", "tv": "t", "eid": f"e{i}"}) for i in range(2000)]
        subprocess.run(["redis-cli", "-p", str(redis_port), "RPUSH", "snowplow", *events],
                       check=True, stdout=subprocess.DEVNULL)
        relay = subprocess.Popen(
            ["strace", "-f", "-qq", "-o", trace, binary,
             "--redis-url", f"redis://127.0.0.1:{redis_port}",
             "--collector", f"http://127.0.0.1:{collector.server_address[1]}",
             "--admin-listen", f"127.0.0.1:{admin_port}", "--log-level", "warn"],
        )
        deadline = time.time() + 30
        while time.time() < deadline:
            left = subprocess.run(["redis-cli", "-p", str(redis_port), "LLEN", "snowplow"],
                                  capture_output=True, text=True).stdout.strip()
            if left == "0":
                break
            time.sleep(0.2)
        subprocess.run([binary, "--admin-listen", f"127.0.0.1:{admin_port}", "healthcheck"],
                       stdout=subprocess.DEVNULL)
        time.sleep(0.5)
        # strace's child is the relay: signal it, not strace.
        children = subprocess.run(["pgrep", "-P", str(relay.pid)], capture_output=True,
                                  text=True).stdout.split()
        for pid in children:
            os.kill(int(pid), signal.SIGTERM)
        relay.wait(timeout=20)
    finally:
        redis.kill()
        collector.shutdown()
    used = set()
    for line in open(trace):
        match = re.match(r"^\d+\s+([a-z_0-9]+)\(", line)
        if match:
            used.add(match.group(1))
    os.unlink(trace)
    denied = sorted(used - allowed)
    print(f"system calls made: {len(used)}; outside the unit's SystemCallFilter: {denied or 'none'}")
    return 1 if denied else 0


if __name__ == "__main__":
    sys.exit(main())
