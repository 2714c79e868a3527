-- Read state that follows a person across devices, and search over messages' current text.

-- Each person's read position per room: the newest message they have read (forward only). The person is the token's
-- subject, or the nick in anonymous rooms. Written by the replicas a second at a time, behind Redis's live copy, and
-- read back when a room is rebuilt from the archive.
CREATE TABLE reads (
    room text NOT NULL,
    person text NOT NULL,
    ms bigint NOT NULL,
    seq bigint NOT NULL,
    -- The nick the person reads the room as (for read receipts).
    nick text NOT NULL,
    PRIMARY KEY (room, person)
);

-- Search: a message's current text (its last edit; NULL once deleted), kept by PostgreSQL itself from the row, and
-- indexed for parts of words (trigrams: substrings of three or more characters, CJK included) and for whole words
-- (full-text, the 'simple' configuration: no stemming, no stop words, any language).
CREATE EXTENSION IF NOT EXISTS pg_trgm;
ALTER TABLE events ADD COLUMN text_now text GENERATED ALWAYS AS (
    CASE WHEN kind = 'message' AND COALESCE(state->>'d', '0') = '0'
         THEN COALESCE(state->>'t', body->>'text') END
) STORED;
-- The planner picks, per query, between reading newest first until a page is full (a frequent word) and the indexes
-- (a rare one) from how often the pattern occurs in its sample of this column: a larger sample tells words that occur
-- in one message in a thousand from those in one in a million.
ALTER TABLE events ALTER COLUMN text_now SET STATISTICS 2000;
CREATE INDEX events_trigrams ON events USING gin (text_now gin_trgm_ops) WHERE text_now IS NOT NULL;
CREATE INDEX events_words ON events USING gin (to_tsvector('simple', text_now)) WHERE text_now IS NOT NULL;
-- Newest first over every room (a search without a room, a common word: read in order, stop at the page's end).
CREATE INDEX events_newest ON events (ms DESC, seq DESC) WHERE text_now IS NOT NULL;
