-- Counting many keys in one statement (issue 6). The batch upsert in src/ratelimit.rs
-- must tell each key how many of its requests it admitted into an existing row, and
-- Postgres 15's RETURNING shows only the row's new count, so the upsert also records what
-- it added. A constant default makes this a catalogue-only change.
ALTER TABLE rate_limit_counters ADD COLUMN last_add integer NOT NULL DEFAULT 0;

-- Replaced by that one statement for all keys of a batch.
DROP FUNCTION tollgate_take(bigint, float8, float8, integer);
