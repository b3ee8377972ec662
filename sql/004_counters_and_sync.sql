-- Coalesced rate-limit counting and config change notifications (issue 6).

-- Counts up to n requests of one key at once, exactly: the current bucket's row is locked,
-- and as many of the n are admitted as the sliding estimate still allows
-- (weighted previous + count <= limit). The caller gives the i-th of its n requests
-- (0-based) position current - admitted + i + 1, admitted when i < admitted. A refused
-- group writes nothing; an admitted one writes the row once, whatever n is.
CREATE FUNCTION tollgate_take(p_key bigint, p_window float8, p_limit float8, p_n integer,
                              OUT admitted integer, OUT current integer,
                              OUT weighted float8, OUT now_epoch float8)
LANGUAGE plpgsql AS $$
DECLARE
    win  bigint;
    prev integer;
    cap  integer;
BEGIN
    now_epoch := extract(epoch FROM clock_timestamp());
    win := floor(now_epoch / p_window)::bigint;
    -- The previous bucket no longer changes: a plain read is exact.
    SELECT c.count INTO prev FROM rate_limit_counters c
     WHERE c.api_key_id = p_key AND c.window_start = win - 1;
    weighted := coalesce(prev, 0) * (1 - (now_epoch - win * p_window) / p_window);
    -- The most the current bucket may hold: weighted + count + 1 <= limit for each admit.
    cap := greatest(floor(p_limit - weighted), 0)::integer;
    admitted := 0;
    IF cap < 1 THEN
        SELECT coalesce((SELECT c.count FROM rate_limit_counters c
                          WHERE c.api_key_id = p_key AND c.window_start = win), 0)
          INTO current;
        RETURN;
    END IF;
    INSERT INTO rate_limit_counters (api_key_id, window_start, count)
    VALUES (p_key, win, 0) ON CONFLICT DO NOTHING;
    -- The row lock serialises groups from every replica; what follows sees the latest count.
    SELECT c.count INTO current FROM rate_limit_counters c
     WHERE c.api_key_id = p_key AND c.window_start = win FOR UPDATE;
    admitted := least(p_n, greatest(cap - current, 0));
    IF admitted > 0 THEN
        UPDATE rate_limit_counters c SET count = c.count + admitted
         WHERE c.api_key_id = p_key AND c.window_start = win;
        current := current + admitted;
    END IF;
END $$;

-- Every replica LISTENs on tollgate_config (src/sync.rs) and reloads what changed, so a
-- revocation or a new route made through one replica (or in SQL) applies everywhere within
-- a second. NOTIFY is transactional: it is delivered only if the change commits.
CREATE FUNCTION tollgate_notify_routes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tollgate_config', 'routes');
    RETURN NULL;
END $$;

CREATE TRIGGER routes_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON routes
    FOR EACH STATEMENT EXECUTE FUNCTION tollgate_notify_routes();

CREATE FUNCTION tollgate_notify_key() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tollgate_config', 'key:' || OLD.id);
    RETURN NULL;
END $$;

-- Only changes a cached key depends on: the logger's last_used_at stamps (several a
-- second) must not make every replica reload. New keys need nothing: a key is cached only
-- on its first use. A user's deletion cascades here row by row.
CREATE TRIGGER api_keys_notify_update AFTER UPDATE ON api_keys
    FOR EACH ROW
    WHEN ((OLD.user_id, OLD.rate_limit, OLD.scopes, OLD.expires_at, OLD.revoked_at,
           OLD.key_hash, OLD.public_id)
          IS DISTINCT FROM
          (NEW.user_id, NEW.rate_limit, NEW.scopes, NEW.expires_at, NEW.revoked_at,
           NEW.key_hash, NEW.public_id))
    EXECUTE FUNCTION tollgate_notify_key();

CREATE TRIGGER api_keys_notify_delete AFTER DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION tollgate_notify_key();
