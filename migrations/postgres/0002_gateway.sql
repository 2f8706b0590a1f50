-- Gateway integration: revoked access tokens (RFC 7009). The PostgreSQL twin of
-- migrations/sqlite/0002_gateway.sql, in native types like 0001_init.sql.
--
-- A row lives only until the token it names would have expired anyway (`expires_at`,
-- Unix seconds); after that the signature check refuses the token on its own and the row is
-- purged. No foreign key to api_keys: a deleted key's tokens already fail, and a revocation
-- racing a key deletion must not turn into an error.
CREATE TABLE revoked_tokens (
    jti         TEXT PRIMARY KEY,
    key_ref     UUID NOT NULL,
    expires_at  BIGINT NOT NULL,
    revoked_at  BIGINT NOT NULL
);
CREATE INDEX revoked_tokens_by_expiry ON revoked_tokens (expires_at);
