-- Retention: the periodic sweep deletes sessions that have ended and audit entries past
-- KEYGATE_AUDIT_RETENTION_DAYS. These indexes let it find them without scanning the tables.
-- (sessions_by_expiry, from 0001, serves the absolute expiry.)
CREATE INDEX sessions_by_last_seen ON sessions (last_seen_at);
CREATE INDEX audit_log_by_age ON audit_log (at);
