
-- Pause. ARGV[2]: how long, ARGV[3]: the reason. A pause that ends sooner
-- than the one in force changes nothing. Returns now.
local untilTime = now + tonumber(ARGV[2])
if untilTime > pausedUntil then
  pausedUntil = untilTime
  pauseReason = ARGV[3]
end
save()
return fmt(now)
