-- Rebuilds a room that Redis lost (or creates a new one) from what the archive holds, unless the room exists by now.
-- KEYS: 1 stream, 2 meta, 3 state, 4 mod, 5 reads, 6 seen, 7.. the idempotency keys to restore
-- ARGV: 1 epoch, 2 seq (the archived offset), 3 last (the archived id, or ''), 4 offset field, 5 body field,
--       6 action field, 7 cid field, 8 digest field, 9 the seed as JSON:
--       {"entries": [[id, offset, body, kind, cid, digest], ...], "states": [[id, state], ...],
--        "moderation": [[field, until], ...], "slow": secs, "cids": [[value, ttl], ...] (as KEYS 7..),
--        "receipts": bool, "reads": [[person, '<id> <nick>', ms], ...]}
-- Returns 1 when it rebuilt the room, 0 when the room existed already.
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
-- Whatever is left of the room without its position is stale.
redis.call('DEL', KEYS[1], KEYS[3], KEYS[4])
local seed = cjson.decode(ARGV[9])
for _, e in ipairs(seed.entries) do
  local fields = {ARGV[4], e[2], ARGV[5], e[3]}
  if e[4] ~= 'message' then
    fields[#fields + 1] = ARGV[6]
    fields[#fields + 1] = e[4]
  end
  fields[#fields + 1] = ARGV[7]
  fields[#fields + 1] = e[5]
  fields[#fields + 1] = ARGV[8]
  fields[#fields + 1] = e[6]
  redis.call('XADD', KEYS[1], e[1], unpack(fields))
end
for _, s in ipairs(seed.states) do redis.call('HSET', KEYS[3], s[1], s[2]) end
for _, m in ipairs(seed.moderation) do redis.call('HSET', KEYS[4], m[1], m[2]) end
if seed.slow > 0 then redis.call('HSET', KEYS[4], 'slow', seed.slow) end
for i, c in ipairs(seed.cids) do redis.call('SET', KEYS[6 + i], c[1], 'EX', c[2]) end
if seed.receipts then redis.call('HSET', KEYS[4], 'receipts', 1) end
-- Read positions: those Redis still has are as new or newer.
for _, r in ipairs(seed.reads) do
  if redis.call('HSETNX', KEYS[5], r[1], r[2]) == 1 then redis.call('ZADD', KEYS[6], r[3], r[1]) end
end
redis.call('HSET', KEYS[2], 'epoch', ARGV[1], 'seq', ARGV[2], 'pending', 0)
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[2], 'last', ARGV[3], 'archived', ARGV[3], 'archived_offset', ARGV[2])
end
return 1
