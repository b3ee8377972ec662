-- Per-route forwarding options. NULL means "use the gateway-wide default".
ALTER TABLE routes
    ADD COLUMN host               text,
    ADD COLUMN strip_prefix       boolean NOT NULL DEFAULT false,
    ADD COLUMN preserve_host      boolean NOT NULL DEFAULT false,
    ADD COLUMN methods            text[],
    ADD COLUMN connect_timeout_ms integer CHECK (connect_timeout_ms > 0),
    ADD COLUMN read_timeout_ms    integer CHECK (read_timeout_ms > 0),
    ADD COLUMN timeout_ms         integer CHECK (timeout_ms > 0),
    ADD COLUMN max_body_bytes     bigint CHECK (max_body_bytes > 0),
    ADD COLUMN breaker_on_5xx     boolean NOT NULL DEFAULT false;

-- The same prefix may now exist once per host (and once for "any host").
ALTER TABLE routes DROP CONSTRAINT routes_user_id_prefix_key;
CREATE UNIQUE INDEX routes_user_host_prefix_idx ON routes (user_id, coalesce(host, ''), prefix);
