//! Whole-store export and import for `keygate migrate`.

use async_trait::async_trait;
use sqlx::Transaction;

use super::{
    Dialect, SqlStore,
    admins::insert_admin,
    audit::insert_audit,
    dialect::Lock,
    keys::{EXPORT_COLUMNS, KEY_COLUMNS, insert_key},
    limits::upsert_owner,
    query::{Exec, Sql},
    sessions::insert_session,
    sql,
};
use crate::store::{
    Counts, Result, Snapshot, StoreError, TransferStore,
    rows::{
        COUNTS, account_record, admin_export, audit_record, counts as counts_row, key_export, owner_export, revocation,
        session_export, signing_key,
    },
};

async fn counts<D: Dialect>(on: Exec<'_, D>) -> Result<Counts> {
    counts_row(&D::query(sql!(COUNTS)).fetch_one(on).await?)
}

/// Every row `sql` selects, decoded.
async fn all<D: Dialect, T>(
    tx: &mut Transaction<'static, D>,
    sql: &'static Sql,
    decode: impl Fn(&D::Row) -> Result<T> + Send,
) -> Result<Vec<T>> {
    D::query(sql).fetch_all(tx).await?.iter().map(decode).collect()
}

#[async_trait]
impl<D: Dialect> TransferStore for SqlStore<D> {
    async fn export(&self) -> Result<Snapshot> {
        let mut tx = D::begin_snapshot(&self.pool).await?;
        let accounts = all(
            &mut tx,
            sql!("SELECT id::text AS id, name, created_at FROM accounts ORDER BY created_at, id"),
            account_record,
        )
        .await?;
        let admins = all(
            &mut tx,
            sql!(
                "SELECT id::text AS id, account_id::text AS account_id, email, password_hash, created_at FROM admins \
                 ORDER BY created_at, id"
            ),
            admin_export,
        )
        .await?;
        let keys = all(
            &mut tx,
            sql!("SELECT ", KEY_COLUMNS, ", ", EXPORT_COLUMNS, " FROM api_keys ORDER BY created_at, key_ref"),
            key_export,
        )
        .await?;
        let owners = all(
            &mut tx,
            sql!(
                "SELECT account_id::text AS account_id, owner, limits, credits_remaining, credits_refill, \
                 credits_period, updated_at FROM owners ORDER BY account_id, owner"
            ),
            owner_export,
        )
        .await?;
        let sessions = all(
            &mut tx,
            sql!(
                "SELECT id_hash, admin_id::text AS admin_id, account_id::text AS account_id, created_at, last_seen_at, \
                 expires_at FROM sessions ORDER BY created_at, id_hash"
            ),
            session_export,
        )
        .await?;
        let signing_keys = all(
            &mut tx,
            sql!(
                "SELECT kid, alg, sealed_private, public_key, created_at, retired_at FROM signing_keys \
                 ORDER BY created_at, kid"
            ),
            signing_key,
        )
        .await?;
        let revocations = all(
            &mut tx,
            sql!("SELECT jti, key_ref::text AS key_ref, expires_at, revoked_at FROM revoked_tokens ORDER BY revoked_at, jti"),
            revocation,
        )
        .await?;
        let audit = all(
            &mut tx,
            sql!("SELECT id, at, account_id::text AS account_id, action, actor, source, target FROM audit_log ORDER BY id"),
            |row| audit_record(row).map(|r| r.event),
        )
        .await?;
        tx.commit().await?;
        Ok(Snapshot { accounts, admins, keys, owners, sessions, signing_keys, revocations, audit })
    }

    async fn import(&self, snapshot: &Snapshot) -> Result<()> {
        let mut tx = D::begin_write(&self.pool).await?;
        D::lock(&mut tx, Lock::Store).await?;
        if counts::<D>((&mut tx).into()).await?.total() > 0 {
            return Err(StoreError::NotEmpty);
        }
        for a in &snapshot.accounts {
            D::query(sql!("INSERT INTO accounts (id, name, created_at) VALUES ($1::uuid, $2, $3)"))
                .bind(a.id.to_string())
                .bind(a.name.as_str())
                .bind(a.created_at)
                .execute(&mut tx)
                .await?;
        }
        for a in &snapshot.admins {
            insert_admin::<D>((&mut tx).into(), a.account_id, &a.admin).await?;
        }
        for k in &snapshot.keys {
            insert_key::<D>((&mut tx).into(), k).await?;
        }
        for o in &snapshot.owners {
            let credits = o.record.credits.as_ref();
            upsert_owner::<D>((&mut tx).into(), o.account_id, &o.owner, &o.record.limits, credits, o.updated_at)
                .await?;
        }
        for s in &snapshot.sessions {
            insert_session::<D>((&mut tx).into(), &s.hash, &s.session).await?;
        }
        for k in &snapshot.signing_keys {
            D::query(sql!(
                "INSERT INTO signing_keys (kid, alg, sealed_private, public_key, created_at, retired_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)"
            ))
            .bind(&k.key.kid)
            .bind(k.key.alg.as_str())
            .bind(&k.key.sealed_private)
            .bind(&k.key.public_key)
            .bind(k.created_at)
            .bind(k.retired_at)
            .execute(&mut tx)
            .await?;
        }
        for r in &snapshot.revocations {
            D::query(sql!(
                "INSERT INTO revoked_tokens (jti, key_ref, expires_at, revoked_at) VALUES ($1, $2::uuid, $3, $4)"
            ))
            .bind(&r.jti)
            .bind(r.key_ref.to_string())
            .bind(r.expires_at)
            .bind(r.revoked_at)
            .execute(&mut tx)
            .await?;
        }
        for e in &snapshot.audit {
            insert_audit::<D>((&mut tx).into(), e).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn counts(&self) -> Result<Counts> {
        counts::<D>((&self.pool).into()).await
    }
}
