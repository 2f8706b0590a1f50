-- Key lifecycle: names, metadata, expiry, disabling, rolling with a grace period, last use.
ALTER TABLE api_keys
    ADD COLUMN name TEXT,
    -- A JSON object of at most 4 KiB, as the admin gave it (text, so it reads back as given).
    ADD COLUMN metadata TEXT,
    -- The admin who generated the key (no foreign key: the key outlives the admin).
    ADD COLUMN created_by UUID,
    -- Unix seconds; NULL for a key that never expires.
    ADD COLUMN expires_at BIGINT,
    -- Set once the sweep has audited the key's expiry, so that it is audited once.
    ADD COLUMN expiry_audited BIGINT NOT NULL DEFAULT 0,
    -- When the key was disabled; NULL while enabled.
    ADD COLUMN disabled_at BIGINT,
    -- The password before the last roll, which keeps logging in until previous_expires_at.
    ADD COLUMN previous_secret_hash BYTEA,
    ADD COLUMN previous_expires_at BIGINT,
    -- Written in batches, off the request path; accurate to about a minute.
    ADD COLUMN last_used_at BIGINT;

CREATE INDEX api_keys_by_name ON api_keys (account_id, name, created_at, key_ref);
CREATE INDEX api_keys_by_expiry ON api_keys (expires_at) WHERE expires_at IS NOT NULL AND expiry_audited = 0;

-- The caches hear of changes to what logins and verifications read, not of the batched
-- last-use writes or the sweep's bookkeeping, which would make every replica re-read keys.
DROP TRIGGER api_keys_cache_event ON api_keys;
CREATE TRIGGER api_keys_cache_event
    AFTER DELETE OR UPDATE OF account_id, api_key, secret_hash, scopes, expires_at, disabled_at,
        previous_secret_hash, previous_expires_at ON api_keys
    FOR EACH ROW EXECUTE FUNCTION keygate_cache_event();
