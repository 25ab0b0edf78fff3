"""Optional per-key ordering (`delivery.ordering.key`, e.g. `event.subject`).

Events with the same key are delivered one at a time, in stream order; a key
whose head event is failing blocks only itself. Keys and parked entries live
in Redis, so the order holds across replicas and restarts:

- the ordering HASH maps a key to the stream id that holds it (being
  delivered, or scheduled for a retry);
- an event whose key is held is parked: acknowledged in the group (it is no
  longer "being delivered"), added to the parked ZSET as
  "<key>\\0<zero-padded id>" so ZRANGEBYLEX yields a key's events in stream
  order, and to the held ZSET so retention keeps it;
- when the holder is settled (delivered or dead-lettered), the next parked
  event of its key takes the key and is scheduled as due at once.

Acquiring happens inside the script that reads the entries (cursor.py), so
two replicas reading consecutive events of one key cannot swap them. Events
without a value at the key's path are not ordered.

Lua source spliced into the cursor scripts.
"""

from __future__ import annotations

from tidings.api import keys

LUA = """
local function order_path(path)
  local parts = {}
  for part in string.gmatch(path, '[^.]+') do parts[#parts + 1] = part end
  return parts
end

-- The ordering key of an entry's stored event, or nil when it has none.
local function order_key(fields, parts)
  local raw = nil
  for i = 1, #fields, 2 do
    if fields[i] == FIELD_EVENT then raw = fields[i + 1] end
  end
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
  redis.call('ZADD', KEYS[K_PARKED], 0, key .. '\\0' .. padded(id))
  redis.call('ZADD', KEYS[K_HELD], id_ms(id), id)
end

-- `id` is done with `key`: hand the key to the next parked entry, due at `now`.
local function order_release(key, id, now)
  if redis.call('HGET', KEYS[K_ORDER], key) ~= id then return end
  local nxt = redis.call('ZRANGEBYLEX', KEYS[K_PARKED], '[' .. key .. '\\0', '(' .. key .. '\\1',
    'LIMIT', 0, 1)
  if nxt[1] then
    redis.call('ZREM', KEYS[K_PARKED], nxt[1])
    local next_id = unpadded(string.sub(nxt[1], #key + 2))
    redis.call('HSET', KEYS[K_ORDER], key, next_id)
    redis.call('ZADD', KEYS[K_RETRY], now, next_id)
  else
    redis.call('HDEL', KEYS[K_ORDER], key)
  end
end
""".replace("FIELD_EVENT", repr(keys.FIELD_EVENT))


def path_of(ordering_key: str | None) -> str:
    """`event.data.customer` -> `data.customer` (the script's argument; "" = unordered)."""
    if not ordering_key:
        return ""
    return ordering_key.removeprefix("event.")
