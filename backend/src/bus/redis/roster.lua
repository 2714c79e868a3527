-- A room's members online, across replicas; one atomic step per change. The same rules as bus/roster.rs.
-- KEYS: 1 instances (hash: replica instance -> alive until, ms), 2 conns (hash: "instance|conn" -> nick),
--       3 counts (hash: nick -> live connections), 4 members (zset: nick -> arrival ms, members within their grace
--       included), 5 leaving (zset: nick -> end of grace, ms), 6 holders (hash: nick -> person), 7 the room's
--       moderation (see publish.lua): a banned nick or person does not enter

-- ARGV: op (join | rename | leave | refresh | list), instance, conn, nick, person ('' = none), grace ms, alive ms,
--       members to list, old nick (rename)
-- Returns {taken, arrived, departed nicks, online, listed nicks, banned until, muted until, slow mode secs}.
local op, inst, conn, nick, person = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local grace, alive, shown, from = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9]
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
local banned, muted = 0, 0
if op == 'join' or op == 'rename' then
  banned = until_of('ban:' .. nick)
  if person ~= '' then banned = math.max(banned, until_of('ban:person:' .. person)) end
  muted = until_of('mute:' .. nick)
end
local slow = tonumber(redis.call('HGET', KEYS[7], 'slow') or '0')

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

-- Everything lives a while past the last sign of life, then goes by itself.
local ttl = 4 * alive + grace
for i = 1, 6 do redis.call('PEXPIRE', KEYS[i], ttl) end
local listed = {}
if op ~= 'leave' and op ~= 'refresh' and op ~= 'banned' then listed = redis.call('ZRANGE', KEYS[4], 0, shown - 1) end
return {is_taken, arrived, departed, redis.call('ZCARD', KEYS[4]), listed, banned, muted, slow}
