-- DEAD_MOVE: one atomic step of `dead-letter replay` or `drop`. Takes up to ARGV[2]
-- entries from the head of the dead-letter list; of those the filter takes (at most
-- ARGV[4]), replays each element onto the list's tail, metadata stripped (ARGV[3] =
-- 'replay'), or drops it ('drop'); the others go back to the dead-letter list's tail in
-- their order. Returns {entries read, entries taken}. KEYS: dead, list.
--
-- A pass over the list's length at its start, step by step, reads each entry it found
-- once and keeps the order of those it leaves; entries written meanwhile land behind
-- the ones it has read and are not read.
-- Writes, in order: the replayed elements onto the list, the kept entries onto the
-- dead-letter list, then the trim of the entries read: any prefix of them leaves every
-- entry in at least one place.
local denied = refused({{'lrange', KEYS[1]}})
if denied then return denied end
local entries = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
if #entries == 0 then return {0, 0} end
local most = tonumber(ARGV[4])
local replay = ARGV[3] == 'replay'
local replayed, kept = {}, {}
local taken = 0
for i = 1, #entries do
  local entry = entries[i]
  if taken < most and takes(entry) then
    taken = taken + 1
    if replay then replayed[#replayed + 1] = element_of(entry) end
  else
    kept[#kept + 1] = entry
  end
end
denied = refused({#replayed > 0 and {'rpush', KEYS[2]}, #kept > 0 and {'rpush', KEYS[1]},
  {'ltrim', KEYS[1]}})
if denied then return denied end
push_all('RPUSH', KEYS[2], replayed, 1)
push_all('RPUSH', KEYS[1], kept, 1)
redis.call('LTRIM', KEYS[1], #entries, -1)
return {#entries, taken}
