-- Performance: keyset pagination of an account's keys, and a change log that keeps every
-- server's in-memory caches (src/store/cache.rs) coherent with the store.

-- One page of an account's keys, oldest first, is one range scan of this index: its order
-- is the listing's order (created_at, then key_ref to break ties), so `LIMIT n` reads n
-- entries however many keys the account has.
DROP INDEX api_keys_by_account;
CREATE INDEX api_keys_by_account ON api_keys (account_id, created_at, key_ref);

-- Every change a cache must hear of, in commit order: SQLite has one writer at a time, so
-- AUTOINCREMENT numbers rows in the order their transactions commit and a reader that has
-- seen row n has seen every row before it. Written by triggers, so no writer (server, CLI,
-- or an operator's own SQL) can change a key or revoke a token without leaving a row.
-- Rows are purged after an hour; a server that fell further behind reloads everything.
CREATE TABLE cache_events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    -- 'key_deleted', 'key_changed' or 'token_revoked'
    kind        TEXT NOT NULL,
    key_ref     TEXT,
    api_key     TEXT,
    jti         TEXT,
    expires_at  INTEGER,
    -- Unix seconds, for purging
    at          INTEGER NOT NULL
);
CREATE INDEX cache_events_by_age ON cache_events (at);

CREATE TRIGGER api_keys_deleted_event AFTER DELETE ON api_keys BEGIN
    INSERT INTO cache_events (kind, key_ref, api_key, at)
    VALUES ('key_deleted', OLD.key_ref, OLD.api_key, CAST(strftime('%s', 'now') AS INTEGER));
END;

CREATE TRIGGER api_keys_changed_event AFTER UPDATE ON api_keys BEGIN
    INSERT INTO cache_events (kind, key_ref, api_key, at)
    VALUES ('key_changed', OLD.key_ref, OLD.api_key, CAST(strftime('%s', 'now') AS INTEGER));
END;

CREATE TRIGGER revoked_tokens_added_event AFTER INSERT ON revoked_tokens BEGIN
    INSERT INTO cache_events (kind, key_ref, jti, expires_at, at)
    VALUES ('token_revoked', NEW.key_ref, NEW.jti, NEW.expires_at, CAST(strftime('%s', 'now') AS INTEGER));
END;
