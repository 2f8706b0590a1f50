//! The seam between the shared queries and the two databases: what SQLite and PostgreSQL
//! genuinely do differently. Everything else is written once, in `super`'s other modules.

use std::future::Future;

use sqlx::{Pool, Transaction};

use super::query::{Exec, Query, Run, Sql};
use crate::store::{ChangeSignal, Result};

/// What a transaction that writes must hold besides its own rows, on every replica.
#[derive(Debug, Clone, Copy)]
pub enum Lock<'a> {
    /// The right to create the first admin.
    Bootstrap,
    /// The active signing key.
    SigningKey,
    /// These subjects' failed-login counters.
    Counters(&'a [String]),
    /// Every table, for an import into an empty store.
    Store,
}

/// A database keygate stores in. Implemented for sqlx's `Sqlite` and `Postgres`, so that
/// the store, `SqlStore<D>`, runs on each one's native driver.
pub trait Dialect: Run {
    /// How this dialect spells `sql`.
    fn text(sql: &'static Sql) -> &'static str;

    fn query<'q>(sql: &'static Sql) -> Query<'q, Self> {
        Query(sqlx::query(Self::text(sql)))
    }

    /// Opens the store at `url` and brings its schema up to date. Without `create`, a
    /// location where keygate never ran is `NoStore` and left as it was.
    fn open(url: &str, create: bool) -> impl Future<Output = Result<Pool<Self>>> + Send;

    /// Begins a transaction that will write. Its reads see no other writer's commits
    /// interleaved with them as far as the `Lock`s taken and the rows it locks go.
    fn begin_write(pool: &Pool<Self>) -> impl Future<Output = Result<Transaction<'static, Self>>> + Send;

    /// Begins a read-only transaction whose queries all see one committed state.
    fn begin_snapshot(pool: &Pool<Self>) -> impl Future<Output = Result<Transaction<'static, Self>>> + Send;

    /// Takes `lock` for the rest of the `begin_write` transaction `tx`.
    fn lock(tx: &mut Transaction<'static, Self>, lock: Lock<'_>) -> impl Future<Output = Result<()>> + Send;

    /// The `login_failures` rows of `subjects`, as `lockout::SELECT_COUNTERS` selects them.
    fn counter_rows<'c>(
        on: Exec<'c, Self>,
        subjects: &'c [String],
    ) -> impl Future<Output = Result<Vec<Self::Row>>> + Send;

    /// Merges what the database keeps beside its main file into it (`Store::checkpoint`).
    fn checkpoint(pool: &Pool<Self>) -> impl Future<Output = Result<()>> + Send;

    /// Writes a consistent copy of the whole store into the new file `path`, while others
    /// read and write (SQLite's `VACUUM INTO`); `Unsupported` where the database has tools of
    /// its own for that (PostgreSQL: `pg_dump`).
    fn backup_into(pool: &Pool<Self>, path: &std::path::Path) -> impl Future<Output = Result<()>> + Send;

    /// A wake-up for change-log readers, where the database can send one.
    fn change_signal(pool: &Pool<Self>) -> impl Future<Output = Result<Option<Box<dyn ChangeSignal>>>> + Send;
}
