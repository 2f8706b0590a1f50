//! The store on a SQL database: `SqlStore<D>`, one implementation of every store trait,
//! generic over the `Dialect` (`sqlite.rs`, `postgres.rs`) and so compiled once per backend
//! on its native sqlx driver. A file per concern holds its queries.

use async_trait::async_trait;
use sqlx::Pool;

use super::{PoolState, Result, Store};

mod admins;
mod audit;
mod changes;
mod dialect;
mod gateway;
mod keys;
mod limits;
mod lockout;
pub mod postgres;
pub(super) mod query;
mod retention;
mod sessions;
mod signing;
pub mod sqlite;
mod transfer;

pub use dialect::Dialect;
use query::sql;

#[derive(Debug)]
pub struct SqlStore<D: Dialect> {
    pool: Pool<D>,
}

impl<D: Dialect> Clone for SqlStore<D> {
    fn clone(&self) -> Self {
        Self { pool: self.pool.clone() }
    }
}

impl<D: Dialect> SqlStore<D> {
    pub async fn connect(url: &str) -> Result<Self> {
        Self::open(url, true).await
    }

    /// Opens the store at `url`. Without `create`, a location that holds no keygate store
    /// is `NoStore` and left as it was.
    pub async fn open(url: &str, create: bool) -> Result<Self> {
        Ok(Self { pool: D::open(url, create).await? })
    }
}

#[async_trait]
impl<D: Dialect> Store for SqlStore<D> {
    async fn ping(&self) -> Result<()> {
        D::query(sql!("SELECT 1")).execute(&self.pool).await?;
        Ok(())
    }

    fn pool_state(&self) -> PoolState {
        PoolState { open: self.pool.size(), idle: u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX) }
    }

    async fn checkpoint(&self) -> Result<()> {
        D::checkpoint(&self.pool).await
    }

    async fn backup_into(&self, path: &std::path::Path) -> Result<()> {
        D::backup_into(&self.pool, path).await
    }
}
