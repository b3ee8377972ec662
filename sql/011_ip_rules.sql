-- IP rules (issue 13, item 5): per key and per route, networks a client must be in
-- (`allow_cidrs`, when not empty) and networks it must not be in (`deny_cidrs`, which wins).
-- `cidr[]` so that Postgres refuses anything that is not a network; empty means no rule.
ALTER TABLE api_keys
    ADD COLUMN allow_cidrs cidr[] NOT NULL DEFAULT '{}',
    ADD COLUMN deny_cidrs cidr[] NOT NULL DEFAULT '{}';
ALTER TABLE routes
    ADD COLUMN allow_cidrs cidr[] NOT NULL DEFAULT '{}',
    ADD COLUMN deny_cidrs cidr[] NOT NULL DEFAULT '{}';

-- Cached keys carry their rules, so a change to them must reach every replica's key cache.
-- (Routes notify on every statement already, sql/004.)
DROP TRIGGER api_keys_notify_update ON api_keys;
CREATE TRIGGER api_keys_notify_update AFTER UPDATE ON api_keys
    FOR EACH ROW
    WHEN ((OLD.user_id, OLD.rate_limit, OLD.scopes, OLD.expires_at, OLD.revoked_at,
           OLD.key_hash, OLD.public_id, OLD.plan_id, OLD.limits, OLD.quota,
           OLD.prev_key_hash, OLD.prev_valid_until, OLD.paused_at,
           OLD.allow_cidrs, OLD.deny_cidrs)
          IS DISTINCT FROM
          (NEW.user_id, NEW.rate_limit, NEW.scopes, NEW.expires_at, NEW.revoked_at,
           NEW.key_hash, NEW.public_id, NEW.plan_id, NEW.limits, NEW.quota,
           NEW.prev_key_hash, NEW.prev_valid_until, NEW.paused_at,
           NEW.allow_cidrs, NEW.deny_cidrs))
    EXECUTE FUNCTION tollgate_notify_key();
