-- Login attempts in flight: an attempt holds a place in its subjects' counters from before
-- its secret is checked until it ends, so a burst cannot get more guesses checked than the
-- lockout threshold allows. `in_flight_at` is when the latest place was taken; places older
-- than a minute are presumed lost (a server that stopped mid-check) and not counted.
ALTER TABLE login_failures ADD COLUMN in_flight INTEGER NOT NULL DEFAULT 0;
ALTER TABLE login_failures ADD COLUMN in_flight_at INTEGER NOT NULL DEFAULT 0;

-- Live revocations are counted per key (and, through api_keys, per account) before each new
-- one, to bound what one tenant can put in every server's memory.
CREATE INDEX revoked_tokens_by_key ON revoked_tokens (key_ref, expires_at);

-- `keygate admin unlock` clears a counter from outside the server, whose cache mirrors the
-- counters on the embedded store: the change log tells it which subject to read again.
ALTER TABLE cache_events ADD COLUMN subject TEXT;

-- A key's scopes, space-separated RFC 6749 scope tokens ('' for none). A key holding
-- `keygate:introspect` may introspect the tokens of its account's other keys.
ALTER TABLE api_keys ADD COLUMN scopes TEXT NOT NULL DEFAULT '';
