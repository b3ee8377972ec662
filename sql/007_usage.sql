-- Usage for billing (issue 12, GET /analytics/usage): requests the limit phase admitted
-- and refused, per UTC day, key and plan. Written by the logger in the transaction that
-- copies the raw rows (src/store/usage.rs), so usage and request_logs never disagree; kept
-- TOLLGATE_ROLLUP_RETENTION (400 days by default) like the day rollups. A table of its own
-- rather than columns on request_logs: it is one row per key a day, not per request, and it
-- outlives the raw rows by a year.
--
-- plan_id is 0 when the key's limits came from no plan (bigserial ids start at 1), so the
-- primary key covers every row; user_id is part of it because a key may change owner. No
-- foreign keys: a deleted key, user or plan must not take its billed usage with it.
CREATE TABLE usage_daily (
    day         date NOT NULL,
    api_key_id  bigint NOT NULL,
    user_id     bigint NOT NULL,
    plan_id     bigint NOT NULL,
    admitted    bigint NOT NULL,
    refused     bigint NOT NULL,
    PRIMARY KEY (day, api_key_id, user_id, plan_id)
)
-- Today's rows are updated by every batch: room on the page keeps those updates HOT.
WITH (fillfactor = 70);

-- A key holder's usage (and the admin's ?userId=) reads one user's rows, not every key's.
CREATE INDEX usage_daily_user_idx ON usage_daily (user_id, day);
