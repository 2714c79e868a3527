-- The retention job expired a room's events before `before` from the archive: drop them from the stream too (never
-- past what is archived) and the states of the messages gone.
-- KEYS: 1 stream, 2 meta, 3 state
-- ARGV: 1 before (an id)
-- Returns the entries trimmed.
local function older(a, b)
  local ams, aseq = string.match(a, '(%d+)-(%d+)')
  local bms, bseq = string.match(b, '(%d+)-(%d+)')
  ams, aseq, bms, bseq = tonumber(ams), tonumber(aseq), tonumber(bms), tonumber(bseq)
  return ams < bms or (ams == bms and aseq < bseq)
end
local archived = redis.call('HGET', KEYS[2], 'archived')
if not archived then return 0 end
local limit = ARGV[1]
local unarchived = redis.call('XRANGE', KEYS[1], '(' .. archived, '+', 'COUNT', 1)
if #unarchived > 0 and older(unarchived[1][1], limit) then limit = unarchived[1][1] end
local trimmed = redis.call('XTRIM', KEYS[1], 'MINID', limit)
if trimmed > 0 then
  for _, k in ipairs(redis.call('HKEYS', KEYS[3])) do
    if older(k, limit) then redis.call('HDEL', KEYS[3], k) end
  end
end
return trimmed
