-- Revokes a person's sessions issued before a time, for every replica, in one atomic step (see LAYOUT.md).
-- KEYS[1]: the revocations hash (person -> issued before, seconds); KEYS[2]: its change counter.
-- ARGV[1]: the person; ARGV[2]: issued before (seconds); ARGV[3]: PUBLISH or SPUBLISH, or empty to only store (a
-- replica putting back what a Redis restarted empty lost); ARGV[4]: the revocations' channel.
-- A revocation never moves back: the answer is the one in force now, the later of this one and the one recorded.
local known = redis.call('HGET', KEYS[1], ARGV[1])
local before = ARGV[2]
if known and tonumber(known) >= tonumber(before) then
  before = known
else
  redis.call('HSET', KEYS[1], ARGV[1], before)
  redis.call('INCR', KEYS[2])
end
if ARGV[3] ~= '' then
  redis.call(ARGV[3], ARGV[4], before .. ' ' .. ARGV[1])
end
return before
