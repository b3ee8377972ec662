-- Hour and day rollups are folded from the minute rows by the retention job
-- (src/store/rollups.rs `compact`), a minute at a time shortly after it ends, instead of
-- being upserted by every log batch: a batch then writes one rollup row per key, route and
-- status class instead of three, and replicas' loggers no longer queue on the shared hour
-- and day rows (only on the minute's whole-traffic row).
--
-- `compacted_to` (minute-aligned): every hour and day row holds its minutes before it;
-- later traffic is only in minute rows, which answers add. A log row whose minute is
-- already folded (held back through an outage) is added to its hour and day rows by the
-- logger itself. Batches hold an advisory lock shared and compaction holds it exclusively
-- (src/store/rollups.rs `COMPACTION_LOCK`), so no minute is folded under a batch.
--
-- An ended hour is rebuilt from its minutes, and an ended day from its hours, so what a
-- replica of the previous version (which writes hour and day rows itself) adds during a
-- rolling upgrade is counted once by the end of that hour (and, in day rows, of that day).
-- Starts at the next minute: the hour and day rows written so far, by every batch, hold
-- everything before it.
CREATE TABLE rollup_compaction (
    only_row      boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    compacted_to  timestamptz NOT NULL
);
-- Minutes of UTC, as the rollups' buckets.
INSERT INTO rollup_compaction (compacted_to)
    VALUES (to_timestamp(floor(extract(epoch FROM now()) / 60) * 60 + 60));
