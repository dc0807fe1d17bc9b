-- UNVERSION (`prepare-rollback`, after recovering every expired instance): removes the
-- key layout's version so that an older build, which knows no version, meets a Redis
-- with nothing it cannot read: no registered instance (so no in-flight or retry list)
-- and no version. Refused, writing nothing, while any instance is registered.
-- KEYS: instances, layout. ARGV: key prefix.
-- Returns the registered instances, each as {id, host, pid, 1 if its lease is live};
-- empty when the version was removed.
local denied = refused({{'smembers', KEYS[1]}, {'del', KEYS[2]}})
if denied then return denied end
local left = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local meta = ARGV[1] .. 'instance:' .. id
  local live = redis.call('EXISTS', ARGV[1] .. 'lease:' .. id)
  left[#left + 1] = {id, redis.call('HGET', meta, 'host') or '', redis.call('HGET', meta, 'pid') or '', live}
end
if #left > 0 then return left end
redis.call('DEL', KEYS[2])
return left
