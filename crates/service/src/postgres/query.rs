//! Running statements on PostgreSQL: each prepared once per connection, plus the SQL
//! pieces statements share (the database's clock, advisory lock keys).

use deadpool_postgres::GenericClient;
use sha2::{Digest as _, Sha256};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

/// The database's clock in milliseconds since the Unix epoch (the transaction's start).
pub(super) const NOW: &str = "(extract(epoch FROM now()) * 1000)::bigint";

/// A 64-bit advisory lock key for `what` (a collision only serialises unrelated work).
pub(super) fn lock_key(what: &str) -> i64 {
    let hash = Sha256::digest(what.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&hash[..8]);
    i64::from_be_bytes(bytes)
}

/// Runs `sql` as a statement prepared once per connection.
pub(super) async fn query(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, tokio_postgres::Error> {
    let statement = c.prepare_cached(sql).await?;
    c.query(&statement, params).await
}

/// [`query`] for at most one row.
pub(super) async fn query_opt(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<Row>, tokio_postgres::Error> {
    let statement = c.prepare_cached(sql).await?;
    c.query_opt(&statement, params).await
}

/// [`query`] for exactly one row.
pub(super) async fn query_one(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Row, tokio_postgres::Error> {
    let statement = c.prepare_cached(sql).await?;
    c.query_one(&statement, params).await
}

/// [`query`] for the number of rows changed.
pub(super) async fn execute(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, tokio_postgres::Error> {
    let statement = c.prepare_cached(sql).await?;
    c.execute(&statement, params).await
}
