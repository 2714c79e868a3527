-- A history read that sees the epoch, the entries and the messages' states at one instant.
-- KEYS: 1 stream, 2 meta, 3 state
-- ARGV: 1 candidate epoch, 2 client epoch or '', 3 since or '', 4 recent, 5 limit, 6 action field, 7 before or '',
--       8 body field, 9 '1' with an archive (the room must exist: an empty epoch answers that it does not)
-- With since: every entry after it (messages and actions), up to limit. With before: up to limit messages before
-- it, newest first. Otherwise: the newest `recent` messages, newest first (actions skipped: states say what they did).
-- Returns {epoch, reset, entries, oldest, states}: oldest is the oldest kept entry (with since or before); states[i] is
-- the JSON state of the message entries[i] is (a message) or acts on (an edit, deletion or reaction), or '' when it
-- has none.
if ARGV[9] == '1' then
  if redis.call('EXISTS', KEYS[2]) == 0 then return {'', 0, {}, {}, {}} end
else
  redis.call('HSETNX', KEYS[2], 'epoch', ARGV[1])
end
local epoch = redis.call('HGET', KEYS[2], 'epoch')
local since = ARGV[3]
local reset = 0
if since ~= '' and ARGV[2] ~= '' and ARGV[2] ~= epoch then
  reset = 1
  since = ''
end
local function is_action(entry)
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == ARGV[6] then return true end
  end
  return false
end
-- The message an entry is about: its own id, or an action's target (none for moderation).
local function message_of(entry)
  if not is_action(entry) then return entry[1] end
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == ARGV[8] then return cjson.decode(fields[i + 1]).target end
  end
  return nil
end
local function states(entries)
  local out = {}
  for i, e in ipairs(entries) do
    local id = message_of(e)
    out[i] = (id and redis.call('HGET', KEYS[3], id)) or ''
  end
  return out
end
if since ~= '' then
  local entries = redis.call('XRANGE', KEYS[1], '(' .. since, '+', 'COUNT', ARGV[5])
  local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
  return {epoch, reset, entries, oldest, states(entries)}
end
local want = tonumber(ARGV[4])
local top = '+'
if ARGV[7] ~= '' then
  want = tonumber(ARGV[5])
  top = '(' .. ARGV[7]
end
local messages = {}
-- Actions are skipped; read in pages until enough messages or the stream's start.
while want > 0 and #messages < want do
  local asked = want - #messages + 16
  local page = redis.call('XREVRANGE', KEYS[1], top, '-', 'COUNT', asked)
  for _, e in ipairs(page) do
    if #messages < want and not is_action(e) then messages[#messages + 1] = e end
  end
  if #page < asked then break end
  top = '(' .. page[#page][1]
end
local oldest = {}
if ARGV[7] ~= '' then oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1) end
return {epoch, reset, messages, oldest, states(messages)}
