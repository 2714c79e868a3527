-- The archive: every stored event of every room, for good, with each message's current state. Redis keeps the hot
-- window in front of it; this is the system of record (see ARCHITECTURE.md, "The archive").

-- One row per room: where its archive stands, and the room's own retention.
CREATE TABLE rooms (
    room text PRIMARY KEY,
    -- The epoch of the Redis history the archive follows; offsets count within it.
    epoch text NOT NULL,
    -- The newest event archived: its offset in the epoch and its id (ms, seq). Every event up to it is here.
    archived_offset bigint NOT NULL DEFAULT 0,
    archived_ms bigint NOT NULL DEFAULT 0,
    archived_seq bigint NOT NULL DEFAULT 0,
    -- Events found missing from Redis when archiving (never expected: the stream is trimmed only behind the archive).
    gaps bigint NOT NULL DEFAULT 0,
    -- A moderator's retention for this room, in days; NULL: the server's (--retention-days).
    retention_days double precision
);

-- Every stored event: messages, edits, deletions, reactions and moderation, by id, in the room's order.
CREATE TABLE events (
    room text NOT NULL,
    ms bigint NOT NULL,
    seq bigint NOT NULL,
    -- The epoch and offset it had in Redis.
    epoch text NOT NULL,
    pos bigint NOT NULL,
    -- message, edit, delete, react or moderation.
    kind text NOT NULL,
    -- The event as stored (bus::Body). A deleted message's text, and its edits', are erased.
    body jsonb NOT NULL,
    -- Who stored it and under which client id, with the digest of what it stored: restores idempotency.
    cid text NOT NULL,
    digest text NOT NULL,
    -- Messages only: what actions left on it (bus::MsgState), NULL while nothing has.
    state jsonb,
    PRIMARY KEY (room, ms, seq)
);

-- Scrolling back through a room's messages, newest first.
CREATE INDEX events_messages ON events (room, ms DESC, seq DESC) WHERE kind = 'message';

-- Jobs any replica may run, once per period (retention): when each last ran.
CREATE TABLE jobs (
    name text PRIMARY KEY,
    last_run timestamptz NOT NULL
);
