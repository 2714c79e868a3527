-- A history read that sees the epoch and the entries at one instant.
-- KEYS: 1 stream, 2 meta
-- ARGV: 1 candidate epoch, 2 client epoch or '', 3 since or '', 4 recent, 5 limit
-- Returns {epoch, reset, entries, oldest} where oldest is the oldest kept entry (only with since).
redis.call('HSETNX', KEYS[2], 'epoch', ARGV[1])
local epoch = redis.call('HGET', KEYS[2], 'epoch')
local since = ARGV[3]
local reset = 0
if since ~= '' and ARGV[2] ~= '' and ARGV[2] ~= epoch then
  reset = 1
  since = ''
end
if since ~= '' then
  local entries = redis.call('XRANGE', KEYS[1], '(' .. since, '+', 'COUNT', ARGV[5])
  local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
  return {epoch, reset, entries, oldest}
end
if tonumber(ARGV[4]) == 0 then
  return {epoch, reset, {}, {}}
end
local entries = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', ARGV[4])
return {epoch, reset, entries, {}}
