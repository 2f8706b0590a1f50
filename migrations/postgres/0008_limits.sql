-- Rate limits and usage credits, per key and per owner.
ALTER TABLE api_keys
    -- The key's limits: a JSON array of {name, limit, window_seconds, consistency}; NULL for none.
    ADD COLUMN limits TEXT,
    -- The customer the key belongs to, in the admin's own system; NULL for none.
    ADD COLUMN owner TEXT,
    -- The credit balance; NULL when the key has no credits.
    ADD COLUMN credits_remaining BIGINT,
    -- The refill, as JSON {amount, interval, day}; NULL for a fixed budget.
    ADD COLUMN credits_refill TEXT,
    -- The refill period the balance belongs to: one from an earlier period is refilled first.
    ADD COLUMN credits_period BIGINT NOT NULL DEFAULT 0;

CREATE INDEX api_keys_by_owner ON api_keys (account_id, owner) WHERE owner IS NOT NULL;

-- Limits and credits shared by every key of an account that names the owner.
CREATE TABLE owners (
    account_id         UUID NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    owner              TEXT NOT NULL,
    limits             TEXT,
    credits_remaining  BIGINT,
    credits_refill     TEXT,
    credits_period     BIGINT NOT NULL DEFAULT 0,
    updated_at         BIGINT NOT NULL,
    PRIMARY KEY (account_id, owner)
);

-- The replicas' shared rate-limit counters: hits per counter and fixed window, of which
-- two windows at a time make the sliding estimate. Unlogged: a crash of the database may
-- forget the current windows' counts, never a credit (credits live in the rows above).
CREATE UNLOGGED TABLE limit_counters (
    counter       TEXT NOT NULL,
    window_start  BIGINT NOT NULL,
    hits          BIGINT NOT NULL,
    -- When the row stops mattering (the end of the window after its own), for the sweep.
    expires_at    BIGINT NOT NULL,
    PRIMARY KEY (counter, window_start)
);
CREATE INDEX limit_counters_by_expiry ON limit_counters (expires_at);

-- Verifications read the key's limits and owner from the caches, which must hear of their
-- changes; not of the balance, which moves with every request.
DROP TRIGGER api_keys_cache_event ON api_keys;
CREATE TRIGGER api_keys_cache_event
    AFTER DELETE OR UPDATE OF account_id, api_key, secret_hash, scopes, expires_at, disabled_at,
        previous_secret_hash, previous_expires_at, limits, owner, credits_refill ON api_keys
    FOR EACH ROW EXECUTE FUNCTION keygate_cache_event();

-- An owner's limits are read with each of its keys: a change of them is an event of its own,
-- on which caches re-read every key's status.
CREATE FUNCTION keygate_owner_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(x'6b670010'::bigint);
    INSERT INTO cache_events (kind) VALUES ('owner_changed');
    PERFORM pg_notify('keygate_cache', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER owners_cache_event
    AFTER INSERT OR DELETE OR UPDATE OF limits, credits_refill ON owners
    FOR EACH ROW EXECUTE FUNCTION keygate_owner_event();
