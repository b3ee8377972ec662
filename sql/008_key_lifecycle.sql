-- Key lifecycle: rotation with a grace period, pause and resume, and metadata on keys and
-- users (issue 13, items 1 to 3).

-- A rotation moves `key_hash` to `prev_key_hash`, which is accepted until
-- `prev_valid_until` and kept after it (until the next rotation) so that the old secret is
-- told apart from a wrong one: 401 rotated_api_key rather than invalid_api_key.
ALTER TABLE api_keys
    ADD COLUMN prev_key_hash text,
    ADD COLUMN prev_valid_until timestamptz,
    ADD COLUMN rotated_at timestamptz,
    -- Paused keys are refused until resumed; unlike revocation this is not final.
    ADD COLUMN paused_at timestamptz,
    ADD COLUMN metadata jsonb NOT NULL DEFAULT '{}';

ALTER TABLE users
    ADD COLUMN metadata jsonb NOT NULL DEFAULT '{}',
    -- The team's own customer id; unique when set.
    ADD COLUMN external_id text UNIQUE;

-- Every replica's key cache must learn a rotation or a pause at once; metadata is not
-- cached, so it does not notify.
DROP TRIGGER api_keys_notify_update ON api_keys;
CREATE TRIGGER api_keys_notify_update AFTER UPDATE ON api_keys
    FOR EACH ROW
    WHEN ((OLD.user_id, OLD.rate_limit, OLD.scopes, OLD.expires_at, OLD.revoked_at,
           OLD.key_hash, OLD.public_id, OLD.plan_id, OLD.limits, OLD.quota,
           OLD.prev_key_hash, OLD.prev_valid_until, OLD.paused_at)
          IS DISTINCT FROM
          (NEW.user_id, NEW.rate_limit, NEW.scopes, NEW.expires_at, NEW.revoked_at,
           NEW.key_hash, NEW.public_id, NEW.plan_id, NEW.limits, NEW.quota,
           NEW.prev_key_hash, NEW.prev_valid_until, NEW.paused_at))
    EXECUTE FUNCTION tollgate_notify_key();
