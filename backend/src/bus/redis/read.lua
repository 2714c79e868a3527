-- Moves a person's read position in a room forward, never past the room's newest event (bus::Bus::mark_read).
-- KEYS: 1 meta, 2 reads (hash: person -> '<id> <nick>'), 3 seen (sorted set: person -> the position's ms), 4 mod,
--       5 the roster's counts (hash: nick -> live connections)
-- ARGV: 1 person, 2 nick, 3 id, 4 '1' with an archive
-- Returns {status, moved (0/1), position or '', last or '', receipts (0/1), others (0/1: the nick has other
-- connections in the room, which must hear of the move)}; status 'ok', or 'missing' with an archive when Redis does
-- not have the room (the caller rebuilds it from the archive first).
if ARGV[4] == '1' and redis.call('EXISTS', KEYS[1]) == 0 then return {'missing', 0, '', '', 0, 0} end
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function less(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am < bm or (am == bm and as < bs)
end
local receipts = tonumber(redis.call('HGET', KEYS[4], 'receipts') or '0')
-- An empty room: a position before its first event ('0-0'), so everything that comes counts.
local last = redis.call('HGET', KEYS[1], 'last') or '0-0'
local target = ARGV[3]
if less(last, target) then target = last end
local current = redis.call('HGET', KEYS[2], ARGV[1])
local position = current and string.match(current, '^(%S+)')
if position and (position == target or less(target, position)) then return {'ok', 0, position, last, receipts, 0} end
redis.call('HSET', KEYS[2], ARGV[1], target .. ' ' .. ARGV[2])
redis.call('ZADD', KEYS[3], (parse(target)), ARGV[1])
local others = tonumber(redis.call('HGET', KEYS[5], ARGV[2]) or '0') > 1 and 1 or 0
return {'ok', 1, target, last, receipts, others}
