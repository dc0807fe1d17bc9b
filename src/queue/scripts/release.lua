-- RELEASE (graceful shutdown): every event this instance holds and has not resolved goes
-- back to the head of the list in claim order (in-flight and parked alike, from Redis's
-- own copies); the dead-letter entries of resolved ones are written; the instance is
-- removed. After a rollback (counters that do not match) nothing positional is trusted:
-- everything goes back, resolved or not, and no dead-letter entry is written.
-- KEYS: list, inflight, meta, instances, dead, lease, retry.
-- ARGV: instance, window start, resolved flags ('1' per resolved position from the window
--       start), claim position, count of dead-letter triples, then (position, metadata
--       line, SHA-1 of the element claimed there) triples, then the positions of parked
--       events already delivered. A dead-letter entry whose element in Redis is not the
--       one claimed counts as a mismatch: everything goes back.
-- Returns {events returned, 1 if the counters did not match}.
-- Writes, in order: copies back to the list, dead-letter entries, then the deletes.
local denied = refused({{'sismember', KEYS[4]}, {'hget', KEYS[3]}, {'llen', KEYS[2]},
  {'lrange', KEYS[2]}, {'lrange', KEYS[7]}})
if denied then return denied end
local lost = check_lease(KEYS[4], ARGV[1]); if lost then return lost end
local base = tonumber(ARGV[2])
local flags = ARGV[3]
local acked, claimed, mismatch = counters(KEYS[3], KEYS[2], tonumber(ARGV[4]), base)
acked = acked or tonumber(redis.call('HGET', KEYS[3], 'acked') or '0') or 0
local metas, sums, delivered = {}, {}, {}
local triples_end = 5 + 3 * tonumber(ARGV[5])
for i = 6, triples_end, 3 do
  metas[tonumber(ARGV[i])] = ARGV[i + 1]
  sums[tonumber(ARGV[i])] = ARGV[i + 2]
end
for i = triples_end + 1, #ARGV do delivered[tonumber(ARGV[i])] = true end
if not mismatch then
  -- The dead-letter entries are written from Redis's copies: each must be the element
  -- claimed at its position.
  local items = redis.call('LRANGE', KEYS[2], 0, -1)
  for i, item in ipairs(items) do
    local sum = sums[acked + i - 1]
    if sum and redis.sha1hex(item) ~= sum then mismatch = true end
  end
  for _, entry in ipairs(redis.call('LRANGE', KEYS[7], 0, -1)) do
    local position, element = parked_entry(entry)
    if sums[position] and redis.sha1hex(element) ~= sums[position] then mismatch = true end
  end
end
local function unresolved(position)
  if mismatch then return true end
  local offset = position - base + 1
  return offset < 1 or string.sub(flags, offset, offset) ~= '1'
end
local function parked_unresolved(position)
  return mismatch or (metas[position] == nil and not delivered[position])
end
local back, items, parked = held_in_order(KEYS[2], KEYS[7], acked, unresolved, parked_unresolved)
local dead = {}
if not mismatch then
  for i, item in ipairs(items) do
    local meta = metas[acked + i - 1]
    if meta and not unresolved(acked + i - 1) then dead[#dead + 1] = meta .. '\n' .. item end
  end
  for _, entry in ipairs(parked) do
    local position, element = parked_entry(entry)
    if metas[position] then dead[#dead + 1] = metas[position] .. '\n' .. element end
  end
end
denied = refused({#back > 0 and {'lpush', KEYS[1]}, #dead > 0 and {'rpush', KEYS[5]},
  {'del', KEYS[2]}, {'del', KEYS[7]}, {'del', KEYS[3]}, {'del', KEYS[6]}, {'srem', KEYS[4]}})
if denied then return denied end
push_to_head(KEYS[1], back)
push_all('RPUSH', KEYS[5], dead, 1)
redis.call('DEL', KEYS[2], KEYS[7], KEYS[3], KEYS[6])
redis.call('SREM', KEYS[4], ARGV[1])
return {#back, mismatch and 1 or 0}
