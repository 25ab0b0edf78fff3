-- Fragment: `now`, Redis's clock (TIME) in ms since epoch, so replicas with
-- skewed clocks agree on leases, rate tokens and due times.
-- KEYS: none. ARGV: none.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
