"""A RedisEmitter for the Python tracker that writes up to `batch_size` events per RPUSH.

The Python tracker's own RedisEmitter sends one RPUSH per event and waits for each reply:
on the reference machine that costs redis-server about three times the instructions and
ten times the CPU of an event written in a batch (docs/performance.md, "Producers"), more
than the relay spends to drain it. This emitter writes the same elements (one
`json.dumps(payload)` per event, as the tracker's own does), `batch_size` at a time.

Events wait in this process until the batch is full, `max_wait_seconds` passed (checked
at the next event) or `flush()` is called: events still waiting when the process dies
are lost, as with any buffering emitter. `flush()` runs at interpreter exit; call it
yourself at the end of a request or job if you need the events in Redis then.

    from snowplow_tracker import Tracker
    from batching_redis_emitter import BatchingRedisEmitter
    tracker = Tracker([BatchingRedisEmitter(redis.StrictRedis(), "snowplow")], ...)

Tested by tests/interop/python_interop.py (its events arrive field for field as the
Python Emitter sends them).
"""

import atexit
import json
import threading
import time


class BatchingRedisEmitter:
    def __init__(self, rdb, key="snowplow", batch_size=100, max_wait_seconds=1.0):
        self.rdb = rdb
        self.key = key
        self.batch_size = batch_size
        self.max_wait_seconds = max_wait_seconds
        self.pending = []
        self.oldest = None
        self.lock = threading.Lock()
        atexit.register(self.flush)

    def input(self, payload):
        with self.lock:
            if not self.pending:
                self.oldest = time.monotonic()
            self.pending.append(json.dumps(payload))
            full = len(self.pending) >= self.batch_size
            old = time.monotonic() - self.oldest >= self.max_wait_seconds
        if full or old:
            self.flush()

    def flush(self):
        with self.lock:
            batch, self.pending = self.pending, []
        if batch:
            # One command, one round trip: the whole batch lands in the list at once.
            self.rdb.rpush(self.key, *batch)

    def sync_flush(self):
        self.flush()
