-- How a plan's and a key's requests are counted (issue 16): 'exact', one request at a
-- time in a counting round, or 'lease', from units a replica counted ahead of need
-- (docs/limits.md#leases). NULL: a key follows its plan, a plan the gateway's default.
ALTER TABLE plans ADD COLUMN counting text CHECK (counting IN ('exact', 'lease'));
ALTER TABLE api_keys ADD COLUMN counting text CHECK (counting IN ('exact', 'lease'));

-- Replicas cache keys: a changed `counting` must reach them like the other fields.
DROP TRIGGER api_keys_notify_update ON api_keys;
CREATE TRIGGER api_keys_notify_update AFTER UPDATE ON api_keys
    FOR EACH ROW
    WHEN ((OLD.user_id, OLD.rate_limit, OLD.scopes, OLD.expires_at, OLD.revoked_at,
           OLD.key_hash, OLD.public_id, OLD.plan_id, OLD.limits, OLD.quota,
           OLD.prev_key_hash, OLD.prev_valid_until, OLD.paused_at,
           OLD.allow_cidrs, OLD.deny_cidrs, OLD.counting)
          IS DISTINCT FROM
          (NEW.user_id, NEW.rate_limit, NEW.scopes, NEW.expires_at, NEW.revoked_at,
           NEW.key_hash, NEW.public_id, NEW.plan_id, NEW.limits, NEW.quota,
           NEW.prev_key_hash, NEW.prev_valid_until, NEW.paused_at,
           NEW.allow_cidrs, NEW.deny_cidrs, NEW.counting))
    EXECUTE FUNCTION tollgate_notify_key();
