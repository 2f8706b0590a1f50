-- Key lifecycle: names, metadata, expiry, disabling, rolling with a grace period, last use.
ALTER TABLE api_keys ADD COLUMN name TEXT;
-- A JSON object of at most 4 KiB, as the admin gave it.
ALTER TABLE api_keys ADD COLUMN metadata TEXT;
-- The admin who generated the key (no foreign key: the key outlives the admin).
ALTER TABLE api_keys ADD COLUMN created_by TEXT;
-- Unix seconds; NULL for a key that never expires.
ALTER TABLE api_keys ADD COLUMN expires_at INTEGER;
-- Set once the sweep has audited the key's expiry, so that it is audited once.
ALTER TABLE api_keys ADD COLUMN expiry_audited INTEGER NOT NULL DEFAULT 0;
-- When the key was disabled; NULL while enabled.
ALTER TABLE api_keys ADD COLUMN disabled_at INTEGER;
-- The password before the last roll, which keeps logging in until previous_expires_at.
ALTER TABLE api_keys ADD COLUMN previous_secret_hash BLOB;
ALTER TABLE api_keys ADD COLUMN previous_expires_at INTEGER;
-- Written in batches, off the request path; accurate to about a minute.
ALTER TABLE api_keys ADD COLUMN last_used_at INTEGER;

CREATE INDEX api_keys_by_name ON api_keys (account_id, name, created_at, key_ref);
CREATE INDEX api_keys_by_expiry ON api_keys (expires_at) WHERE expires_at IS NOT NULL AND expiry_audited = 0;

-- The caches hear of changes to what logins and verifications read, not of the batched
-- last-use writes or the sweep's bookkeeping, which would make every server re-read keys.
DROP TRIGGER api_keys_changed_event;
CREATE TRIGGER api_keys_changed_event
AFTER UPDATE OF account_id, api_key, secret_hash, scopes, expires_at, disabled_at, previous_secret_hash,
    previous_expires_at ON api_keys
BEGIN
    INSERT INTO cache_events (kind, key_ref, api_key, at)
    VALUES ('key_changed', OLD.key_ref, OLD.api_key, CAST(strftime('%s', 'now') AS INTEGER));
END;
