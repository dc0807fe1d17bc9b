-- HEARTBEAT: renews the lease while the instance is registered (also after the lease
-- lapsed during a long Redis stall, as long as no other relay recovered the instance).
-- KEYS: instances, lease. ARGV: instance, lease ttl ms.
local denied = refused({{'sismember', KEYS[1]}, {'set', KEYS[2]}})
if denied then return denied end
local lost = check_lease(KEYS[1], ARGV[1]); if lost then return lost end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
return 1
