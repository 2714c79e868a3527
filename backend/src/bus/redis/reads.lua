-- A person's read position in a room and, with read receipts on, the most recent readers' (bus::Bus::reads).
-- KEYS: 1 reads, 2 seen, 3 mod, 4 meta
-- ARGV: 1 person, 2 how many readers to list, 3 '1' with an archive
-- Returns {mine ('<id> <nick>' or ''), receipts (0/1), {'<id> <nick>', ...} newest first (with receipts on)}; with an
-- archive, {'missing', 0, {}} when Redis does not have the room (the caller rebuilds it from the archive first).
if ARGV[3] == '1' and redis.call('EXISTS', KEYS[4]) == 0 then return {'missing', 0, {}} end
local mine = redis.call('HGET', KEYS[1], ARGV[1]) or ''
local receipts = tonumber(redis.call('HGET', KEYS[3], 'receipts') or '0')
local seen = {}
if receipts == 1 then
  local persons = redis.call('ZREVRANGE', KEYS[2], 0, tonumber(ARGV[2]) - 1)
  if #persons > 0 then
    for _, v in ipairs(redis.call('HMGET', KEYS[1], unpack(persons))) do
      if v then seen[#seen + 1] = v end
    end
  end
end
return {mine, receipts, seen}
