-- ACK: acknowledges the in-flight events from the relay's acknowledged count up to
-- ARGV[3] (delivered, dead-lettered or parked), writing their dead-letter and retry-list
-- entries from Redis's own copy of each element. Safe to retry: it carries absolute
-- counts, and an entry is written only for a position not acknowledged yet.
-- KEYS: inflight, meta, instances, dead, retry.
-- ARGV: instance, acknowledged total before, acknowledged total after, then quadruples
--       (kind: 'd' dead-letter or 'p' parked, position, metadata line, the SHA-1 of the
--       element the relay claimed at that position).
-- An entry is written only from the element the relay claimed: a copy that is another
-- (the in-flight list shifted behind the relay's back) fails the script as a mismatch.
-- Writes, in order: dead-letter and retry entries (copies), the count, then the trim.
local denied = refused({{'sismember', KEYS[3]}, {'hget', KEYS[2]}, {'llen', KEYS[1]},
  {'lrange', KEYS[1]}})
if denied then return denied end
local lost = check_lease(KEYS[3], ARGV[1]); if lost then return lost end
local target = tonumber(ARGV[3])
local acked, claimed, mismatch = counters(KEYS[2], KEYS[1], target, tonumber(ARGV[2]))
if mismatch then return mismatch end
if target > acked then
  local dead, parked = {}, {}
  if #ARGV > 3 then
    local items = redis.call('LRANGE', KEYS[1], 0, target - acked - 1)
    for i = 4, #ARGV, 4 do
      local position = tonumber(ARGV[i + 1])
      local item = items[position - acked + 1]
      if position >= acked and item then
        if redis.sha1hex(item) ~= ARGV[i + 3] then
          return redis.error_reply('STATE_MISMATCH the in-flight element at position ' ..
            position .. ' is not the one this relay claimed: the list was changed')
        end
        local entry = ARGV[i + 2] .. '\n' .. item
        if ARGV[i] == 'p' then parked[#parked + 1] = entry else dead[#dead + 1] = entry end
      end
    end
  end
  denied = refused({#dead > 0 and {'rpush', KEYS[4]}, #parked > 0 and {'rpush', KEYS[5]},
    {'hset', KEYS[2]}, {'ltrim', KEYS[1]}})
  if denied then return denied end
  push_all('RPUSH', KEYS[4], dead, 1)
  push_all('RPUSH', KEYS[5], parked, 1)
  redis.call('HSET', KEYS[2], 'acked', target)
  redis.call('LTRIM', KEYS[1], target - acked, -1)
end
return target
