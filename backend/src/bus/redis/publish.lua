-- Checks a message or action against the room's rules, stores it at most once per cid, then relays it, in one atomic
-- step. The same rules as bus/rules.rs (`Rules::apply`). The channel payload and the stream entry fields are
-- codec.rs's; this script gets them as arguments and does not spell either format.
-- KEYS: 1 stream, 2 meta, 3 cid key, 4 state (hash: message id -> JSON state), 5 mod (hash: mute:<nick>,
--       ban:<nick>, ban:person:<person> -> until ms; slow -> secs; receipts -> 1 or 0), 6 slow (hash: nick -> last message ms),
--       7 roster holders (hash: nick -> person)
-- ARGV: 1 channel, 2 history limit, 3 body, 4 candidate epoch, 5 dedupe seconds, 6 publish command (PUBLISH, or
--       SPUBLISH on a Cluster, or '' when the caller publishes once Redis replicas confirmed the write), 7 payload
--       template (its %s are, in order: id, offset, epoch, the id of the room's entry before it, body), 8 offset field, 9 body field, 10 fingerprint (what a
--       repeated cid must match), 11 '1' when the sender moderates the room, 12 reply-to id or '', 13 quote length,
--       14 action field (marks entries that are not messages), 15 the body's kind, 16 the sender's nick, 17 '1' with
--       an archive, 18 the archive backlog's bound in bytes (0: none), 19 the cid, 20 cid field, 21 digest field
-- With an archive, the room must exist ('missing' otherwise: the caller rebuilds it from the archive first), the
-- stream is not trimmed here (the archiver trims behind what it archived), and the bytes not archived yet are
-- counted in meta's `pending`: beyond the bound the event is refused 'unavailable', so nothing unarchived is lost.
-- Returns {id, status, offset, epoch, payload, until}: payload is the channel payload (the caller publishes it with
-- WAIT); status 'stored', 'duplicate' (a repeated cid: id is the original; or a reaction that changes nothing: id is
-- the message's), 'missing', or the error code that refuses it
-- ('cid_reused', 'banned', 'muted', 'slow_mode', 'message_gone', 'forbidden', 'unavailable'); until for 'banned',
-- 'muted' and 'slow_mode'.
local archived = ARGV[17] == '1'
if archived and redis.call('EXISTS', KEYS[2]) == 0 then return {'', 'missing', 0, '', '', 0} end
local digest = redis.sha1hex(ARGV[10])
local prev = redis.call('GET', KEYS[3])
if prev then
  local sep = string.find(prev, ' ', 1, true)
  if sep and string.sub(prev, sep + 1) == digest then
    return {string.sub(prev, 1, sep - 1), 'duplicate', 0, '', '', 0}
  end
  return {'', 'cid_reused', 0, '', '', 0}
end
if archived and tonumber(ARGV[18]) > 0 then
  local pending = tonumber(redis.call('HGET', KEYS[2], 'pending') or '0')
  if pending > tonumber(ARGV[18]) then return {'', 'unavailable', 0, '', '', 0} end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local moderator = ARGV[11] == '1'
-- Plain messages, the bulk of the traffic, are stored without decoding their body.
local kind, author = ARGV[15], ARGV[16]
local body = nil
if kind ~= 'message' or ARGV[12] ~= '' then body = cjson.decode(ARGV[3]) end
local changed = false
local function refuse(code, untl) return {'', code, 0, '', '', untl or 0} end

-- The first n characters of s (UTF-8), with '…' when cut.
local function prefix(s, n)
  local count = 0
  for i = 1, #s do
    local c = string.byte(s, i)
    if c < 0x80 or c >= 0xC0 then
      count = count + 1
      if count > n then return string.sub(s, 1, i - 1) .. '…' end
    end
  end
  return s
end
-- A message still in history and not deleted: its author, its current text and its state; nil when gone.
local function live(id)
  local found = redis.call('XRANGE', KEYS[1], id, id)
  if #found == 0 then return nil end
  local fields, original = found[1][2], nil
  for i = 1, #fields, 2 do
    if fields[i] == ARGV[9] then original = cjson.decode(fields[i + 1]) end
  end
  if not original or original.kind ~= 'message' then return nil end
  local raw = redis.call('HGET', KEYS[4], id)
  local state = raw and cjson.decode(raw) or {}
  if state.d then return nil end
  return original.nick, state.t or original.text, state
end
local function until_of(field)
  local v = tonumber(redis.call('HGET', KEYS[5], field))
  if v and v > now then return v end
  return nil
end

if kind ~= 'moderation' and not moderator then
  local banned = until_of('ban:' .. author)
  if banned then return refuse('banned', banned) end
  if kind ~= 'delete' then
    local muted = until_of('mute:' .. author)
    if muted then return refuse('muted', muted) end
  end
end
local state_id, state = nil, nil
local slow = 0
if kind == 'message' then
  slow = tonumber(redis.call('HGET', KEYS[5], 'slow') or '0')
  if not moderator then
    local secs = slow
    local last = tonumber(redis.call('HGET', KEYS[6], author) or '0')
    if secs > 0 and last + secs * 1000 > now then return refuse('slow_mode', last + secs * 1000) end
  end
  if ARGV[12] ~= '' then
    local nick, text = live(ARGV[12])
    if not nick then return refuse('message_gone') end
    body.quote = {id = ARGV[12], nick = nick, text = prefix(text, tonumber(ARGV[13]))}
    changed = true
  end
elseif kind == 'edit' or kind == 'delete' or kind == 'react' then
  local nick, _, st = live(body.target)
  if not nick then return refuse('message_gone') end
  state_id, state = body.target, st
  if kind == 'edit' then
    if nick ~= author then return refuse('forbidden') end
    state.t = body.text
    state.e = now
  elseif kind == 'delete' then
    if nick ~= author and not moderator then return refuse('forbidden') end
    state = {d = 1}
  else
    state.r = state.r or {}
    local who = state.r[body.emoji] or {}
    if (who[author] ~= nil) == body.on then
      -- Changes nothing: store nothing, and answer this cid (and its retries) like a repeated one.
      redis.call('SET', KEYS[3], body.target .. ' ' .. digest, 'EX', ARGV[5])
      return {body.target, 'duplicate', 0, '', '', 0}
    end
    if body.on then who[author] = 1 else who[author] = nil end
    local count = 0
    for _ in pairs(who) do count = count + 1 end
    if count == 0 then state.r[body.emoji] = nil else state.r[body.emoji] = who end
    if next(state.r) == nil then state.r = nil end
    body.count = count
    changed = true
  end
elseif kind == 'moderation' then
  local secs = tonumber(body.secs or 0)
  local untl = now + secs * 1000
  if body.action == 'mute' then
    redis.call('HSET', KEYS[5], 'mute:' .. body.nick, untl)
  elseif body.action == 'ban' then
    redis.call('HSET', KEYS[5], 'ban:' .. body.nick, untl)
    local person = redis.call('HGET', KEYS[7], body.nick)
    if person then
      redis.call('HSET', KEYS[5], 'ban:person:' .. person, untl)
      -- Kept with the event, so a rebuild from the archive bans the person again.
      body.person = person
      changed = true
    end
  elseif body.action == 'slow_mode' then
    redis.call('HSET', KEYS[5], 'slow', secs)
  elseif body.action == 'receipts' then
    redis.call('HSET', KEYS[5], 'receipts', secs > 0 and 1 or 0)
  end
end

local json = ARGV[3]
if changed then json = cjson.encode(body) end
redis.call('HSETNX', KEYS[2], 'epoch', ARGV[4])
local epoch = redis.call('HGET', KEYS[2], 'epoch')
local off = redis.call('HINCRBY', KEYS[2], 'seq', 1)
local entry = {ARGV[8], off, ARGV[9], json}
if kind ~= 'message' then
  entry[#entry + 1] = ARGV[14]
  entry[#entry + 1] = kind
end
local id
if archived then
  entry[#entry + 1] = ARGV[20]
  entry[#entry + 1] = ARGV[19]
  entry[#entry + 1] = ARGV[21]
  entry[#entry + 1] = digest
  id = redis.call('XADD', KEYS[1], '*', unpack(entry))
  redis.call('HINCRBY', KEYS[2], 'pending', #json)
else
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', unpack(entry))
end
if kind == 'message' and slow > 0 then
  redis.call('HSET', KEYS[6], author, now)
  redis.call('PEXPIRE', KEYS[6], slow * 1000)
end
if state_id then
  -- An edit's time is its event's: the id XADD chose, which live members see as the `edited` frame's ts (the
  -- clock read above can be a millisecond behind it, or the stream's last id ahead of the clock).
  if kind == 'edit' then state.e = tonumber(string.match(id, '^(%d+)')) end
  redis.call('HSET', KEYS[4], state_id, cjson.encode(state))
  -- States of messages trimmed from the stream go, now and then.
  if redis.call('HLEN', KEYS[4]) > 2 * tonumber(ARGV[2]) then
    local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
    if #oldest > 0 then
      local oms, oseq = string.match(oldest[1][1], '(%d+)-(%d+)')
      oms, oseq = tonumber(oms), tonumber(oseq)
      for _, k in ipairs(redis.call('HKEYS', KEYS[4])) do
        local ms, seq = string.match(k, '(%d+)-(%d+)')
        ms, seq = tonumber(ms), tonumber(seq)
        if ms < oms or (ms == oms and seq < oseq) then redis.call('HDEL', KEYS[4], k) end
      end
    end
  end
end
local prev = redis.call('HGET', KEYS[2], 'last') or '0-0'
redis.call('HSET', KEYS[2], 'last', id)
redis.call('SET', KEYS[3], id .. ' ' .. digest, 'EX', ARGV[5])
local payload = string.format(ARGV[7], id, off, epoch, prev, json)
if ARGV[6] ~= '' then
  redis.call(ARGV[6], ARGV[1], payload)
end
return {id, 'stored', off, epoch, payload, 0}
