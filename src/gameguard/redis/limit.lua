-- One KeyedLimiter decision in Redis: the same arithmetic as the in-process kernel
-- (gameguard/_pure/keyed.py), so a key decides alike here and there.
-- KEYS[1]  the key's state: two little-endian doubles, a = tokens (token kind) or level
--          (leaky kind), then t = the time of a (exact, and one GET / SET a call)
-- ARGV     kind (0 token, 1 leaky), rate, capacity, cost, want, now, keep_ms
--          want >= cost: take up to `want` (a lease) when at least `cost` fits, else nothing;
--          now = '' reads Redis's own TIME; keep_ms: how long a full key outlives its refill
-- returns  units taken (> 0), or minus the seconds until `cost` would fit (refused)
local kind, rate, cap = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local cost, want, keep = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[7])
local now
if ARGV[6] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[6])
end
local a, last
local s = redis.call('GET', KEYS[1])
if s and #s == 16 then
  a, last = struct.unpack('<dd', s)
else  -- a new key starts full (token) or empty (leaky)
  last = now
  if kind == 0 then a = cap else a = 0 end
end
if now > last then  -- an older reading (a delayed call, a skewed client) never refills
  if kind == 0 then
    a = a + (now - last) * rate
    if a > cap then a = cap end
  else
    a = a - (now - last) * rate
    if a < 0 then a = 0 end
  end
  last = now
end
local granted, wait = 0, 0
if kind == 0 then
  if a >= cost then
    granted = cost * math.floor(math.min(want, a) / cost)
    a = a - granted
  else
    wait = (cost - a) / rate
  end
else
  if a + cost <= cap then
    granted = cost * math.floor(math.min(want, cap - a) / cost)
    if granted < cost then granted = cost end
    a = a + granted
  else
    wait = (a + cost - cap) / rate
  end
end
-- idle keys leave once full again: recreating one then starts it full, which loses nothing
local full_in
if kind == 0 then full_in = (cap - a) / rate else full_in = a / rate end
redis.call('SET', KEYS[1], struct.pack('<dd', a, last), 'PX', math.ceil(full_in * 1000) + keep)
if granted > 0 then return string.format('%.17g', granted) end
return string.format('%.17g', -wait)
