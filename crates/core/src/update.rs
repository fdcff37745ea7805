//! The update logic: describe an update, prepare it, wait for it.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::time::Duration;

use futures::future::{join_all, try_join_all};
use tokio::time::Instant;

use crate::retry::RetryPolicy;

use crate::{
    DeltaInfo, DeltaService, DeltaStatus, Error, Image, ImageInfo, ProducedImage, Release,
    ReleaseInfo, ReleaseRef, ReleaseSource, RemovedService, ServiceImage, ServiceUpdate,
    UpdateInfo, UpdateStatus,
};

/// The longest pause between two polls after repeated transient errors.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// How [`prepare_update`] behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrepareOptions {
    /// Wait until the update is ready (or the timeout expires).
    pub wait: bool,
    /// Give up waiting after this long, counted from the start of the call; `None` waits
    /// without limit.
    pub timeout: Option<Duration>,
    /// Pause between two checks while waiting.
    pub poll_interval: Duration,
    /// While waiting, ask again for a delta that is still pending at most this often.
    pub retrigger_interval: Duration,
}

impl Default for PrepareOptions {
    /// No wait, no timeout, a 20 s poll interval (the original's) and re-requests of
    /// pending deltas at most once a minute.
    fn default() -> Self {
        PrepareOptions {
            wait: false,
            timeout: None,
            poll_interval: Duration::from_secs(20),
            retrigger_interval: Duration::from_secs(60),
        }
    }
}

/// Describes the update from release `from` to release `to`.
///
/// Both releases must be successful and belong to the same application. The report lists
/// every service of the target release (sorted by name, letters before their upper-case
/// variants, case-insensitively otherwise), the services removed by the update, the overall
/// status and, when ready, the estimated download size.
pub async fn get_update_info<B: ReleaseSource + ?Sized>(
    from: &ReleaseRef,
    to: &ReleaseRef,
    backend: &B,
) -> Result<UpdateInfo, Error> {
    let (source, target) = futures::try_join!(resolve(from, backend), resolve(to, backend))?;
    if source.application_id != target.application_id {
        return Err(Error::DifferentApplications {
            from: source.application_id,
            to: target.application_id,
        });
    }
    let source_images: HashMap<&str, u64> = source
        .images
        .iter()
        .map(|s| (s.service_name.as_str(), s.image_id))
        .collect();
    let mut target_services: Vec<&ServiceImage> = target.images.iter().collect();
    target_services.sort_by(|a, b| service_order(&a.service_name, &b.service_name));
    let mut removed: Vec<&ServiceImage> = source
        .images
        .iter()
        .filter(|s| {
            !target
                .images
                .iter()
                .any(|t| t.service_name == s.service_name)
        })
        .collect();
    removed.sort_by(|a, b| service_order(&a.service_name, &b.service_name));

    let updates = try_join_all(target_services.iter().map(|service| {
        let from_image = source_images.get(service.service_name.as_str()).copied();
        service_update(service, from_image, backend)
    }));
    let removed = try_join_all(removed.iter().map(|service| async move {
        let image = fetch_image(service.image_id, backend).await?;
        Ok::<_, Error>(RemovedService {
            service_name: service.service_name.clone(),
            from_image: image.into(),
        })
    }));
    let (updates, removed_services) = futures::try_join!(updates, removed)?;

    let overall_status = updates
        .iter()
        .map(|(u, _)| u.status)
        .min()
        .unwrap_or(UpdateStatus::Ready);
    let estimated_total_payload_size = (overall_status == UpdateStatus::Ready)
        .then(|| updates.iter().map(|(_, payload)| payload).sum());
    Ok(UpdateInfo {
        from_release: ReleaseInfo {
            id: source.id,
            commit: source.commit,
        },
        to_release: ReleaseInfo {
            id: target.id,
            commit: target.commit,
        },
        service_updates: updates.into_iter().map(|(u, _)| u).collect(),
        overall_status,
        estimated_total_payload_size,
        removed_services,
    })
}

/// Prepares the update from `from` to `to`: asks for the missing deltas and, with
/// [`PrepareOptions::wait`], waits until the update is ready.
///
/// Returns the state read after the deltas were requested. While waiting, transient errors
/// (network errors, HTTP 429 and 5xx) are retried with back-off, and deltas still pending are
/// requested again at most every [`PrepareOptions::retrigger_interval`]. When the timeout
/// expires the error is [`Error::Timeout`], which carries the last state observed.
pub async fn prepare_update<B: ReleaseSource + DeltaService + ?Sized>(
    from: &ReleaseRef,
    to: &ReleaseRef,
    backend: &B,
    options: &PrepareOptions,
) -> Result<UpdateInfo, Error> {
    let start = Instant::now();
    let deadline = options.timeout.map(|t| start + t);
    let info = get_update_info(from, to, backend).await?;
    if info.overall_status == UpdateStatus::Ready {
        return Ok(info);
    }
    tracing::info!("preparing update");
    // Later reads use the resolved ids, like the original.
    let from = ReleaseRef::Id(info.from_release.id);
    let to = ReleaseRef::Id(info.to_release.id);
    let mut triggered = HashMap::new();
    trigger_pending(&info, backend, &mut triggered, None, !options.wait).await?;
    if !options.wait {
        return get_update_info(&from, &to, backend).await;
    }

    tracing::info!("waiting for the update to become ready");
    let mut last = info;
    let mut delay = Duration::ZERO;
    let mut failures = 0u32;
    loop {
        if let Some(deadline) = deadline {
            if Instant::now() + delay >= deadline {
                tokio::time::sleep_until(deadline).await;
                return Err(timeout(start, last));
            }
        }
        tokio::time::sleep(delay).await;
        let poll = get_update_info(&from, &to, backend);
        let result = match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, poll).await {
                Ok(result) => result,
                Err(_) => return Err(timeout(start, last)),
            },
            None => poll.await,
        };
        match result {
            Ok(info) if info.overall_status == UpdateStatus::Ready => return Ok(info),
            Ok(info) => {
                failures = 0;
                delay = options.poll_interval;
                trigger_pending(
                    &info,
                    backend,
                    &mut triggered,
                    Some(options.retrigger_interval),
                    false,
                )
                .await?;
                tracing::info!(
                    status = %info.overall_status,
                    "the update is not ready yet; will poll again in {:?}",
                    delay
                );
                last = info;
            }
            Err(e) if e.is_transient() => {
                failures = failures.saturating_add(1);
                delay = backoff(options.poll_interval, failures, e.retry_after());
                tracing::warn!(error = %e, "poll failed; retrying in {:?}", delay);
            }
            Err(e) => return Err(e),
        }
    }
}

fn timeout(start: Instant, last: UpdateInfo) -> Error {
    Error::Timeout {
        waited: start.elapsed(),
        last: Box::new(last),
    }
}

/// The delay before poll number `failures + 1` after `failures` failed polls in a row:
/// [`RetryPolicy`] from twice `interval`, capped at [`MAX_BACKOFF`] (or `interval` if that is
/// longer), never shorter than the server's `Retry-After`.
fn backoff(interval: Duration, failures: u32, retry_after: Option<Duration>) -> Duration {
    let policy = RetryPolicy {
        base: interval.saturating_mul(2),
        max_delay: MAX_BACKOFF.max(interval),
        retries: u32::MAX,
    };
    policy
        .delay(failures.max(1), retry_after)
        .unwrap_or(policy.max_delay)
}

/// Requests the deltas of all pending services that have a source image.
///
/// With `every`, a delta requested less than that long ago is skipped. With `strict`, any
/// error fails; otherwise transient errors are logged and the request is retried later.
async fn trigger_pending<B: DeltaService + ?Sized>(
    info: &UpdateInfo,
    backend: &B,
    triggered: &mut HashMap<(u64, u64), Instant>,
    every: Option<Duration>,
    strict: bool,
) -> Result<(), Error> {
    let now = Instant::now();
    let pairs: Vec<(u64, u64)> = info
        .service_updates
        .iter()
        .filter(|u| u.status == UpdateStatus::Pending)
        .filter_map(|u| u.from_image.as_ref().map(|f| (f.id, u.to_image.id)))
        .filter(|pair| match (every, triggered.get(pair)) {
            (Some(every), Some(at)) => now.duration_since(*at) >= every,
            _ => true,
        })
        .collect();
    let results = join_all(pairs.iter().map(|&(src, dest)| async move {
        tracing::info!("triggering delta between images {src} and {dest}");
        backend.request_delta(src, dest).await
    }))
    .await;
    for (pair, result) in pairs.into_iter().zip(results) {
        match result {
            Ok(answer) => {
                tracing::debug!(src = pair.0, dest = pair.1, ?answer, "delta requested");
                triggered.insert(pair, now);
            }
            Err(e) if !strict && e.is_transient() => {
                tracing::warn!(error = %e, src = pair.0, dest = pair.1, "delta request failed; will retry");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn resolve<B: ReleaseSource + ?Sized>(
    release: &ReleaseRef,
    backend: &B,
) -> Result<Release, Error> {
    match release {
        ReleaseRef::Id(id) => {
            backend
                .release_by_id(*id)
                .await?
                .ok_or_else(|| Error::ReleaseNotFound {
                    release: id.to_string(),
                })
        }
        ReleaseRef::Commit(prefix) => {
            let mut found = backend.releases_by_commit(prefix).await?;
            match (found.pop(), found.is_empty()) {
                (Some(release), true) => Ok(release),
                (Some(_), false) => Err(Error::AmbiguousRelease {
                    prefix: prefix.clone(),
                }),
                (None, _) => Err(Error::ReleaseNotFound {
                    release: prefix.clone(),
                }),
            }
        }
    }
}

async fn fetch_image<B: ReleaseSource + ?Sized>(id: u64, backend: &B) -> Result<Image, Error> {
    backend.image(id).await?.ok_or(Error::ImageNotFound { id })
}

/// One service update and the bytes it costs.
async fn service_update<B: ReleaseSource + ?Sized>(
    service: &ServiceImage,
    from_image: Option<u64>,
    backend: &B,
) -> Result<(ServiceUpdate, u64), Error> {
    let target_id = service.image_id;
    let (status, from, to, delta, payload) = match from_image {
        None => {
            // A new service is downloaded whole; deltas are never made from scratch.
            let to = fetch_image(target_id, backend).await?;
            let size = to.size;
            (UpdateStatus::Ready, None, to, None, size)
        }
        Some(source_id) if source_id == target_id => {
            let to = fetch_image(target_id, backend).await?;
            (UpdateStatus::Ready, Some(to.clone()), to, None, 0)
        }
        Some(source_id) => {
            let (to, from, delta) = futures::try_join!(
                fetch_image(target_id, backend),
                fetch_image(source_id, backend),
                backend.latest_delta(source_id, target_id),
            )?;
            let same_content = from.content_hash.is_some() && from.content_hash == to.content_hash;
            let delta_status = delta.as_ref().map(|d| d.status);
            let status = if same_content || delta_status == Some(DeltaStatus::Success) {
                UpdateStatus::Ready
            } else if delta_status == Some(DeltaStatus::Running) {
                UpdateStatus::Preparing
            } else {
                UpdateStatus::Pending
            };
            // Only a successful delta is reported.
            let delta = delta.filter(|d| d.status == DeltaStatus::Success);
            let payload = match (&delta, same_content) {
                (_, true) => 0,
                (Some(d), false) => d.size,
                (None, false) => to.size,
            };
            (status, Some(from), to, delta, payload)
        }
    };
    let to = ImageInfo::from(to);
    Ok((
        ServiceUpdate {
            service_name: service.service_name.clone(),
            status,
            from_image: from.map(ImageInfo::from),
            to_image: ProducedImage {
                id: to.id,
                location: to.location,
                content_hash: to.content_hash,
                image_size: to.image_size,
                delta: delta.map(DeltaInfo::from),
            },
        },
        payload,
    ))
}

/// A deterministic stand-in for the original's `localeCompare` order: case-insensitive,
/// and for names equal but for case, lower-case letters first.
fn service_order(a: &str, b: &str) -> Ordering {
    let swap = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_lowercase() {
                    c.to_uppercase().next().unwrap_or(c)
                } else {
                    c.to_lowercase().next().unwrap_or(c)
                }
            })
            .collect()
    };
    a.to_lowercase()
        .cmp(&b.to_lowercase())
        .then_with(|| swap(a).cmp(&swap(b)))
}

#[cfg(test)]
mod tests;
