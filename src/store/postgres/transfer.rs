//! Whole-store export and import for `keygate migrate`.

use super::*;
use crate::store::rows::{COUNTS, counts as counts_row};
use crate::store::{Counts, Snapshot, TransferStore};

async fn counts(conn: &mut PgConnection) -> Result<Counts> {
    let row = sqlx::query(COUNTS).fetch_one(&mut *conn).await?;
    counts_row(&row)
}

#[async_trait]
impl TransferStore for PgStore {
    async fn export(&self) -> Result<Snapshot> {
        // REPEATABLE READ: every query below sees the same committed state.
        let mut tx = self.pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
        let accounts = sqlx::query("SELECT id::text AS id, name, created_at FROM accounts ORDER BY created_at, id")
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(account_record)
            .collect::<Result<Vec<_>>>()?;
        let admins = sqlx::query(
            "SELECT id::text AS id, account_id::text AS account_id, email, password_hash, created_at FROM admins \
             ORDER BY created_at, id",
        )
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(admin_export)
        .collect::<Result<Vec<_>>>()?;
        let keys = sqlx::query(
            "SELECT key_ref::text AS key_ref, account_id::text AS account_id, api_key, secret_hash, created_at, scopes \
             FROM api_keys ORDER BY created_at, key_ref",
        )
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(key_record)
        .collect::<Result<Vec<_>>>()?;
        let sessions = sqlx::query(
            "SELECT id_hash, admin_id::text AS admin_id, account_id::text AS account_id, created_at, last_seen_at, \
             expires_at FROM sessions ORDER BY created_at, id_hash",
        )
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(session_export)
        .collect::<Result<Vec<_>>>()?;
        let signing_keys = sqlx::query(
            "SELECT kid, alg, sealed_private, public_key, created_at, retired_at FROM signing_keys \
             ORDER BY created_at, kid",
        )
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(signing_key)
        .collect::<Result<Vec<_>>>()?;
        let revocations = sqlx::query(
            "SELECT jti, key_ref::text AS key_ref, expires_at, revoked_at FROM revoked_tokens ORDER BY revoked_at, jti",
        )
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(revocation)
        .collect::<Result<Vec<_>>>()?;
        let audit = sqlx::query(
            "SELECT id, at, account_id::text AS account_id, action, actor, source, target FROM audit_log ORDER BY id",
        )
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|row| audit_record(row).map(|r| r.event))
        .collect::<Result<Vec<_>>>()?;
        tx.commit().await?;
        Ok(Snapshot { accounts, admins, keys, sessions, signing_keys, revocations, audit })
    }

    async fn import(&self, snapshot: &Snapshot) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        // Held to commit: a replica starting on this database meanwhile waits, then finds
        // the imported admin and signing key instead of creating its own; and no second
        // import can pass the emptiness check below at the same time.
        sqlx::query("LOCK TABLE accounts, admins, api_keys, sessions, signing_keys, revoked_tokens, audit_log IN EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
        if counts(&mut tx).await?.total() > 0 {
            return Err(StoreError::NotEmpty);
        }
        // The import may be large: no statement timeout inside this one transaction.
        sqlx::query("SET LOCAL statement_timeout = 0").execute(&mut *tx).await?;
        for a in &snapshot.accounts {
            sqlx::query("INSERT INTO accounts (id, name, created_at) VALUES ($1::uuid, $2, $3)")
                .bind(a.id.to_string())
                .bind(a.name.as_str())
                .bind(a.created_at)
                .execute(&mut *tx)
                .await?;
        }
        for a in &snapshot.admins {
            sqlx::query(
                "INSERT INTO admins (id, account_id, email, password_hash, created_at) \
                 VALUES ($1::uuid, $2::uuid, $3, $4, $5)",
            )
            .bind(a.admin.id.0.to_string())
            .bind(a.account_id.to_string())
            .bind(a.admin.email.as_str())
            .bind(&a.admin.password_hash)
            .bind(a.admin.created_at)
            .execute(&mut *tx)
            .await?;
        }
        for k in &snapshot.keys {
            sqlx::query(
                "INSERT INTO api_keys (key_ref, account_id, api_key, secret_hash, created_at, scopes) \
                 VALUES ($1::uuid, $2::uuid, $3, $4, $5, $6)",
            )
            .bind(k.key_ref.to_string())
            .bind(k.account_id.to_string())
            .bind(k.api_key.as_str())
            .bind(&k.secret_hash)
            .bind(k.created_at)
            .bind(k.scopes.as_str())
            .execute(&mut *tx)
            .await?;
        }
        for s in &snapshot.sessions {
            sqlx::query(
                "INSERT INTO sessions (id_hash, admin_id, account_id, created_at, last_seen_at, expires_at) \
                 VALUES ($1, $2::uuid, $3::uuid, $4, $5, $6)",
            )
            .bind(s.hash.as_slice())
            .bind(s.session.admin_id.0.to_string())
            .bind(s.session.account_id.to_string())
            .bind(s.session.created_at)
            .bind(s.session.last_seen_at)
            .bind(s.session.expires_at)
            .execute(&mut *tx)
            .await?;
        }
        for k in &snapshot.signing_keys {
            sqlx::query(
                "INSERT INTO signing_keys (kid, alg, sealed_private, public_key, created_at, retired_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&k.key.kid)
            .bind(k.key.alg.as_str())
            .bind(&k.key.sealed_private)
            .bind(&k.key.public_key)
            .bind(k.created_at)
            .bind(k.retired_at)
            .execute(&mut *tx)
            .await?;
        }
        for r in &snapshot.revocations {
            sqlx::query(
                "INSERT INTO revoked_tokens (jti, key_ref, expires_at, revoked_at) VALUES ($1, $2::uuid, $3, $4)",
            )
            .bind(&r.jti)
            .bind(r.key_ref.to_string())
            .bind(r.expires_at)
            .bind(r.revoked_at)
            .execute(&mut *tx)
            .await?;
        }
        for e in &snapshot.audit {
            super::security::insert_audit(&mut *tx, e).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn counts(&self) -> Result<Counts> {
        let mut conn = self.pool.acquire().await?;
        counts(&mut conn).await
    }
}
