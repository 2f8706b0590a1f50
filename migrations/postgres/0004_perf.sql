-- Performance: keyset pagination of an account's keys, and a change log that keeps every
-- replica's in-memory caches (src/store/cache.rs) coherent with the database. The
-- PostgreSQL twin of migrations/sqlite/0004_perf.sql.

-- One page of an account's keys, oldest first, is one range scan of this index.
DROP INDEX api_keys_by_account;
CREATE INDEX api_keys_by_account ON api_keys (account_id, created_at, key_ref);

-- Every change a cache must hear of. Replicas read it by sequence number ("everything
-- after n"), which is only safe if numbers are handed out in commit order; the trigger
-- below makes them so.
CREATE TABLE cache_events (
    seq         BIGSERIAL PRIMARY KEY,
    -- 'key_deleted', 'key_changed' or 'token_revoked'
    kind        TEXT NOT NULL,
    key_ref     UUID,
    api_key     TEXT,
    jti         TEXT,
    expires_at  BIGINT,
    -- Unix seconds, for purging
    at          BIGINT NOT NULL DEFAULT extract(epoch FROM now())::bigint
);
CREATE INDEX cache_events_by_age ON cache_events (at);

-- Written by triggers, so no writer (a replica, the CLI, an operator's own SQL) can delete
-- a key or revoke a token without leaving a row.
--
-- The transaction-scoped advisory lock ("kg" 0x10) orders the writers of the log: a
-- sequence value is taken only once the previous writer has committed, so a replica that
-- has read row n has seen every row before it (without it, two concurrent deletes could
-- commit out of number order and a reader could skip the lower one for good). Key
-- deletions and revocations are rare and short, so the lock costs nothing measurable.
--
-- NOTIFY wakes the replicas' readers at once (LISTEN keygate_cache); the log, not the
-- notification, carries the change, so a notification lost with a dropped connection
-- only delays a replica until its next periodic read.
CREATE FUNCTION keygate_cache_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(x'6b670010'::bigint);
    IF TG_TABLE_NAME = 'revoked_tokens' THEN
        INSERT INTO cache_events (kind, key_ref, jti, expires_at)
        VALUES ('token_revoked', NEW.key_ref, NEW.jti, NEW.expires_at);
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO cache_events (kind, key_ref, api_key) VALUES ('key_deleted', OLD.key_ref, OLD.api_key);
    ELSE
        INSERT INTO cache_events (kind, key_ref, api_key) VALUES ('key_changed', OLD.key_ref, OLD.api_key);
    END IF;
    PERFORM pg_notify('keygate_cache', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER api_keys_cache_event AFTER DELETE OR UPDATE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION keygate_cache_event();
CREATE TRIGGER revoked_tokens_cache_event AFTER INSERT ON revoked_tokens
    FOR EACH ROW EXECUTE FUNCTION keygate_cache_event();
