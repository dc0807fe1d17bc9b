-- PROBE (start-up, writes nothing). KEYS: list, dead, inflight, meta, lease, instances,
-- retry. Returns {Redis version as a number (0 before 7.0), the commands this Redis user
-- may not run on the relay's keys as "COMMAND key" strings (Redis 7+ only), the keys that
-- exist but are not lists}.
local denied, wrong = {}, {}
if redis.acl_check_cmd then
  local needs = {
    {'lrange', KEYS[1]}, {'ltrim', KEYS[1]}, {'lpush', KEYS[1]}, {'llen', KEYS[1]},
    {'lindex', KEYS[1]}, {'blmove', KEYS[1], KEYS[1]},
    {'rpush', KEYS[2]}, {'llen', KEYS[2]}, {'lrange', KEYS[2]},
    {'rpush', KEYS[3]}, {'lrange', KEYS[3]}, {'llen', KEYS[3]}, {'ltrim', KEYS[3]}, {'del', KEYS[3]},
    {'hset', KEYS[4]}, {'hget', KEYS[4]}, {'del', KEYS[4]},
    {'set', KEYS[5]}, {'exists', KEYS[5]}, {'del', KEYS[5]},
    {'sadd', KEYS[6]}, {'srem', KEYS[6]}, {'sismember', KEYS[6]}, {'smembers', KEYS[6]},
    {'rpush', KEYS[7]}, {'lrange', KEYS[7]}, {'lrem', KEYS[7]}, {'del', KEYS[7]},
    {'evalsha', 'x', '0'}, {'script', 'load', 'x'},
  }
  for _, need in ipairs(needs) do
    if not redis.acl_check_cmd(unpack(need)) then
      local shown = string.upper(need[1])
      if need[1] == 'script' then shown = 'SCRIPT LOAD' elseif need[1] ~= 'evalsha' then
        shown = shown .. ' ' .. need[2] end
      denied[#denied + 1] = shown
    end
  end
end
for _, key in ipairs({KEYS[1], KEYS[2]}) do
  local ok, err = pcall(redis.call, 'LLEN', key)
  if type(err) == 'table' then err = err.err end
  if not ok and string.find(tostring(err), 'WRONGTYPE', 1, true) then wrong[#wrong + 1] = key end
end
return {redis.REDIS_VERSION_NUM or 0, denied, wrong}
