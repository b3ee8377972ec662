-- Caller identity upstream (issue 13, item 4): per route, whether the key's identity is
-- sent in `X-Tollgate-*` headers, and the secret that signs them. The secret is kept as
-- is, not hashed: the gateway needs it to compute each request's HMAC.
ALTER TABLE routes
    ADD COLUMN identity_headers boolean NOT NULL DEFAULT false,
    ADD COLUMN signing_secret text;

-- Cached keys now carry their user's external id, so a change to it must reach every
-- replica's key cache like a change to the user's limits does.
DROP TRIGGER users_notify_update ON users;
CREATE TRIGGER users_notify_update AFTER UPDATE ON users
    FOR EACH ROW
    WHEN ((OLD.plan_id, OLD.limits, OLD.quota, OLD.external_id) IS DISTINCT FROM
          (NEW.plan_id, NEW.limits, NEW.quota, NEW.external_id))
    EXECUTE FUNCTION tollgate_notify_user();
