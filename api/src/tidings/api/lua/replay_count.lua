-- replay_count: how many entries of a stream lie in a range, counted in Redis
-- (tidings.dispatcher.replays: a Replay's total), a step at a time.
-- KEYS: [1] the stream.
-- ARGV: [1] start (XRANGE syntax, e.g. "(" .. id), [2] end, [3] step.
-- Returns {count (at most step), the last id counted or ""}.
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[2], 'COUNT', tonumber(ARGV[3]))
if #entries == 0 then return {0, ''} end
return {#entries, entries[#entries][1]}
