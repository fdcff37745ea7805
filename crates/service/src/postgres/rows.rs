//! Mapping PostgreSQL rows to the store's records: the column lists, the row mapping, the
//! conversions of ids and sizes, and the shared reads of releases and deltas.

use std::collections::HashMap;

use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::failure::Failure;
use super::query::{query, query_opt};
use crate::store::{DeltaRecord, DeltaStatus, ImageRecord, ReleaseRecord};

/// The columns [`delta_row`] reads, in its order.
pub(super) const DELTA_COLUMNS: &str =
    "deltas.id, deltas.originates_from__image, deltas.produces__image, \
     deltas.version, deltas.status, deltas.is_stored_at__location, deltas.size, \
     deltas.error_message, deltas.owner, deltas.created_at, deltas.update_timestamp, \
     deltas.end_timestamp";

/// The columns [`image_row`] reads, in its order (`images` joined with `services`).
pub(super) const IMAGE_COLUMNS: &str = "images.id, services.service_name, images.location, \
     images.content_hash, images.image_size, images.status";

/// A database id as an id of the API.
pub(super) fn id(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// An id of the API as a database id (ids beyond `i64::MAX` match nothing).
pub(super) fn key(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A delta version of the API as a database version.
pub(super) fn version_key(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// A size in the database as a size of the API (negative sizes read as 0).
pub(super) fn size(v: Option<i64>) -> Option<u64> {
    v.map(|s| u64::try_from(s).unwrap_or(0))
}

/// A delta from the columns [`DELTA_COLUMNS`].
pub(super) fn delta_row(r: &Row) -> Result<DeltaRecord, Failure> {
    let status: String = r.try_get(4)?;
    Ok(DeltaRecord {
        id: id(r.try_get(0)?),
        source_image: id(r.try_get(1)?),
        target_image: id(r.try_get(2)?),
        version: u32::try_from(r.try_get::<_, i32>(3)?).unwrap_or(0),
        status: status
            .parse::<DeltaStatus>()
            .map_err(|_| Failure::Corrupt(format!("unknown delta status {status:?}")))?,
        location: r.try_get(5)?,
        size: size(r.try_get(6)?),
        error_message: r.try_get(7)?,
        owner: r.try_get(8)?,
        created_at: r.try_get(9)?,
        update_timestamp: r.try_get(10)?,
        end_timestamp: r.try_get(11)?,
    })
}

/// An image from the columns [`IMAGE_COLUMNS`] starting at `at`.
pub(super) fn image_row(r: &Row, at: usize) -> Result<ImageRecord, Failure> {
    Ok(ImageRecord {
        id: id(r.try_get(at)?),
        service_name: r.try_get(at + 1)?,
        location: r.try_get(at + 2)?,
        content_hash: r.try_get(at + 3)?,
        image_size: size(Some(r.try_get(at + 4)?)).unwrap_or(0),
        status: r.try_get(at + 5)?,
    })
}

/// Releases matching `filter` (an SQL condition on `releases`/`fleets`), with their images.
pub(super) async fn releases_where(
    c: &impl GenericClient,
    filter: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<ReleaseRecord>, Failure> {
    let heads = query(
        c,
        &format!(
            "SELECT releases.id, releases.fleet, fleets.name, releases.\"commit\",
                        releases.status, releases.created_at
                 FROM releases JOIN fleets ON fleets.id = releases.fleet
                 WHERE {filter} ORDER BY releases.id"
        ),
        params,
    )
    .await?;
    let ids: Vec<i64> = heads
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    let mut images: HashMap<i64, Vec<ImageRecord>> = HashMap::new();
    if !ids.is_empty() {
        let rows = query(
            c,
            &format!(
                "SELECT release_images.release, {IMAGE_COLUMNS} FROM release_images
                     JOIN images ON images.id = release_images.image
                     JOIN services ON services.id = images.service
                     WHERE release_images.release = ANY($1)
                     ORDER BY services.service_name, images.id"
            ),
            &[&ids],
        )
        .await?;
        for r in &rows {
            let release: i64 = r.try_get(0)?;
            images.entry(release).or_default().push(image_row(r, 1)?);
        }
    }
    heads
        .iter()
        .map(|r| {
            let release_id: i64 = r.try_get(0)?;
            Ok(ReleaseRecord {
                id: id(release_id),
                fleet_id: id(r.try_get(1)?),
                fleet: r.try_get(2)?,
                commit: r.try_get(3)?,
                status: r.try_get(4)?,
                created_at: r.try_get(5)?,
                images: images.remove(&release_id).unwrap_or_default(),
            })
        })
        .collect()
}

/// The newest delta row matching `filter`.
pub(super) async fn delta_where(
    c: &impl GenericClient,
    filter: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<DeltaRecord>, Failure> {
    query_opt(
        c,
        &format!("SELECT {DELTA_COLUMNS} FROM deltas WHERE {filter} ORDER BY id DESC LIMIT 1"),
        params,
    )
    .await?
    .as_ref()
    .map(delta_row)
    .transpose()
}
