-- A room's members online, across replicas; one atomic step per batch of changes (joins to one room that arrive
-- together, as in a reconnect storm, share one run: one upkeep, one member list). The same rules as bus/roster.rs.
-- KEYS: 1 instances (hash: replica instance -> alive until, ms), 2 conns (hash: "instance|conn" -> nick),
--       3 counts (hash: nick -> live connections), 4 members (zset: nick -> arrival ms, members within their grace
--       included), 5 leaving (zset: nick -> end of grace, ms), 6 holders (hash: nick -> person), 7 the room's
--       moderation (see publish.lua): a banned nick or person does not enter

-- ARGV: instance, grace ms, alive ms, members to list, then 5 per change: op (join | rename | leave | refresh |
--       list), conn, nick, person ('' = none), old nick (rename)
-- Returns {online, listed nicks (when any change lists), slow mode secs, changes}, each change
-- {taken, arrived, departed nicks, banned until, muted until}; the upkeep's departures go to the first change.
local inst = ARGV[1]
local grace, alive, shown = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local op, conn, nick, person, from
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local departed = {}

local function drop(n)
  redis.call('ZREM', KEYS[5], n)
  redis.call('HDEL', KEYS[6], n)
  if redis.call('ZREM', KEYS[4], n) == 1 then departed[#departed + 1] = n end
end
-- One connection of n is gone. Whether that was its last one.
local function decrement(n)
  local left = redis.call('HINCRBY', KEYS[3], n, -1)
  if left > 0 then return false end
  redis.call('HDEL', KEYS[3], n)
  return true
end
local function release(n, at_once)
  if decrement(n) then
    if at_once or grace == 0 then drop(n) else redis.call('ZADD', KEYS[5], now + grace, n) end
  end
end
local function taken(n)
  if person == '' then return false end
  local holder = redis.call('HGET', KEYS[6], n)
  return holder ~= false and holder ~= person and redis.call('ZSCORE', KEYS[4], n) ~= false
end
local function enter(n)
  redis.call('HINCRBY', KEYS[3], n, 1)
  if person ~= '' then redis.call('HSET', KEYS[6], n, person) end
  redis.call('ZREM', KEYS[5], n)
  return redis.call('ZADD', KEYS[4], 'NX', now, n)
end

-- Upkeep. A replica that stopped refreshing (it crashed) loses its connections: its members leave at once, since
-- their grace has passed while the replica was silent.
local dead = {}
local any_dead = false
local instances = redis.call('HGETALL', KEYS[1])
for i = 1, #instances, 2 do
  if tonumber(instances[i + 1]) < now then
    dead[instances[i]] = true
    any_dead = true
    redis.call('HDEL', KEYS[1], instances[i])
  end
end
if any_dead then
  local conns = redis.call('HGETALL', KEYS[2])
  for i = 1, #conns, 2 do
    local owner = string.match(conns[i], '^(.*)|[^|]*$')
    if dead[owner] then
      redis.call('HDEL', KEYS[2], conns[i])
      release(conns[i + 1], true)
    end
  end
end
for _, n in ipairs(redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now)) do
  if redis.call('HEXISTS', KEYS[3], n) == 1 then redis.call('ZREM', KEYS[5], n) else drop(n) end
end
redis.call('HSET', KEYS[1], inst, now + alive)

local function until_of(f)
  local v = tonumber(redis.call('HGET', KEYS[7], f))
  if v and v > now then return v end
  return 0
end
local slow = tonumber(redis.call('HGET', KEYS[7], 'slow') or '0')

local changes, lists = {}, false
for i = 5, #ARGV, 5 do
  op, conn, nick, person, from = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  -- The upkeep's departures belong to the first change; each later change starts its own list.
  if i > 5 then departed = {} end
  local banned, muted = 0, 0
  if op == 'join' or op == 'rename' then
    banned = until_of('ban:' .. nick)
    if person ~= '' then banned = math.max(banned, until_of('ban:person:' .. person)) end
    muted = until_of('mute:' .. nick)
  end
  local field = inst .. '|' .. conn
  local is_taken, arrived = 0, 0
  if banned > 0 then
    op = 'banned'
  elseif op == 'join' then
    if taken(nick) then
      is_taken = 1
    else
      local old = redis.call('HGET', KEYS[2], field)
      redis.call('HSET', KEYS[2], field, nick)
      if old then release(old, false) end
      arrived = enter(nick)
    end
  elseif op == 'rename' then
    if taken(nick) then
      is_taken = 1
    else
      redis.call('HSET', KEYS[2], field, nick)
      arrived = enter(nick)
      release(from, true)
    end
  elseif op == 'leave' then
    if redis.call('HGET', KEYS[2], field) == nick then
      redis.call('HDEL', KEYS[2], field)
      release(nick, false)
    end
  end
  if op ~= 'leave' and op ~= 'refresh' and op ~= 'banned' then lists = true end
  changes[#changes + 1] = {is_taken, arrived, departed, banned, muted}
end

-- Everything lives a while past the last sign of life, then goes by itself.
local ttl = 4 * alive + grace
for i = 1, 6 do redis.call('PEXPIRE', KEYS[i], ttl) end
local listed = {}
if lists then listed = redis.call('ZRANGE', KEYS[4], 0, shown - 1) end
return {redis.call('ZCARD', KEYS[4]), listed, slow, changes}
