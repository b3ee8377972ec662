-- Upstream pools (issue 14): a route forwards to one of `targets` (1 to 64
-- `{"url", "weight"}` objects, validated by the admin API), picked by `balance`, with an
-- optional active `health_check` (the admin API's `healthCheck` object) and up to
-- `retries` retries on another target after a failed connection. `target_url` stays the
-- first target's URL, so a route with one target reads as before. A route's old
-- `target_url` becomes its pool of one.
ALTER TABLE routes
    ADD COLUMN targets jsonb NOT NULL DEFAULT '[]',
    ADD COLUMN balance text NOT NULL DEFAULT 'round-robin'
        CHECK (balance IN ('round-robin', 'least-inflight', 'hash')),
    ADD COLUMN health_check jsonb,
    ADD COLUMN retries smallint NOT NULL DEFAULT 1 CHECK (retries BETWEEN 0 AND 3);
UPDATE routes SET targets = jsonb_build_array(jsonb_build_object('url', target_url, 'weight', 1));

-- The target that answered (or was tried last) and how many targets were tried; null
-- when the request never reached the forward phase.
ALTER TABLE request_logs ADD COLUMN upstream text, ADD COLUMN attempts smallint;
