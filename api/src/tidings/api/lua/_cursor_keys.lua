-- Fragment: the names of the KEYS the cursor scripts (cursor_fetch, cursor_settle)
-- and their fragments use, in the order tidings.dispatcher.cursor.script_keys
-- passes them.
-- KEYS: K_STREAM the source's stream, K_RETRY retry ZSET, K_ATTEMPTS attempts HASH,
--   K_INFLIGHT concurrency leases ZSET, K_RATE rate bucket HASH, K_ORDER ordering
--   HASH, K_PARKED parked ZSET, K_HELD held ZSET, K_DLQ dead-letter stream,
--   K_STATE trigger state HASH, K_REPLAY replay HASH, K_DELAYED delayed ZSET,
--   K_OWNERS replay owners HASH, K_RUNS replay runs HASH, K_LOG attempt log STREAM.
-- ARGV: none.
local K_STREAM, K_RETRY, K_ATTEMPTS, K_INFLIGHT, K_RATE, K_ORDER, K_PARKED, K_HELD, K_DLQ, K_STATE, K_REPLAY, K_DELAYED, K_OWNERS, K_RUNS, K_LOG = 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15
