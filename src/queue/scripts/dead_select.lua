-- DEAD_SELECT: reads up to ARGV[3] dead-letter entries from index ARGV[2] (counted from
-- the head, or from the tail when ARGV[4] is 'newest') and returns how many it read and
-- those the filter takes, in reading order; only their number when ARGV[5] is 'count'.
-- Writes nothing. KEYS: dead.
local denied = refused({{'lrange', KEYS[1]}})
if denied then return denied end
local start, window = tonumber(ARGV[2]), tonumber(ARGV[3])
local entries
if ARGV[4] == 'newest' then
  entries = redis.call('LRANGE', KEYS[1], -(start + window), -(start + 1))
  local n = #entries
  for i = 1, math.floor(n / 2) do
    entries[i], entries[n + 1 - i] = entries[n + 1 - i], entries[i]
  end
else
  entries = redis.call('LRANGE', KEYS[1], start, start + window - 1)
end
local taken = {}
local count = 0
for i = 1, #entries do
  if takes(entries[i]) then
    count = count + 1
    if ARGV[5] ~= 'count' then taken[#taken + 1] = entries[i] end
  end
end
return {#entries, count, taken}
