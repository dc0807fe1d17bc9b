-- REGISTER: adds this instance, its counters and its first lease.
-- KEYS: instances, meta, lease. ARGV: instance, lease ttl ms, host, pid, started.
local denied = refused({{'sadd', KEYS[1]}, {'hset', KEYS[2]}, {'set', KEYS[3]}})
if denied then return denied end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], 'acked', 0, 'claimed', 0, 'host', ARGV[3], 'pid', ARGV[4], 'started', ARGV[5])
redis.call('SET', KEYS[3], '1', 'PX', ARGV[2])
return 1
