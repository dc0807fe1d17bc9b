-- ABANDON: returns every event this instance holds (in-flight and parked) to the head of
-- the list in claim order and removes the instance: what a relay does when it can no
-- longer trust positions. KEYS: list, inflight, meta, instances, lease, retry.
-- ARGV: instance. Returns how many events went back.
local denied = refused({{'hget', KEYS[3]}, {'lrange', KEYS[2]}, {'lrange', KEYS[6]}})
if denied then return denied end
local acked = tonumber(redis.call('HGET', KEYS[3], 'acked') or '0') or 0
local back = held_in_order(KEYS[2], KEYS[6], acked)
denied = refused({#back > 0 and {'lpush', KEYS[1]}, {'del', KEYS[2]}, {'del', KEYS[6]},
  {'del', KEYS[3]}, {'del', KEYS[5]}, {'srem', KEYS[4]}})
if denied then return denied end
push_to_head(KEYS[1], back)
redis.call('DEL', KEYS[2], KEYS[6], KEYS[3], KEYS[5])
redis.call('SREM', KEYS[4], ARGV[1])
return #back
