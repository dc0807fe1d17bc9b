-- Shared by every script (prepended to each one's body).
--
-- The rule every script follows: a command that fails inside a script does not undo the
-- writes before it, so (1) each script checks, before its first write, that this Redis
-- user may run every command it needs (`refused`), and (2) each script copies an event
-- to its new place before it removes it from the old one, so that any prefix of its
-- writes leaves every event in at least one place.

-- The first of `needs` ({command, key, ...} each; `false` entries are skipped: writes
-- the script will not make this time) this Redis user may not run, as an error reply;
-- nil when all are allowed. Redis before 7.0 cannot check from Lua.
local function refused(needs)
  if not redis.acl_check_cmd then return nil end
  for i = 1, #needs do
    local need = needs[i]
    if need and not redis.acl_check_cmd(unpack(need)) then
      return redis.error_reply('NOPERM this Redis user may not run ' .. string.upper(need[1]) ..
        ' on key ' .. need[2])
    end
  end
  return nil
end

-- Pushes items[from..] onto a list in chunks (Lua's unpack has a stack limit).
local function push_all(cmd, key, items, from)
  local n = #items
  local i = from
  while i <= n do
    local last = math.min(i + 999, n)
    redis.call(cmd, key, unpack(items, i, last))
    i = last + 1
  end
end

-- Puts items back at the head of a list so that items[1] ends up first.
local function push_to_head(key, items)
  local i = #items
  while i >= 1 do
    local first = math.max(i - 999, 1)
    local chunk = {}
    for j = i, first, -1 do chunk[#chunk + 1] = items[j] end
    redis.call('LPUSH', key, unpack(chunk))
    i = first - 1
  end
end

-- Nil while the instance is registered; else an error reply saying why it is not:
-- LEASE_LOST when another relay recovered it (recover.lua leaves a marker for a day),
-- FORGOTTEN when Redis no longer knows it at all (it restarted without its data, was
-- flushed, or the keys were deleted).
local function check_lease(instances, id)
  if redis.call('SISMEMBER', instances, id) == 0 then
    local marker = string.sub(instances, 1, -10) .. 'recovered:' .. id
    if (not redis.acl_check_cmd or redis.acl_check_cmd('exists', marker))
        and redis.call('EXISTS', marker) == 1 then
      return redis.error_reply('LEASE_LOST instance ' .. id .. ' was recovered by another relay')
    end
    return redis.error_reply('FORGOTTEN instance ' .. id .. ' is unknown to Redis')
  end
  return nil
end

-- The instance's counters, or nil (and an error reply) if they are not consistent with
-- each other or with the relay's claim position and acknowledged count.
local function counters(meta, inflight, position, acked_by_relay)
  local acked = tonumber(redis.call('HGET', meta, 'acked') or '-1')
  local claimed = tonumber(redis.call('HGET', meta, 'claimed') or '-1')
  if acked < 0 or claimed < position or acked < acked_by_relay
      or acked + redis.call('LLEN', inflight) ~= claimed then
    return nil, nil, redis.error_reply('STATE_MISMATCH in-flight list and counters are not ' ..
      'what this relay left (acked ' .. acked .. ', claimed ' .. claimed .. ', relay at ' ..
      position .. '): Redis lost writes')
  end
  return acked, claimed
end

-- A retry-list entry is one line of JSON metadata holding `"position":N`, a newline,
-- then the element byte for byte. Returns the position (or -1) and the element.
local function parked_entry(entry)
  local newline = string.find(entry, '\n', 1, true)
  if not newline then return -1, entry end
  local position = tonumber(string.match(string.sub(entry, 1, newline - 1), '"position":(%d+)'))
  return position or -1, string.sub(entry, newline + 1)
end

-- Every event an instance holds, in claim order: its in-flight list (positions from
-- `acked` on, unless `keep` says a position is resolved) merged with its retry list
-- (positions in each entry's metadata; `keep_parked` says which to leave out).
local function held_in_order(inflight, retry, acked, keep, keep_parked)
  local items = redis.call('LRANGE', inflight, 0, -1)
  local parked = redis.call('LRANGE', retry, 0, -1)
  local held = {}
  for i, item in ipairs(items) do
    local position = acked + i - 1
    if keep == nil or keep(position) then held[#held + 1] = {position, item} end
  end
  for _, entry in ipairs(parked) do
    local position, element = parked_entry(entry)
    if keep_parked == nil or keep_parked(position) then held[#held + 1] = {position, element} end
  end
  if #parked > 0 then
    table.sort(held, function(a, b) return a[1] < b[1] end)
  end
  local out = {}
  for i, pair in ipairs(held) do out[i] = pair[2] end
  return out, items, parked
end
