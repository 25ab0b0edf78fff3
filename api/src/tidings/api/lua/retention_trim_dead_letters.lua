-- retention_trim_dead_letters: drop dead letters older than their Trigger's
-- deadLetterRetention.maxAge, by Redis's clock, and count them
-- (tidings.dispatcher.retention).
-- KEYS: per Trigger i (1, 2, ...): [2i - 1] dead-letter stream, [2i] trigger state HASH.
-- ARGV: per Trigger i: [i] max age ms.
-- Returns the entries trimmed per Trigger, then the soonest time (ms, Redis's clock)
-- any DLQ's oldest entry left reaches its max age (0: all empty).
--#include _now.lua
local out, soonest = {}, 0
for i = 1, #KEYS, 2 do
  local cut = string.format('%d-0', math.max(0, now - tonumber(ARGV[(i + 1) / 2])))
  local trimmed = redis.call('XTRIM', KEYS[i], 'MINID', cut)
  if trimmed > 0 then redis.call('HINCRBY', KEYS[i + 1], {{STATE_DEAD_LETTERS_TRIMMED}}, trimmed) end
  out[#out + 1] = trimmed
  local oldest = redis.call('XRANGE', KEYS[i], '-', '+', 'COUNT', 1)[1]
  if oldest then
    local due = tonumber(string.match(oldest[1], '^(%d+)')) + tonumber(ARGV[(i + 1) / 2])
    if soonest == 0 or due < soonest then soonest = due end
  end
end
out[#out + 1] = soonest
return out
