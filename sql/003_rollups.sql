-- Pre-aggregated traffic, written by the logger thread in the same transaction as the raw
-- rows it summarises (src/logger.rs), so analytics never scan request_logs.
--
-- One table, three grains: every log row is counted once per grain (minute, hour, day).
-- A 24 h answer reads at most ~60 minute rows + ~24 hour rows per dimension combination and
-- a 30 d answer ~60 + ~24 + 30, instead of 1440 or 43200 minute rows: summing histograms
-- element-wise costs per row read, so coarser grains kept up to date by the writer beat
-- summing the minute grain at query time. The writer pays three small upserts per batch.
--
-- Missing ids are stored as 0 (bigserial ids start at 1), so NULLs group like any value and
-- the primary key covers every row. Ids -1 (status_class 0) mark the whole-traffic row of a
-- bucket: the sum over every dimension, so unfiltered overviews and timeseries read one row
-- per bucket instead of one per user × key × route × status class combination.
CREATE TABLE request_rollups (
    grain_secs    integer NOT NULL CHECK (grain_secs IN (60, 3600, 86400)),
    bucket_start  timestamptz NOT NULL,
    user_id       bigint NOT NULL,
    api_key_id    bigint NOT NULL,
    route_id      bigint NOT NULL,
    -- status / 100: 1..5 (0 in whole-traffic rows)
    status_class  smallint NOT NULL,
    count         bigint NOT NULL,
    errors_4xx    bigint NOT NULL,
    errors_5xx    bigint NOT NULL,
    rate_limited  bigint NOT NULL,
    latency_sum   double precision NOT NULL,
    bytes_in      bigint NOT NULL,
    bytes_out     bigint NOT NULL,
    -- h0..h75 (added below): requests per latency bucket, bounds defined once in
    -- src/rollup.rs (latency_bucket). Columns rather than an array: summing 76 columns is a
    -- plain aggregate, summing arrays element-wise needs a row per element.
    PRIMARY KEY (grain_secs, bucket_start, user_id, api_key_id, route_id, status_class)
)
-- Hour, day and whole-traffic rows are updated by every batch: free room on each page lets
-- those updates stay on the page (HOT) instead of adding index entries.
WITH (fillfactor = 70);

DO $$
BEGIN
    FOR i IN 0..75 LOOP
        EXECUTE format('ALTER TABLE request_rollups ADD COLUMN h%s bigint NOT NULL DEFAULT 0', i);
    END LOOP;
END $$;

-- `top-routes` lists unrouted paths (route_id NULL) from the raw rows: this keeps that
-- drill-down proportional to unrouted traffic, not to all traffic.
CREATE INDEX request_logs_unrouted_time_idx ON request_logs (created_at) WHERE route_id IS NULL;
