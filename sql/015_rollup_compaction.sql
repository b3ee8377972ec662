-- Hour and day rollups are folded from the rows below them once their period has ended
-- (src/store/rollups.rs `compact`), instead of being upserted by every log batch: a batch
-- then touches one rollup row per key, route and status class instead of three, and
-- replicas' loggers no longer queue on the shared hour, day and whole-traffic rows.
--
-- `compacted_to` (hour-aligned): hour rows before it, and day rows of days ending at or
-- before it, are complete; later traffic is read from the minute rows (and, for the current
-- day, its compacted hours). A log row that arrives after its hour was compacted (buffered
-- through an outage) is added to the hour and day rows by the logger itself, under a share
-- lock on this row, which the compactor takes for update.
--
-- Starts at the current hour: the hour and day rows written before this migration, by
-- every batch, are complete up to it. A pre-compaction replica still running in a rolling
-- upgrade keeps writing hour and day rows; a compacted hour is rebuilt from its minutes,
-- so those writes are replaced, not counted twice.
CREATE TABLE rollup_compaction (
    only_row      boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    compacted_to  timestamptz NOT NULL
);
-- Hours of UTC, as the rollups' buckets (date_trunc would follow the session's time zone).
INSERT INTO rollup_compaction (compacted_to)
    VALUES (to_timestamp(floor(extract(epoch FROM now()) / 3600) * 3600));
