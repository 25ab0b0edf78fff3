-- attempt_log_append: the attempts of one settled batch, appended to the
-- Trigger's attempt log and the log trimmed to its bounds
-- (tidings.dispatcher.attemptlog).
-- KEYS: [1] the attempt log STREAM.
-- ARGV: [1] maxEntries, [2] maxAge in ms, [3..] one attempt each, as
--       tidings.api.attempts.pack writes it: a JSON array of field, value, ...
-- Both trims are approximate (whole stream nodes), as XADD's own would be; the
-- age is measured on Redis's clock, like the entry ids it is compared with.
-- Returns the number of attempts appended.
--#include _now.lua
local log = KEYS[1]
for i = 3, #ARGV do
  redis.call('XADD', log, '*', unpack(cjson.decode(ARGV[i])))
end
redis.call('XTRIM', log, 'MAXLEN', '~', ARGV[1])
redis.call('XTRIM', log, 'MINID', '~', string.format('%d-0', math.max(0, now - tonumber(ARGV[2]))))
return #ARGV - 2
