
-- Settle. ARGV[2..14]: one settlement (see settle above). Returns now and
-- the four levels.
settle(2)
save()
return {fmt(now), levels()}
