-- A room's position: creates the epoch if the room has none (with an archive it does not: the room is rebuilt from the
-- archive first, and a nil epoch says so).
-- KEYS: 1 meta
-- ARGV: 1 candidate epoch, 2 '1' with an archive
-- Returns {epoch or nil, seq or nil, last or nil}.
if ARGV[2] ~= '1' then redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1]) end
return redis.call('HMGET', KEYS[1], 'epoch', 'seq', 'last')
