-- retention_trim_dead_letters: drop dead letters older than their Trigger's
-- deadLetterRetention.maxAge, by Redis's clock, and count them
-- (tidings.dispatcher.retention).
-- KEYS: per Trigger i (1, 2, ...): [2i - 1] dead-letter stream, [2i] trigger state HASH.
-- ARGV: per Trigger i: [i] max age ms.
-- Returns the entries trimmed per Trigger.
--#include _now.lua
local out = {}
for i = 1, #KEYS, 2 do
  local cut = string.format('%d-0', math.max(0, now - tonumber(ARGV[(i + 1) / 2])))
  local trimmed = redis.call('XTRIM', KEYS[i], 'MINID', cut)
  if trimmed > 0 then redis.call('HINCRBY', KEYS[i + 1], {{STATE_DEAD_LETTERS_TRIMMED}}, trimmed) end
  out[#out + 1] = trimmed
end
return out
