//! Queries written once: their text in one form rendered per dialect at compile time, their
//! arguments and executors in types every backend shares, run through sqlx's native drivers.

use std::future::Future;

use sqlx::{Database, Encode, Executor, IntoArguments, Pool, Transaction, Type};

use crate::store::{Result, rows::Columns};

/// A query's text in each dialect. Written in PostgreSQL's form (`$1` placeholders, which
/// SQLite binds by number too; `::type` casts), from which SQLite's is made by dropping
/// what it has no use for: casts (its values carry their own types) and row-locking clauses
/// (`FOR UPDATE …`, to the end of its subquery: a SQLite writer holds the whole database).
/// Neither may therefore appear inside a string literal of a query.
pub struct Sql {
    pub(super) postgres: &'static str,
    pub(super) sqlite: &'static str,
}

/// `sql!("SELECT …", COLUMNS, " WHERE …")`: the parts (string constants) joined, as a
/// `&'static Sql` rendered for both dialects when the crate is compiled.
macro_rules! sql {
    ($($part:expr),+ $(,)?) => {{
        use $crate::store::sql::query::{Sql, joined, joined_len, text};
        const PARTS: &[&str] = &[$($part),+];
        const POSTGRES: [u8; joined_len(PARTS, false)] = joined(PARTS, false);
        const SQLITE: [u8; joined_len(PARTS, true)] = joined(PARTS, true);
        const SQL: Sql = Sql { postgres: text(&POSTGRES), sqlite: text(&SQLITE) };
        &SQL
    }};
}
pub(crate) use sql;

/// Where a span SQLite drops, starting at `i` of `s`, ends; `i` when none starts there.
const fn sqlite_skips(s: &[u8], i: usize) -> usize {
    if i + 1 < s.len() && s[i] == b':' && s[i + 1] == b':' {
        let mut j = i + 2;
        while j < s.len() && (s[j].is_ascii_alphanumeric() || s[j] == b'_') {
            j += 1;
        }
        if j + 1 < s.len() && s[j] == b'[' && s[j + 1] == b']' {
            j += 2;
        }
        return j;
    }
    const LOCK: &[u8] = b" FOR UPDATE";
    let mut k = 0;
    while k < LOCK.len() && i + k < s.len() && s[i + k] == LOCK[k] {
        k += 1;
    }
    if k < LOCK.len() {
        return i;
    }
    let mut j = i + k;
    while j < s.len() && s[j] != b')' {
        j += 1;
    }
    j
}

/// Visits each byte of the joined parts that the dialect keeps, writing it to `out` when
/// there is room; returns how many there are.
const fn render(parts: &[&str], sqlite: bool, out: &mut [u8]) -> usize {
    let mut n = 0;
    let mut p = 0;
    while p < parts.len() {
        let s = parts[p].as_bytes();
        let mut i = 0;
        while i < s.len() {
            let next = if sqlite { sqlite_skips(s, i) } else { i };
            if next > i {
                i = next;
                continue;
            }
            if n < out.len() {
                out[n] = s[i];
            }
            n += 1;
            i += 1;
        }
        p += 1;
    }
    n
}

pub const fn joined_len(parts: &[&str], sqlite: bool) -> usize {
    render(parts, sqlite, &mut [])
}

pub const fn joined<const N: usize>(parts: &[&str], sqlite: bool) -> [u8; N] {
    let mut out = [0; N];
    render(parts, sqlite, &mut out);
    out
}

pub const fn text(bytes: &'static [u8]) -> &'static str {
    match std::str::from_utf8(bytes) {
        Ok(s) => s,
        Err(_) => panic!("a query must stay UTF-8 once rendered"),
    }
}

/// An argument, in the few kinds the stores bind.
pub enum Value<'q> {
    Str(&'q str),
    String(String),
    OptStr(Option<&'q str>),
    OptString(Option<String>),
    Int(i64),
    OptInt(Option<i64>),
    Bytes(&'q [u8]),
    OptBytes(Option<&'q [u8]>),
}

impl<'q> From<&'q str> for Value<'q> {
    fn from(v: &'q str) -> Self {
        Self::Str(v)
    }
}
impl<'q> From<&'q String> for Value<'q> {
    fn from(v: &'q String) -> Self {
        Self::Str(v)
    }
}
impl From<String> for Value<'_> {
    fn from(v: String) -> Self {
        Self::String(v)
    }
}
impl<'q> From<Option<&'q str>> for Value<'q> {
    fn from(v: Option<&'q str>) -> Self {
        Self::OptStr(v)
    }
}
impl<'q> From<&'q Option<String>> for Value<'q> {
    fn from(v: &'q Option<String>) -> Self {
        Self::OptStr(v.as_deref())
    }
}
impl From<Option<String>> for Value<'_> {
    fn from(v: Option<String>) -> Self {
        Self::OptString(v)
    }
}
impl From<i64> for Value<'_> {
    fn from(v: i64) -> Self {
        Self::Int(v)
    }
}
impl From<Option<i64>> for Value<'_> {
    fn from(v: Option<i64>) -> Self {
        Self::OptInt(v)
    }
}
impl<'q> From<&'q [u8]> for Value<'q> {
    fn from(v: &'q [u8]) -> Self {
        Self::Bytes(v)
    }
}
impl<'q> From<Option<&'q [u8]>> for Value<'q> {
    fn from(v: Option<&'q [u8]>) -> Self {
        Self::OptBytes(v)
    }
}
impl<'q> From<&'q Vec<u8>> for Value<'q> {
    fn from(v: &'q Vec<u8>) -> Self {
        Self::Bytes(v)
    }
}

/// Where a query runs: on any connection of the pool, or on one (a transaction's).
pub enum Exec<'c, DB: Database> {
    Pool(&'c Pool<DB>),
    Conn(&'c mut DB::Connection),
}

impl<'c, DB: Database> From<&'c Pool<DB>> for Exec<'c, DB> {
    fn from(pool: &'c Pool<DB>) -> Self {
        Self::Pool(pool)
    }
}
impl<'c, DB: Database> From<&'c mut Transaction<'static, DB>> for Exec<'c, DB> {
    fn from(tx: &'c mut Transaction<'static, DB>) -> Self {
        Self::Conn(tx)
    }
}

/// The number of rows a statement changed, which sqlx reports per driver.
pub trait RowsAffected {
    fn rows(&self) -> u64;
}

impl RowsAffected for sqlx::sqlite::SqliteQueryResult {
    fn rows(&self) -> u64 {
        self.rows_affected()
    }
}

impl RowsAffected for sqlx::postgres::PgQueryResult {
    fn rows(&self) -> u64 {
        self.rows_affected()
    }
}

type Native<'q, DB> = sqlx::query::Query<'q, DB, <DB as Database>::Arguments<'q>>;

/// What the shared queries need of a sqlx driver. One blanket implementation states the
/// driver bounds once, so the generic store code needs none of them.
pub trait Run: Database<Row: Columns> {
    fn bind<'q>(query: Native<'q, Self>, value: Value<'q>) -> Native<'q, Self>;
    fn execute<'q, 'c>(query: Native<'q, Self>, on: Exec<'c, Self>) -> impl Future<Output = Result<u64>> + Send;
    fn fetch_optional<'q, 'c>(
        query: Native<'q, Self>,
        on: Exec<'c, Self>,
    ) -> impl Future<Output = Result<Option<Self::Row>>> + Send;
    fn fetch_all<'q, 'c>(
        query: Native<'q, Self>,
        on: Exec<'c, Self>,
    ) -> impl Future<Output = Result<Vec<Self::Row>>> + Send;
}

impl<DB> Run for DB
where
    DB: Database,
    DB::Row: Columns,
    DB::QueryResult: RowsAffected,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> &'q [u8]: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q [u8]>: Encode<'q, DB> + Type<DB>,
{
    fn bind<'q>(query: Native<'q, Self>, value: Value<'q>) -> Native<'q, Self> {
        match value {
            Value::Str(v) => query.bind(v),
            Value::String(v) => query.bind(v),
            Value::OptStr(v) => query.bind(v),
            Value::OptString(v) => query.bind(v),
            Value::Int(v) => query.bind(v),
            Value::OptInt(v) => query.bind(v),
            Value::Bytes(v) => query.bind(v),
            Value::OptBytes(v) => query.bind(v),
        }
    }

    async fn execute<'q, 'c>(query: Native<'q, Self>, on: Exec<'c, Self>) -> Result<u64> {
        let timer = QueryTimer::start();
        let done = match on {
            Exec::Pool(pool) => query.execute(pool).await?,
            Exec::Conn(conn) => query.execute(conn).await?,
        };
        timer.stop();
        Ok(done.rows())
    }

    async fn fetch_optional<'q, 'c>(query: Native<'q, Self>, on: Exec<'c, Self>) -> Result<Option<Self::Row>> {
        let timer = QueryTimer::start();
        let row = match on {
            Exec::Pool(pool) => query.fetch_optional(pool).await?,
            Exec::Conn(conn) => query.fetch_optional(conn).await?,
        };
        timer.stop();
        Ok(row)
    }

    async fn fetch_all<'q, 'c>(query: Native<'q, Self>, on: Exec<'c, Self>) -> Result<Vec<Self::Row>> {
        let timer = QueryTimer::start();
        let rows = match on {
            Exec::Pool(pool) => query.fetch_all(pool).await?,
            Exec::Conn(conn) => query.fetch_all(conn).await?,
        };
        timer.stop();
        Ok(rows)
    }
}

/// Times a statement that succeeded into `keygate_store_query_duration_seconds` (waiting for
/// a pooled connection included: that is what a request waits for). Failed ones are not
/// timed: an outage would fill the histogram with timeouts, which the 503s already count.
struct QueryTimer(std::time::Instant);

impl QueryTimer {
    fn start() -> Self {
        Self(std::time::Instant::now())
    }

    fn stop(self) {
        metrics::histogram!(crate::monitoring::STORE_QUERY_DURATION).record(self.0.elapsed().as_secs_f64());
    }
}

/// A query being built: `D::query(sql!(…)).bind(…).fetch_all(&pool)`, like sqlx's own.
pub struct Query<'q, DB: Run>(pub(super) Native<'q, DB>);

impl<'q, DB: Run> Query<'q, DB> {
    pub fn bind(self, value: impl Into<Value<'q>>) -> Self {
        Self(DB::bind(self.0, value.into()))
    }

    /// Runs a statement; returns how many rows it changed.
    pub fn execute<'c>(self, on: impl Into<Exec<'c, DB>>) -> impl Future<Output = Result<u64>> + Send {
        DB::execute(self.0, on.into())
    }

    pub fn fetch_optional<'c>(
        self,
        on: impl Into<Exec<'c, DB>>,
    ) -> impl Future<Output = Result<Option<DB::Row>>> + Send {
        DB::fetch_optional(self.0, on.into())
    }

    pub fn fetch_all<'c>(self, on: impl Into<Exec<'c, DB>>) -> impl Future<Output = Result<Vec<DB::Row>>> + Send {
        DB::fetch_all(self.0, on.into())
    }

    /// The one row a query must return.
    pub async fn fetch_one<'c>(self, on: impl Into<Exec<'c, DB>>) -> Result<DB::Row> {
        self.fetch_optional(on).await?.ok_or_else(|| sqlx::Error::RowNotFound.into())
    }

    /// Whether the query returns a row at all.
    pub async fn exists<'c>(self, on: impl Into<Exec<'c, DB>>) -> Result<bool> {
        Ok(self.fetch_optional(on).await?.is_some())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sqlite_drops_casts_and_row_locks_only() {
        let sql = sql!(
            "SELECT id::text AS id, $1::text IS NULL FROM t WHERE k = ANY($2::text[]) AND x IN ",
            "(SELECT x FROM u LIMIT $3 FOR UPDATE SKIP LOCKED) FOR UPDATE OF c"
        );
        assert_eq!(
            sql.postgres,
            "SELECT id::text AS id, $1::text IS NULL FROM t WHERE k = ANY($2::text[]) AND x IN \
             (SELECT x FROM u LIMIT $3 FOR UPDATE SKIP LOCKED) FOR UPDATE OF c"
        );
        assert_eq!(
            sql.sqlite,
            "SELECT id AS id, $1 IS NULL FROM t WHERE k = ANY($2) AND x IN (SELECT x FROM u LIMIT $3)"
        );
    }
}
