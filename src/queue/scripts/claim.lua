-- CLAIM: moves up to ARGV[3] events, and at most ARGV[6] bytes of them, from the head of
-- the list to the tail of this instance's in-flight list, and returns them.
-- KEYS: list, inflight, meta, instances, dead.
-- ARGV: instance, expected position, max count, max element bytes, time (RFC 3339),
--       max bytes.
-- Returns {elements diverted to the dead-letter list, 1 if the list ran dry, elements}.
--
-- Elements over the size limit go straight to the dead-letter list: they never reach the
-- relay. The byte budget is enforced while reading, and every element read counts
-- against it, kept or diverted: reads start with one element and grow (doubling, never
-- past what the rest of the budget could hold if every element were as large as
-- allowed) only while the elements read are within the limit; after an element over
-- it, the script reads one at a time. A list full of oversized elements therefore makes
-- a claim read at most its budget plus one element (and a list that mixes them, at most
-- a few more), so neither the reply nor the script's memory grows with the elements'
-- size. If the in-flight list already holds events past the position the caller
-- expects, an earlier claim's reply was lost: those are returned again (within the same
-- count and byte budget) and nothing new is taken.
-- Writes, in order: copy to the in-flight and dead-letter lists, count, then trim the
-- list; a prefix of them leaves every event in the list.
local denied = refused({{'lrange', KEYS[1]}, {'sismember', KEYS[4]}, {'hget', KEYS[3]},
  {'llen', KEYS[2]}, {'lrange', KEYS[2]}})
if denied then return denied end
local lost = check_lease(KEYS[4], ARGV[1]); if lost then return lost end
local position = tonumber(ARGV[2])
local acked, claimed, mismatch = counters(KEYS[3], KEYS[2], position, 0)
if mismatch then return mismatch end
local max_count, max_element, budget = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[6])

-- Reads up to max_count elements of `key` from index `from`, within the byte budget
-- (every element read counts, whatever `on_item` does with it).
local function read_within_budget(key, from, on_item)
  local taken, used, step = 0, 0, 1
  while taken < max_count do
    local n = math.min(step, math.floor((budget - used) / max_element), max_count - taken)
    if n < 1 then return taken, false end
    local chunk = redis.call('LRANGE', key, from + taken, from + taken + n - 1)
    local oversized = false
    for _, item in ipairs(chunk) do
      used = used + #item
      if #item > max_element then oversized = true end
      on_item(item)
    end
    taken = taken + #chunk
    if #chunk < n then return taken, true end
    if oversized then step = 1 else step = step * 2 end
  end
  return taken, false
end

if claimed > position then
  -- The reply of the last claim was lost: send the unseen tail again, take nothing new.
  local again = {}
  read_within_budget(KEYS[2], position - acked, function(item)
    again[#again + 1] = item
  end)
  return {0, 0, again}
end

local keep, diverted = {}, {}
local taken, dry = read_within_budget(KEYS[1], 0, function(item)
  if #item > max_element then
    -- Written as records.rs's DeadLetter writes it (its fields in its order), so that
    -- `dead-letter export` and `import` give this entry back byte for byte.
    local meta = '{"reason":"oversized","detail":"element is ' .. #item ..
      ' bytes, larger than the ' .. max_element .. '-byte limit","status":null,"failed_at":' ..
      cjson.encode(ARGV[5]) .. ',"relay":' .. cjson.encode(ARGV[1]) .. '}'
    diverted[#diverted + 1] = meta .. '\n' .. item
    return
  end
  keep[#keep + 1] = item
end)
denied = refused({#keep > 0 and {'rpush', KEYS[2]}, #diverted > 0 and {'rpush', KEYS[5]},
  {'hset', KEYS[3]}, taken > 0 and {'ltrim', KEYS[1]}})
if denied then return denied end
push_all('RPUSH', KEYS[2], keep, 1)
push_all('RPUSH', KEYS[5], diverted, 1)
redis.call('HSET', KEYS[3], 'claimed', claimed + #keep)
if taken > 0 then redis.call('LTRIM', KEYS[1], taken, -1) end
return {#diverted, dry and 1 or 0, keep}
