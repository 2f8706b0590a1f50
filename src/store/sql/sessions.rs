//! Admin sessions, by the SHA-256 digest of their cookie.

use async_trait::async_trait;

use super::{Dialect, SqlStore, query::Exec, sql};
use crate::{
    crypto::session::SessionHash,
    store::{Result, SessionRecord, SessionStore, UnixTime, rows::session_record},
};

/// One session row; also how `keygate migrate` writes the copied sessions.
pub(super) async fn insert_session<D: Dialect>(on: Exec<'_, D>, hash: &SessionHash, s: &SessionRecord) -> Result<()> {
    D::query(sql!(
        "INSERT INTO sessions (id_hash, admin_id, account_id, created_at, last_seen_at, expires_at) \
             VALUES ($1, $2::uuid, $3::uuid, $4, $5, $6)"
    ))
    .bind(hash.as_slice())
    .bind(s.admin_id.0.to_string())
    .bind(s.account_id.to_string())
    .bind(s.created_at)
    .bind(s.last_seen_at)
    .bind(s.expires_at)
    .execute(on)
    .await?;
    Ok(())
}

#[async_trait]
impl<D: Dialect> SessionStore for SqlStore<D> {
    async fn insert_session(&self, hash: &SessionHash, s: &SessionRecord) -> Result<()> {
        insert_session::<D>((&self.pool).into(), hash, s).await
    }

    async fn find_session(&self, hash: &SessionHash) -> Result<Option<SessionRecord>> {
        let row = D::query(sql!(
            "SELECT admin_id::text AS admin_id, account_id::text AS account_id, created_at, last_seen_at, expires_at \
             FROM sessions WHERE id_hash = $1"
        ))
        .bind(hash.as_slice())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(session_record).transpose()
    }

    async fn touch_session(&self, hash: &SessionHash, now: UnixTime) -> Result<()> {
        // Never backwards: replicas with slightly different clocks all touch one session.
        D::query(sql!(
            "UPDATE sessions SET last_seen_at = CASE WHEN last_seen_at > $1 THEN last_seen_at ELSE $1 END \
             WHERE id_hash = $2"
        ))
        .bind(now)
        .bind(hash.as_slice())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn delete_session(&self, hash: &SessionHash) -> Result<bool> {
        let deleted =
            D::query(sql!("DELETE FROM sessions WHERE id_hash = $1")).bind(hash.as_slice()).execute(&self.pool).await?;
        Ok(deleted > 0)
    }
}
