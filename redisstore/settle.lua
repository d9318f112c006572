
-- Settle. ARGV[2..5]: limits; ARGV[6..9]: charges; ARGV[10..13]: floors,
-- '' where there is none; ARGV[14]: when the attempt was sent. Returns now
-- and the four levels.
local sentAt = tonumber(ARGV[14])
for d = 1, 4 do
  local L = tonumber(ARGV[1 + d])
  if L > 0 then
    setLimit(d, L)
    local n = tonumber(ARGV[5 + d])
    if n > 0 then
      level[d] = level[d] - n
    elseif n < 0 then
      level[d] = math.min(L, level[d] - n)
    end
    local floor = tonumber(ARGV[9 + d])
    if floor then
      local refill = L * math.max(now - sentAt, 0) / MINUTE
      level[d] = math.min(level[d], L, floor + refill)
    end
  end
end
save()
return {fmt(now), levels()}
