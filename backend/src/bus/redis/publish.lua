-- Stores a chat message at most once per cid, then relays it, in one atomic step. The channel payload and the stream
-- entry fields are codec.rs's; this script gets them as arguments and does not spell either format.
-- KEYS: 1 stream, 2 meta, 3 cid key
-- ARGV: 1 channel, 2 maxlen, 3 body, 4 candidate epoch, 5 dedupe seconds, 6 publish command (PUBLISH, or SPUBLISH on
--       a Cluster, or '' when the caller publishes once Redis replicas confirmed the write), 7 payload template
--       (its %s are, in order: id, offset, epoch, body), 8 offset field, 9 body field
-- Returns {id, 0, offset, epoch} when stored, {id, 1, 0, ''} for a repeated cid with the same body, {'', 2, 0, ''}
-- for a reused cid.
local digest = redis.sha1hex(ARGV[3])
local prev = redis.call('GET', KEYS[3])
if prev then
  local sep = string.find(prev, ' ', 1, true)
  if sep and string.sub(prev, sep + 1) == digest then
    return {string.sub(prev, 1, sep - 1), 1, 0, ''}
  end
  return {'', 2, 0, ''}
end
redis.call('HSETNX', KEYS[2], 'epoch', ARGV[4])
local epoch = redis.call('HGET', KEYS[2], 'epoch')
local off = redis.call('HINCRBY', KEYS[2], 'seq', 1)
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', ARGV[8], off, ARGV[9], ARGV[3])
redis.call('HSET', KEYS[2], 'last', id)
redis.call('SET', KEYS[3], id .. ' ' .. digest, 'EX', ARGV[5])
if ARGV[6] ~= '' then
  redis.call(ARGV[6], ARGV[1], string.format(ARGV[7], id, off, epoch, ARGV[3]))
end
return {id, 0, off, epoch}
