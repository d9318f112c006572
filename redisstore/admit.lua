
-- Admit. ARGV[2..5]: limits; ARGV[6..9]: costs; ARGV[10..13]: the levels a
-- new bucket starts at ('' for full); ARGV[14..17]: what each bucket must
-- hold to admit, where not the cost (0); ARGV[18]: the longest wait that may
-- be granted ahead; ARGV[19..22]: what the attempt must leave in each bucket
-- besides (the headroom for higher priorities; the two fit together, capped
-- at the limit, but only the cost is charged); ARGV[23]: how many
-- settlements follow, 13 arguments each, applied first. Returns granted
-- ('1' or '0'), wait, paused, pause reason, now, and the four levels.
for k = 0, (tonumber(ARGV[23]) or 0) - 1 do
  settle(24 + 13 * k)
end
local lim, cost = {}, {}
for d = 1, 4 do
  lim[d] = tonumber(ARGV[1 + d])
  setLimit(d, lim[d], tonumber(ARGV[9 + d]))
end
if pausedUntil > now then
  save()
  return {'0', '0', fmt(pausedUntil - now), pauseReason, fmt(now), levels()}
end
local wait = 0
for d = 1, 4 do
  local L = lim[d]
  if L > 0 then
    cost[d] = math.min(tonumber(ARGV[5 + d]), L)
    local need = tonumber(ARGV[13 + d])
    if need <= 0 then
      need = cost[d]
    end
    need = math.min(need + (tonumber(ARGV[18 + d]) or 0), L)
    local missing = need - level[d]
    if missing > FIT then
      wait = math.max(wait, math.ceil(missing / L * MINUTE))
    end
  end
end
-- Granting ahead charges now what fits later: the caller waits out wait,
-- and the next caller queues behind this one's debt.
local granted = wait <= tonumber(ARGV[18])
if granted then
  for d = 1, 4 do
    if lim[d] > 0 then
      level[d] = level[d] - cost[d]
    end
  end
end
save()
return {granted and '1' or '0', fmt(wait), '0', '', fmt(now), levels()}
