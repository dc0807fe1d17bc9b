-- SETTLE_PARKED: removes parked events the relay resolved from its retry list, writing
-- the dead-letter entries of those that failed for good (from Redis's own copy).
-- KEYS: retry, dead, instances. ARGV: instance, then (position, metadata line or '' for
-- delivered) pairs. Writes, in order: dead-letter entries (copies), then the removals.
-- Safe to retry: an entry already removed is not found again.
local denied = refused({{'sismember', KEYS[3]}, {'lrange', KEYS[1]}})
if denied then return denied end
local lost = check_lease(KEYS[3], ARGV[1]); if lost then return lost end
local settle = {}
for i = 2, #ARGV, 2 do settle[tonumber(ARGV[i])] = ARGV[i + 1] end
local dead, remove = {}, {}
for _, entry in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  local position, element = parked_entry(entry)
  local meta = settle[position]
  if meta ~= nil then
    if meta ~= '' then dead[#dead + 1] = meta .. '\n' .. element end
    remove[#remove + 1] = entry
  end
end
denied = refused({#dead > 0 and {'rpush', KEYS[2]}, #remove > 0 and {'lrem', KEYS[1]}})
if denied then return denied end
push_all('RPUSH', KEYS[2], dead, 1)
for _, entry in ipairs(remove) do redis.call('LREM', KEYS[1], 1, entry) end
return #remove
