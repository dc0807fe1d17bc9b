-- LAYOUT (start-up, before anything is recovered): checks the version of the key layout
-- stored in Redis against the one this build knows. A newer (or unreadable) one is
-- refused, writing nothing: this build would half-read keys it does not know. An older
-- one, or none (builds before the version was stored), is upgraded: layouts 1 and 2
-- differ only by retry lists, which a layout-1 Redis has none of, so upgrading is storing
-- the version.
-- KEYS: layout. ARGV: the version this build knows.
-- Returns the version found (0 when none); an error `LAYOUT_NEWER <found>` when refused.
local denied = refused({{'hget', KEYS[1]}})
if denied then return denied end
local known = tonumber(ARGV[1])
local stored = redis.call('HGET', KEYS[1], 'version')
local found = 0
if stored then
  found = tonumber(stored)
  if not found or found ~= math.floor(found) or found < 1 then
    return redis.error_reply('LAYOUT_NEWER ' .. string.sub(stored, 1, 64))
  end
end
if found > known then return redis.error_reply('LAYOUT_NEWER ' .. stored) end
if found < known then
  denied = refused({{'hset', KEYS[1]}})
  if denied then return denied end
  redis.call('HSET', KEYS[1], 'version', known)
end
return found
