//! Mapping SQLite rows to the store's records.

use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::store::{DeltaRecord, DeltaStatus, ImageRecord, ReleaseRecord};

pub(super) const DELTA_COLUMNS: &str = "id, originates_from__image, produces__image, version, status, \
     is_stored_at__location, size, error_message, owner, created_at, update_timestamp, end_timestamp";

pub(super) fn delta_row(r: &Row<'_>) -> rusqlite::Result<DeltaRecord> {
    let status: String = r.get(4)?;
    Ok(DeltaRecord {
        id: r.get(0)?,
        source_image: r.get(1)?,
        target_image: r.get(2)?,
        version: r.get(3)?,
        status: status.parse::<DeltaStatus>().map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(4, rusqlite::types::Type::Text, e.into())
        })?,
        location: r.get(5)?,
        size: r.get(6)?,
        error_message: r.get(7)?,
        owner: r.get(8)?,
        created_at: r.get(9)?,
        update_timestamp: r.get(10)?,
        end_timestamp: r.get(11)?,
    })
}

pub(super) fn delta_by_id(c: &Connection, id: u64) -> rusqlite::Result<DeltaRecord> {
    c.query_row(
        &format!("SELECT {DELTA_COLUMNS} FROM deltas WHERE id = ?1"),
        [id],
        delta_row,
    )
}

/// The newest row of `status` for the pair.
pub(super) fn newest_with_status(
    c: &Connection,
    src: u64,
    dest: u64,
    version: u32,
    status: Option<DeltaStatus>,
) -> rusqlite::Result<Option<DeltaRecord>> {
    c.query_row(
        &format!(
            "SELECT {DELTA_COLUMNS} FROM deltas
             WHERE originates_from__image = ?1 AND produces__image = ?2 AND version = ?3
               AND (?4 IS NULL OR status = ?4)
             ORDER BY id DESC LIMIT 1"
        ),
        params![src, dest, version, status.map(DeltaStatus::as_str)],
        delta_row,
    )
    .optional()
}

pub(super) const IMAGE_COLUMNS: &str =
    "images.id, services.service_name, images.location, images.content_hash, images.image_size, images.status";

pub(super) fn image_row(r: &Row<'_>) -> rusqlite::Result<ImageRecord> {
    Ok(ImageRecord {
        id: r.get(0)?,
        service_name: r.get(1)?,
        location: r.get(2)?,
        content_hash: r.get(3)?,
        image_size: r.get(4)?,
        status: r.get(5)?,
    })
}

fn release_images(c: &Connection, release: u64) -> rusqlite::Result<Vec<ImageRecord>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {IMAGE_COLUMNS} FROM release_images
         JOIN images ON images.id = release_images.image
         JOIN services ON services.id = images.service
         WHERE release_images.release = ?1
         ORDER BY services.service_name"
    ))?;
    let rows = stmt.query_map([release], image_row)?;
    rows.collect()
}

/// Releases matching `filter` (an SQL condition on `releases`/`fleets` using `?1`).
pub(super) fn releases_where(
    c: &Connection,
    filter: &str,
    arg: rusqlite::types::Value,
) -> rusqlite::Result<Vec<ReleaseRecord>> {
    let mut stmt = c.prepare(&format!(
        "SELECT releases.id, releases.fleet, fleets.name, releases.\"commit\", releases.status,
                releases.created_at
         FROM releases JOIN fleets ON fleets.id = releases.fleet
         WHERE {filter} ORDER BY releases.id"
    ))?;
    let heads = stmt
        .query_map([arg], |r| {
            Ok(ReleaseRecord {
                id: r.get(0)?,
                fleet_id: r.get(1)?,
                fleet: r.get(2)?,
                commit: r.get(3)?,
                status: r.get(4)?,
                created_at: r.get(5)?,
                images: Vec::new(),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    heads
        .into_iter()
        .map(|mut release| {
            release.images = release_images(c, release.id)?;
            Ok(release)
        })
        .collect()
}
