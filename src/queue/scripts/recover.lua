-- RECOVER: for each registered instance but the caller whose lease expired, returns the
-- events it held (in-flight and parked) to the head of the list in claim order and
-- removes it. Scripts run one at a time, so two relays recovering at once never both
-- move the same events; the caller never recovers itself (after a long Redis stall its
-- own lease may have lapsed, but it is alive and renews it).
-- A marker `{list}:recovered:<instance>` (naming the caller and the time, kept for a day)
-- lets the recovered relay, should it come back, tell this from a Redis that lost its
-- data. KEYS: list, instances. ARGV: key prefix, the caller's instance, the time.
-- Returns {instances, events} recovered.
local denied = refused({{'smembers', KEYS[2]}})
if denied then return denied end
local instances, events = 0, 0
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local lease = ARGV[1] .. 'lease:' .. id
  if id ~= ARGV[2] and redis.call('EXISTS', lease) == 0 then
    local inflight, retry, meta = ARGV[1] .. 'inflight:' .. id, ARGV[1] .. 'retry:' .. id,
      ARGV[1] .. 'instance:' .. id
    denied = refused({{'hget', meta}, {'lrange', inflight}, {'lrange', retry}})
    if denied then return denied end
    local acked = tonumber(redis.call('HGET', meta, 'acked') or '0') or 0
    local back = held_in_order(inflight, retry, acked)
    local marker = ARGV[1] .. 'recovered:' .. id
    denied = refused({#back > 0 and {'lpush', KEYS[1]}, {'set', marker}, {'del', inflight},
      {'del', retry}, {'del', meta}, {'srem', KEYS[2]}})
    if denied then return denied end
    push_to_head(KEYS[1], back)
    redis.call('SET', marker, 'by ' .. ARGV[2] .. ' at ' .. ARGV[3], 'PX', 86400000)
    redis.call('DEL', inflight, retry, meta)
    redis.call('SREM', KEYS[2], id)
    instances = instances + 1
    events = events + #back
  end
end
return {instances, events}
