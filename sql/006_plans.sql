-- Plans, several named limits, quotas and owner-wide limits (issue 12). docs/limits.md
-- explains the model; src/store/plans.rs reads and writes the JSON shapes stored here.

-- A plan: named limits ([{"name","limit","windowSecs"}]) and an optional quota
-- ({"limit","period","anchor"}), validated by the admin API before they are stored.
CREATE TABLE plans (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    limits      jsonb NOT NULL DEFAULT '[]',
    quota       jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- A key's own limits replace its plan's; NULL inherits. `rate_limit` stays the
-- single limit named "default" over the gateway window, and may now be NULL (a key on a
-- plan needs none). Deleting a plan that a key or user is on is refused (409).
ALTER TABLE api_keys
    ALTER COLUMN rate_limit DROP NOT NULL,
    ADD COLUMN plan_id bigint REFERENCES plans(id),
    ADD COLUMN limits  jsonb,
    ADD COLUMN quota   jsonb;
CREATE INDEX api_keys_plan_idx ON api_keys (plan_id) WHERE plan_id IS NOT NULL;

-- A user's plan is inherited by its keys (counted per key); the user's own limits and
-- quota are counted across all of its keys (owner-wide).
ALTER TABLE users
    ADD COLUMN plan_id bigint REFERENCES plans(id),
    ADD COLUMN limits  jsonb,
    ADD COLUMN quota   jsonb;
CREATE INDEX users_plan_idx ON users (plan_id) WHERE plan_id IS NOT NULL;

-- Every counter of one key ('k') or one user ('u') in one row, so that a batch's counting
-- round (src/store/counters.rs) locks one row per subject and writes it once, however many
-- limits the subject has. For each sliding limit, identified by
-- "<name>/<windowSecs>", the row keeps the bucket it last counted in, that bucket's count
-- and the one before it (the sliding estimate needs both). The quota keeps the start of
-- the period it counts (Unix seconds) and the count in it: a new period starts at 0, and a
-- changed quota limit keeps the count.
CREATE TABLE limit_counters (
    kind         "char" NOT NULL CHECK (kind IN ('k', 'u')),
    owner_id     bigint NOT NULL,
    names        text[] NOT NULL DEFAULT '{}',
    buckets      bigint[] NOT NULL DEFAULT '{}',
    counts       bigint[] NOT NULL DEFAULT '{}',
    prevs        bigint[] NOT NULL DEFAULT '{}',
    quota_start  bigint NOT NULL DEFAULT 0,
    quota_used   bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, owner_id)
)
-- Rewritten by every batch: room on the page keeps those updates HOT.
WITH (fillfactor = 50);

-- A round only locks and updates rows, so every key and user has its row from birth.
CREATE FUNCTION tollgate_counter_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO limit_counters (kind, owner_id)
        VALUES (CASE TG_TABLE_NAME WHEN 'users' THEN 'u' ELSE 'k' END, NEW.id)
        ON CONFLICT DO NOTHING;
    ELSE
        DELETE FROM limit_counters
         WHERE kind = CASE TG_TABLE_NAME WHEN 'users' THEN 'u' ELSE 'k' END
           AND owner_id = OLD.id;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER users_counter_row AFTER INSERT OR DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION tollgate_counter_row();
CREATE TRIGGER api_keys_counter_row AFTER INSERT OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION tollgate_counter_row();

INSERT INTO limit_counters (kind, owner_id) SELECT 'u', id FROM users;
INSERT INTO limit_counters (kind, owner_id) SELECT 'k', id FROM api_keys;

-- Replaced by limit_counters. Counts restart at the upgrade (the old rows do not say which
-- window length they were counted in).
DROP TABLE rate_limit_counters;

-- Plans, users' limits and keys' limits are cached by every replica: tell them.
CREATE FUNCTION tollgate_notify_plans() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tollgate_config', 'plans');
    RETURN NULL;
END $$;

CREATE TRIGGER plans_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON plans
    FOR EACH STATEMENT EXECUTE FUNCTION tollgate_notify_plans();

CREATE FUNCTION tollgate_notify_user() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tollgate_config', 'user:' || NEW.id);
    RETURN NULL;
END $$;

CREATE TRIGGER users_notify_update AFTER UPDATE ON users
    FOR EACH ROW
    WHEN ((OLD.plan_id, OLD.limits, OLD.quota) IS DISTINCT FROM
          (NEW.plan_id, NEW.limits, NEW.quota))
    EXECUTE FUNCTION tollgate_notify_user();

DROP TRIGGER api_keys_notify_update ON api_keys;
CREATE TRIGGER api_keys_notify_update AFTER UPDATE ON api_keys
    FOR EACH ROW
    WHEN ((OLD.user_id, OLD.rate_limit, OLD.scopes, OLD.expires_at, OLD.revoked_at,
           OLD.key_hash, OLD.public_id, OLD.plan_id, OLD.limits, OLD.quota)
          IS DISTINCT FROM
          (NEW.user_id, NEW.rate_limit, NEW.scopes, NEW.expires_at, NEW.revoked_at,
           NEW.key_hash, NEW.public_id, NEW.plan_id, NEW.limits, NEW.quota))
    EXECUTE FUNCTION tollgate_notify_key();
