-- Fragment: per-key ordering (tidings.dispatcher.ordering).
-- KEYS: K_ORDER, K_PARKED, K_HELD, K_RETRY (_cursor_keys.lua). ARGV: none; the
-- functions take their arguments:
--   order_path(path): "data.customer" -> {"data", "customer"};
--   order_key(fields, parts): the ordering key of an entry's stored event, or nil;
--   order_acquire(key, id), order_park(key, id), order_release(key, id, now) (the
--   id of the entry the key passed to, or nil);
--   id_ms(id): the ms part of a stream id.
--#include _entry_event.lua
local function order_path(path)
  local parts = {}
  for part in string.gmatch(path, '[^.]+') do parts[#parts + 1] = part end
  return parts
end

-- The ordering key of an entry's stored event, or nil when it has none.
local function order_key(fields, parts)
  local raw = entry_event(fields)
  if not raw then return nil end
  local ok, value = pcall(cjson.decode, raw)
  if not ok then return nil end
  for _, part in ipairs(parts) do
    if type(value) ~= 'table' then return nil end
    value = value[part]
  end
  if type(value) == 'string' then return value end
  if type(value) == 'number' or type(value) == 'boolean' then return tostring(value) end
  return nil
end

local function padded(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return string.format('%020d-%020d', tonumber(ms), tonumber(seq))
end

local function unpadded(text)
  local ms, seq = string.match(text, '^(%d+)-(%d+)$')
  return string.format('%d-%d', tonumber(ms), tonumber(seq))
end

local function id_ms(id)
  return tonumber(string.match(id, '^(%d+)'))
end

-- true when `id` holds `key` (now or already); false when it must wait.
local function order_acquire(key, id)
  local holder = redis.call('HGET', KEYS[K_ORDER], key)
  if not holder then
    redis.call('HSET', KEYS[K_ORDER], key, id)
    return true
  end
  return holder == id
end

local function order_park(key, id)
  redis.call('ZADD', KEYS[K_PARKED], 0, key .. '\0' .. padded(id))
  redis.call('ZADD', KEYS[K_HELD], id_ms(id), id)
end

-- `id` is done with `key`: hand the key to the next parked entry, due at `now`.
-- Returns that entry's id (the settle script may start it at once), or nil.
local function order_release(key, id, now)
  if redis.call('HGET', KEYS[K_ORDER], key) ~= id then return nil end
  local nxt = redis.call('ZRANGEBYLEX', KEYS[K_PARKED], '[' .. key .. '\0', '(' .. key .. '\1',
    'LIMIT', 0, 1)
  if nxt[1] then
    redis.call('ZREM', KEYS[K_PARKED], nxt[1])
    local next_id = unpadded(string.sub(nxt[1], #key + 2))
    redis.call('HSET', KEYS[K_ORDER], key, next_id)
    redis.call('ZADD', KEYS[K_RETRY], now, next_id)
    return next_id
  end
  redis.call('HDEL', KEYS[K_ORDER], key)
  return nil
end
