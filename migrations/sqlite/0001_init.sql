-- Timestamps are Unix seconds. Ids are canonical UUID strings.

CREATE TABLE accounts (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
);

CREATE TABLE admins (
    id             TEXT PRIMARY KEY,
    account_id     TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    email          TEXT NOT NULL UNIQUE,
    -- argon2id PHC string
    password_hash  TEXT NOT NULL,
    created_at     INTEGER NOT NULL
);

CREATE TABLE api_keys (
    key_ref      TEXT PRIMARY KEY,
    account_id   TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    api_key      TEXT NOT NULL UNIQUE,
    -- HMAC-SHA256 of the API password under a key derived from the master key
    secret_hash  BLOB NOT NULL,
    created_at   INTEGER NOT NULL
);
CREATE INDEX api_keys_by_account ON api_keys (account_id, created_at);

CREATE TABLE sessions (
    -- SHA-256 of the cookie value; the value itself is never stored
    id_hash       BLOB PRIMARY KEY,
    admin_id      TEXT NOT NULL REFERENCES admins (id) ON DELETE CASCADE,
    account_id    TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    created_at    INTEGER NOT NULL,
    last_seen_at  INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL
);
CREATE INDEX sessions_by_expiry ON sessions (expires_at);

CREATE TABLE signing_keys (
    kid             TEXT PRIMARY KEY,
    alg             TEXT NOT NULL,
    -- nonce || XChaCha20-Poly1305(PKCS#8 private key), key derived from the master key
    sealed_private  BLOB NOT NULL,
    public_key      BLOB NOT NULL,
    created_at      INTEGER NOT NULL,
    retired_at      INTEGER
);
-- At most one active key, enforced by the schema rather than by care.
CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys ((retired_at IS NULL)) WHERE retired_at IS NULL;
