-- tollgate schema, first version. Never edited once landed: later changes go in new files.

CREATE TABLE users (
    id          bigserial PRIMARY KEY,
    email       text NOT NULL UNIQUE,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id            bigserial PRIMARY KEY,
    user_id       bigint NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    -- the public half of gw_<public_id>_<secret>: one indexed lookup per first use
    public_id     text NOT NULL UNIQUE,
    -- bcrypt of the secret half; the raw key is never stored
    key_hash      text NOT NULL,
    name          text NOT NULL,
    rate_limit    integer NOT NULL CHECK (rate_limit > 0),
    scopes        text[] NOT NULL,
    expires_at    timestamptz,
    revoked_at    timestamptz,
    last_used_at  timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX api_keys_user_idx ON api_keys (user_id, id);

CREATE TABLE routes (
    id          bigserial PRIMARY KEY,
    user_id     bigint NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    prefix      text NOT NULL,
    target_url  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, prefix)
);

-- One row per key per window bucket (bucket = floor(epoch / window)); the sliding estimate
-- reads the previous bucket and upserts the current one in one statement.
CREATE TABLE rate_limit_counters (
    api_key_id    bigint NOT NULL,
    window_start  bigint NOT NULL,
    count         integer NOT NULL,
    PRIMARY KEY (api_key_id, window_start)
);

-- No foreign keys: logs outlive the keys, users and routes they mention.
CREATE TABLE request_logs (
    id          bigserial PRIMARY KEY,
    request_id  text NOT NULL,
    api_key_id  bigint,
    user_id     bigint,
    route_id    bigint,
    method      text NOT NULL,
    path        text NOT NULL,
    query       text,
    status      integer NOT NULL,
    latency_ms  double precision NOT NULL,
    bytes_in    bigint NOT NULL,
    bytes_out   bigint NOT NULL,
    client_ip   text NOT NULL,
    user_agent  text,
    created_at  timestamptz NOT NULL
);
CREATE INDEX request_logs_key_time_idx ON request_logs (api_key_id, created_at);
CREATE INDEX request_logs_time_idx ON request_logs (created_at);
CREATE INDEX request_logs_user_time_idx ON request_logs (user_id, created_at);
