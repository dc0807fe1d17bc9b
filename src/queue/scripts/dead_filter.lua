-- Which dead-letter entries an operator's filter takes (prepended to dead_select.lua and
-- dead_move.lua after the helpers). An entry is one line of JSON metadata, a newline,
-- then the element (records.rs).
--
-- The filter, ARGV[1], is JSON (DeadLetterFilter in mod.rs): `reasons`, `statuses` and
-- `relays` are lists, any of which matches (an empty or absent list matches all);
-- `since` and `through` bound `failed_at`, inclusive. Times are written with
-- milliseconds in UTC, fixed width, so their digits compare as the times do. An entry
-- of an older relay (no `detail`) has the reason 'unlabelled'; an entry whose first line
-- is not that metadata matches only a filter that names nothing.
local filter = cjson.decode(ARGV[1])

local function digits(time)
  return (string.gsub(time, '%D', ''))
end

local since = type(filter.since) == 'string' and digits(filter.since) or nil
local through = type(filter.through) == 'string' and digits(filter.through) or nil
local reasons = type(filter.reasons) == 'table' and filter.reasons or {}
local statuses = type(filter.statuses) == 'table' and filter.statuses or {}
local relays = type(filter.relays) == 'table' and filter.relays or {}
local names_nothing = not since and not through and #reasons == 0 and #statuses == 0
  and #relays == 0

-- A relay is named by its instance id (host:pid:suffix) or a prefix of it ending at a
-- colon: its host, or its host and pid.
local function relay_named(relay, name)
  return relay == name or string.sub(relay, 1, #name + 1) == name .. ':'
end

local function any_of(wanted, value, same)
  if #wanted == 0 then return true end
  if value == nil then return false end
  for i = 1, #wanted do
    if same(value, wanted[i]) then return true end
  end
  return false
end

local function equal(a, b) return a == b end

local function takes(entry)
  if names_nothing then return true end
  local newline = string.find(entry, '\n', 1, true)
  -- Metadata lines are short; a long first line is not ours and is not decoded.
  if not newline or newline > 65536 then return false end
  local ok, meta = pcall(cjson.decode, string.sub(entry, 1, newline - 1))
  if not ok or type(meta) ~= 'table' then return false end
  local reason = 'unlabelled'
  if type(meta.detail) == 'string' and type(meta.reason) == 'string' then
    reason = meta.reason
  end
  local status = type(meta.status) == 'number' and meta.status or nil
  local relay = type(meta.relay) == 'string' and meta.relay or nil
  if since or through then
    if type(meta.failed_at) ~= 'string' then return false end
    local at = digits(meta.failed_at)
    if #at ~= 17 or (since and at < since) or (through and at > through) then return false end
  end
  return any_of(reasons, reason, equal) and any_of(statuses, status, equal)
    and any_of(relays, relay, relay_named)
end

-- The element an entry stands for: what follows its first newline, or all of it.
local function element_of(entry)
  local newline = string.find(entry, '\n', 1, true)
  if newline then return string.sub(entry, newline + 1) end
  return entry
end
