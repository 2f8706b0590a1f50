-- The PostgreSQL schema: the same tables as migrations/sqlite/0001_init.sql, in native
-- types. Timestamps stay Unix seconds (BIGINT) so both backends compare and copy them
-- alike; ids are UUIDs; digests and sealed keys are BYTEA.

CREATE TABLE accounts (
    id          UUID PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL
);

CREATE TABLE admins (
    id             UUID PRIMARY KEY,
    account_id     UUID NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    email          TEXT NOT NULL UNIQUE,
    -- argon2id PHC string
    password_hash  TEXT NOT NULL,
    created_at     BIGINT NOT NULL
);
-- PostgreSQL does not index the referencing side of a foreign key by itself; without it
-- every cascade from accounts would scan the table.
CREATE INDEX admins_by_account ON admins (account_id);

CREATE TABLE api_keys (
    key_ref      UUID PRIMARY KEY,
    account_id   UUID NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    api_key      TEXT NOT NULL UNIQUE,
    -- HMAC-SHA256 of the API password under a key derived from the master key
    secret_hash  BYTEA NOT NULL,
    created_at   BIGINT NOT NULL
);
CREATE INDEX api_keys_by_account ON api_keys (account_id, created_at);

CREATE TABLE sessions (
    -- SHA-256 of the cookie value; the value itself is never stored
    id_hash       BYTEA PRIMARY KEY CHECK (octet_length(id_hash) = 32),
    admin_id      UUID NOT NULL REFERENCES admins (id) ON DELETE CASCADE,
    account_id    UUID NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    created_at    BIGINT NOT NULL,
    last_seen_at  BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL
);
CREATE INDEX sessions_by_expiry ON sessions (expires_at);
CREATE INDEX sessions_by_admin ON sessions (admin_id);
CREATE INDEX sessions_by_account ON sessions (account_id);

CREATE TABLE signing_keys (
    kid             TEXT PRIMARY KEY,
    alg             TEXT NOT NULL,
    -- nonce || XChaCha20-Poly1305(PKCS#8 private key), key derived from the master key
    sealed_private  BYTEA NOT NULL,
    public_key      BYTEA NOT NULL,
    created_at      BIGINT NOT NULL,
    retired_at      BIGINT
);
-- At most one active key, enforced by the schema rather than by care: of several
-- replicas that each try to create the first key, only one insert can succeed.
CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys ((retired_at IS NULL)) WHERE retired_at IS NULL;
