//! Signing keys: the active one and those retired, whose tokens still verify.

use async_trait::async_trait;

use super::{
    Dialect, SqlStore,
    dialect::Lock,
    query::{Query, Run},
    sql,
};
use crate::{
    crypto::signing::SealedKey,
    store::{Result, SigningKeyRecord, SigningKeyStore, UnixTime, rows::signing_key},
};

fn insert<'q, D: Run>(query: Query<'q, D>, key: &'q SealedKey, now: UnixTime) -> Query<'q, D> {
    query.bind(&key.kid).bind(key.alg.as_str()).bind(&key.sealed_private).bind(&key.public_key).bind(now)
}

#[async_trait]
impl<D: Dialect> SigningKeyStore for SqlStore<D> {
    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>> {
        let rows = D::query(sql!(
            "SELECT kid, alg, sealed_private, public_key, created_at, retired_at FROM signing_keys \
             ORDER BY retired_at IS NOT NULL, created_at DESC, kid"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(signing_key).collect()
    }

    async fn insert_first_signing_key(&self, key: &SealedKey, now: UnixTime) -> Result<()> {
        let mut tx = D::begin_write(&self.pool).await?;
        D::lock(&mut tx, Lock::SigningKey).await?;
        let query = D::query(sql!(
            "INSERT INTO signing_keys (kid, alg, sealed_private, public_key, created_at) \
             SELECT $1, $2, $3, $4, $5 WHERE NOT EXISTS (SELECT 1 FROM signing_keys WHERE retired_at IS NULL)"
        ));
        insert(query, key, now).execute(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn rotate_signing_key(&self, key: &SealedKey, now: UnixTime) -> Result<()> {
        let mut tx = D::begin_write(&self.pool).await?;
        // Two rotations at once apply one after the other, instead of both retiring the old
        // key and then colliding on the unique active-key index.
        D::lock(&mut tx, Lock::SigningKey).await?;
        D::query(sql!("UPDATE signing_keys SET retired_at = $1 WHERE retired_at IS NULL"))
            .bind(now)
            .execute(&mut tx)
            .await?;
        let query = D::query(sql!(
            "INSERT INTO signing_keys (kid, alg, sealed_private, public_key, created_at) VALUES ($1, $2, $3, $4, $5)"
        ));
        insert(query, key, now).execute(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }
}
