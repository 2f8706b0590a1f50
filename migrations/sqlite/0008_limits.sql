-- Rate limits and usage credits, per key and per owner.
-- The key's limits: a JSON array of {name, limit, window_seconds, consistency}; NULL for none.
ALTER TABLE api_keys ADD COLUMN limits TEXT;
-- The customer the key belongs to, in the admin's own system; NULL for none.
ALTER TABLE api_keys ADD COLUMN owner TEXT;
-- The credit balance; NULL when the key has no credits.
ALTER TABLE api_keys ADD COLUMN credits_remaining INTEGER;
-- The refill, as JSON {amount, interval, day}; NULL for a fixed budget.
ALTER TABLE api_keys ADD COLUMN credits_refill TEXT;
-- The refill period the balance belongs to: one from an earlier period is refilled first.
ALTER TABLE api_keys ADD COLUMN credits_period INTEGER NOT NULL DEFAULT 0;

CREATE INDEX api_keys_by_owner ON api_keys (account_id, owner) WHERE owner IS NOT NULL;

-- Limits and credits shared by every key of an account that names the owner.
CREATE TABLE owners (
    account_id         TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    owner              TEXT NOT NULL,
    limits             TEXT,
    credits_remaining  INTEGER,
    credits_refill     TEXT,
    credits_period     INTEGER NOT NULL DEFAULT 0,
    updated_at         INTEGER NOT NULL,
    PRIMARY KEY (account_id, owner)
);

-- Rate-limit counters shared through the store; one server on SQLite keeps its own in
-- memory, so this table stays empty there (it keeps the store's queries one set).
CREATE TABLE limit_counters (
    counter       TEXT NOT NULL,
    window_start  INTEGER NOT NULL,
    hits          INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    PRIMARY KEY (counter, window_start)
);
CREATE INDEX limit_counters_by_expiry ON limit_counters (expires_at);

-- Verifications read the key's limits and owner from the cache, which must hear of their
-- changes; not of the balance, which moves with every request.
DROP TRIGGER api_keys_changed_event;
CREATE TRIGGER api_keys_changed_event
AFTER UPDATE OF account_id, api_key, secret_hash, scopes, expires_at, disabled_at, previous_secret_hash,
    previous_expires_at, limits, owner, credits_refill ON api_keys
BEGIN
    INSERT INTO cache_events (kind, key_ref, api_key, at)
    VALUES ('key_changed', OLD.key_ref, OLD.api_key, CAST(strftime('%s', 'now') AS INTEGER));
END;

CREATE TRIGGER owners_changed_event AFTER INSERT ON owners BEGIN
    INSERT INTO cache_events (kind, at) VALUES ('owner_changed', CAST(strftime('%s', 'now') AS INTEGER));
END;
CREATE TRIGGER owners_updated_event AFTER UPDATE OF limits, credits_refill ON owners BEGIN
    INSERT INTO cache_events (kind, at) VALUES ('owner_changed', CAST(strftime('%s', 'now') AS INTEGER));
END;
CREATE TRIGGER owners_deleted_event AFTER DELETE ON owners BEGIN
    INSERT INTO cache_events (kind, at) VALUES ('owner_changed', CAST(strftime('%s', 'now') AS INTEGER));
END;
