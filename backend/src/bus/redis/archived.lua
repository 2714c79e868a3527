-- The archive holds the room up to `id` (committed in PostgreSQL): record it, stop counting those bytes as pending,
-- and trim the stream to the hot window, never past what is archived.
-- KEYS: 1 stream, 2 meta
-- ARGV: 1 epoch, 2 archived id, 3 archived offset, 4 history limit (entries kept), 5 body field, 6 the archived id
--       the archiver started from ('' for none), 7 the bytes of the bodies it archived after that
-- Returns the entries trimmed.
if redis.call('HGET', KEYS[2], 'epoch') ~= ARGV[1] then return 0 end
local before = redis.call('HGET', KEYS[2], 'archived')
local function newer(a, b)
  local ams, aseq = string.match(a, '(%d+)-(%d+)')
  local bms, bseq = string.match(b, '(%d+)-(%d+)')
  ams, aseq, bms, bseq = tonumber(ams), tonumber(aseq), tonumber(bms), tonumber(bseq)
  return ams > bms or (ams == bms and aseq > bseq)
end
if before and not newer(ARGV[2], before) then return 0 end
-- The bytes archived now, which publish.lua counted as pending: the archiver's count when it started where this
-- record says the archive stood; otherwise (another replica moved it meanwhile, or a crash left it behind) counted
-- here from the entries themselves.
local done = tonumber(ARGV[7])
if (before or '') ~= ARGV[6] then
  done = 0
  local start = before and ('(' .. before) or '-'
  for _, e in ipairs(redis.call('XRANGE', KEYS[1], start, ARGV[2])) do
    local fields = e[2]
    for i = 1, #fields, 2 do
      if fields[i] == ARGV[5] then done = done + #fields[i + 1] end
    end
  end
end
local pending = tonumber(redis.call('HGET', KEYS[2], 'pending') or '0') - done
if pending < 0 then pending = 0 end
redis.call('HSET', KEYS[2], 'archived', ARGV[2], 'archived_offset', ARGV[3], 'pending', pending)
-- Keep the newest `limit` entries and every entry not archived: offsets are contiguous, so those are the newest
-- seq - archived_offset.
local seq = tonumber(redis.call('HGET', KEYS[2], 'seq') or '0')
local keep = math.max(tonumber(ARGV[4]), seq - tonumber(ARGV[3]))
return redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', keep)
