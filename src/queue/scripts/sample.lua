-- SAMPLE: the list's and the dead-letter list's lengths and the head event's dtm (read
-- inside Redis; elements over 64 KiB are not read). KEYS: list, dead.
-- Returns {list length, dead length, head dtm or false}.
local list, dead = redis.call('LLEN', KEYS[1]), redis.call('LLEN', KEYS[2])
local dtm = false
if list > 0 then
  local head = redis.call('LINDEX', KEYS[1], 0)
  if head and #head <= 65536 then
    local ok, event = pcall(cjson.decode, head)
    if ok and type(event) == 'table' and event['dtm'] ~= nil then dtm = tostring(event['dtm']) end
  end
end
return {list, dead, dtm}
