-- The start of every script: KEYS[1] is one name's hash (see redisstore.go),
-- ARGV[1] the expiry margin in milliseconds. It reads the server's clock and
-- the stored state, brings every bucket up to date at now, and defines what
-- the scripts share. Times are microseconds; numbers are stored and returned
-- as '%.17g' strings, which Redis would otherwise truncate to integers.
local key = KEYS[1]
local margin = tonumber(ARGV[1])
local MINUTE = 60000000
local FIT = 1e-6 -- bucket.go's fitTolerance

local function fmt(x)
  return string.format('%.17g', x)
end

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])

local f = redis.call('HMGET', key, 'l0', 'v0', 'l1', 'v1', 'l2', 'v2', 'l3', 'v3', 't', 'pu', 'pr')
local last = tonumber(f[9]) or now
local pausedUntil = tonumber(f[10]) or 0
local pauseReason = f[11] or ''
local limit, level = {}, {}
for d = 1, 4 do
  limit[d] = tonumber(f[2 * d - 1]) or 0
  level[d] = tonumber(f[2 * d]) or limit[d]
  local L = limit[d]
  -- a clock that went back refills nothing until it passes last again
  if L > 0 and level[d] < L and now > last then
    level[d] = math.min(L, level[d] + L * (now - last) / MINUTE)
  end
end
last = math.max(last, now)

-- setLimit gives bucket d the limit L: a new bucket starts at start (what
-- the caller last knew of it) or, given none, full; a known level is kept
-- but never above L.
local function setLimit(d, L, start)
  if L > 0 and limit[d] ~= L then
    if limit[d] > 0 then
      level[d] = math.min(level[d], L)
    elseif start then
      level[d] = math.min(start, L)
    else
      level[d] = L
    end
    limit[d] = L
  end
end

-- save writes the state back and sets the key to expire once it is no
-- different from a fresh one (every bucket full, no pause), plus the margin.
local function save()
  local args = {'t', fmt(last)}
  local known = false
  local ttl = 0 -- microseconds
  for d = 1, 4 do
    local L = limit[d]
    if L > 0 then
      known = true
      level[d] = math.max(level[d], -1e300) -- stays a finite number
      table.insert(args, 'l' .. (d - 1))
      table.insert(args, fmt(L))
      table.insert(args, 'v' .. (d - 1))
      table.insert(args, fmt(level[d]))
      if level[d] < L then
        ttl = math.max(ttl, last - now + (L - level[d]) / L * MINUTE)
      end
    end
  end
  if pausedUntil > now then
    table.insert(args, 'pu')
    table.insert(args, fmt(pausedUntil))
    table.insert(args, 'pr')
    table.insert(args, pauseReason)
    ttl = math.max(ttl, pausedUntil - now)
  elseif not known then
    redis.call('DEL', key)
    return
  end
  redis.call('HSET', key, unpack(args))
  -- capped: PEXPIRE refuses what overflows, and a debt that takes
  -- centuries to pay off might as well
  local ms = math.min(math.ceil(ttl / 1000), 1e13) + margin
  redis.call('PEXPIRE', key, fmt(ms))
end

-- settle applies the settlement whose 13 arguments start at ARGV[i]: four
-- limits, four charges, four floors ('' where there is none), and when the
-- attempt was sent. A bucket the store does not have is left to the next
-- admission, which starts it from what its caller knows.
local function settle(i)
  local sentAt = tonumber(ARGV[i + 12])
  for d = 1, 4 do
    local L = tonumber(ARGV[i - 1 + d])
    if L > 0 and limit[d] > 0 then
      setLimit(d, L)
      local n = tonumber(ARGV[i + 3 + d])
      if n > 0 then
        level[d] = level[d] - n
      elseif n < 0 then
        level[d] = math.min(L, level[d] - n)
      end
      local floor = tonumber(ARGV[i + 7 + d])
      if floor then
        local refill = L * math.max(now - sentAt, 0) / MINUTE
        level[d] = math.min(level[d], L, floor + refill)
      end
    end
  end
end

-- levels returns the level of every bucket, '' where there is none.
local function levels()
  local out = {}
  for d = 1, 4 do
    if limit[d] > 0 then
      out[d] = fmt(level[d])
    else
      out[d] = ''
    end
  end
  return out[1], out[2], out[3], out[4]
end
