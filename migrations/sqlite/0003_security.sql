-- Abuse defences: failed-login counters and the audit log.

-- One row per subject that failed to log in recently: 'email:<address>', 'key:<api key>'
-- or 'addr:<client address or IPv6 /64>'. Rows idle past the counting window are pruned.
CREATE TABLE login_failures (
    subject          TEXT PRIMARY KEY,
    failures         INTEGER NOT NULL,
    strikes          INTEGER NOT NULL,
    last_failure_at  INTEGER NOT NULL,
    locked_until     INTEGER NOT NULL
);
CREATE INDEX login_failures_by_last_failure ON login_failures (last_failure_at);

-- Security-relevant events. Identifiers and addresses only, never a secret. No foreign
-- key: the record of what happened outlives the account or key it names.
CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    account_id  TEXT,
    action      TEXT NOT NULL,
    actor       TEXT NOT NULL,
    source      TEXT,
    target      TEXT
);
CREATE INDEX audit_log_by_account ON audit_log (account_id, id);
