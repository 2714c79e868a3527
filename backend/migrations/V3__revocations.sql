-- Revoked sessions: per person (a token's subject), the time (Unix seconds) before which their tokens no longer
-- count. One row per person, kept forever (a later revocation only moves it forward). Redis holds the copy every
-- replica reads; a Redis that lost it gets it back from here.
CREATE TABLE revocations (
    person text PRIMARY KEY,
    issued_before bigint NOT NULL
);
