-- A room's position: creates the epoch if the room has none.
-- KEYS: 1 meta
-- ARGV: 1 candidate epoch
-- Returns {epoch, seq or nil, last or nil}.
redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1])
return redis.call('HMGET', KEYS[1], 'epoch', 'seq', 'last')
