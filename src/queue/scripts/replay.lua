-- REPLAY: moves up to ARGV[1] dead-letter entries (oldest first) back to the tail of the
-- list, stripped of their metadata line, in one atomic step. KEYS: dead, list.
-- Writes, in order: copies onto the list, then the trim of the dead-letter list.
local denied = refused({{'lrange', KEYS[1]}})
if denied then return denied end
local entries = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
if #entries == 0 then return 0 end
denied = refused({{'rpush', KEYS[2]}, {'ltrim', KEYS[1]}})
if denied then return denied end
local originals = {}
for i, entry in ipairs(entries) do
  local newline = string.find(entry, '\n', 1, true)
  if newline then originals[i] = string.sub(entry, newline + 1) else originals[i] = entry end
end
push_all('RPUSH', KEYS[2], originals, 1)
redis.call('LTRIM', KEYS[1], #entries, -1)
return #entries
