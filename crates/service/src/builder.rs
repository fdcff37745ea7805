//! Building one claimed delta: open both images, run the delta engine into the output
//! location, heartbeat the row while working, record the outcome.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bru_core::retry::RetryPolicy;
use bru_delta::{Bandwidth, CreateOptions, NoProgress, Progress};
use bru_oci::{open_sink, open_source, ImageReference, RegistryOptions, RegistryReference};
use sha2::{Digest as _, Sha256};
use tokio::time::Instant;

use crate::store::{DeltaRecord, ImageRecord, Outcome, Store};
use crate::ServiceError;

/// Recording a build's outcome: 6 retries from 0.5 s, at most 5 s apart (about 15 s in
/// all, the time a database takes to restart).
const RECORD_RETRY: RetryPolicy = RetryPolicy {
    base: Duration::from_millis(500),
    max_delay: Duration::from_secs(5),
    retries: 6,
};

/// How deltas are built and where they go.
#[derive(Debug, Clone)]
pub struct BuilderConfig {
    /// How to reach registries (plain-HTTP hosts, credentials) for reading images and
    /// pushing deltas.
    pub registry: RegistryOptions,
    /// Where deltas of images that are not on a registry (OCI layouts, docker archives) are
    /// written: one OCI layout per delta, `<delta_dir>/delta-<16 hex>`.
    pub delta_dir: PathBuf,
    /// Scratch space for decompressed layers (default: the system temporary directory).
    pub workdir: Option<PathBuf>,
    /// How often a running build bumps its row's heartbeat (default 30 s).
    pub heartbeat_interval: Duration,
    /// The longest a build may take, retries included (default 2 h); past it the build is
    /// given up as a transient failure.
    pub build_timeout: Duration,
    /// A build that reports no progress for this long (default 10 min) stops bumping its
    /// heartbeat, so that another instance takes it over once it is stale, and is given up
    /// here. Registry reads time out long before (see [`bru_oci::Timeouts`]); this catches
    /// whatever else hangs.
    pub stall_timeout: Duration,
    /// How transient failures of a build are retried before the row is given up
    /// (default [`RetryPolicy::BUILD`]).
    pub retry: RetryPolicy,
    /// gzip level of the delta layers (default 9: deltas are built once, pulled often).
    pub gzip_level: u32,
    /// Download bandwidth of the devices deltas are built for, unless their fleet has its
    /// own (see [`Store::set_fleet_bandwidth`]); `None` builds the fewest bytes. Default:
    /// 1 MB/s.
    pub device_bandwidth: Option<Bandwidth>,
    /// Where the progress of each build goes (default: nowhere).
    pub progress: Option<Arc<dyn BuildProgress>>,
}

/// Hands out a progress receiver for each build (e.g. one terminal bar per delta) and
/// hears how each ended.
pub trait BuildProgress: Send + Sync + std::fmt::Debug {
    /// Called when the build of the delta from `src` to `dest` starts.
    fn start(&self, src: &ImageRecord, dest: &ImageRecord) -> Arc<dyn Progress>;

    /// Called once when that build has ended, after its outcome is recorded (or, for
    /// [`BuildEnd::Interrupted`], given up), with the time since [`BuildProgress::start`].
    fn finish(&self, src: &ImageRecord, dest: &ImageRecord, end: BuildEnd, took: Duration) {
        let _ = (src, dest, end, took);
    }
}

/// How a build ended, for [`BuildProgress::finish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildEnd {
    /// The delta exists; a device downloads `size` bytes for it.
    Succeeded {
        /// Compressed bytes of the delta.
        size: u64,
    },
    /// The build failed for good and is recorded as failed.
    Failed,
    /// The build was given up for a transient reason; nothing was recorded.
    Interrupted,
}

impl BuilderConfig {
    /// Defaults with OCI-layout deltas under `delta_dir`.
    pub fn new(delta_dir: impl Into<PathBuf>) -> Self {
        BuilderConfig {
            registry: RegistryOptions::default(),
            delta_dir: delta_dir.into(),
            workdir: None,
            heartbeat_interval: Duration::from_secs(30),
            build_timeout: Duration::from_secs(2 * 60 * 60),
            stall_timeout: Duration::from_secs(10 * 60),
            retry: RetryPolicy::BUILD,
            gzip_level: 9,
            device_bandwidth: Some(Bandwidth::default()),
            progress: None,
        }
    }
}

/// The tag of the delta from the image with manifest digest `src` to the one with `dest`,
/// built for devices at the default bandwidth (1 MB/s): `delta-` and the first 16 hex
/// digits of sha256 of `"<src> <dest> v3"`.
pub fn delta_tag(src: &str, dest: &str) -> String {
    delta_tag_for(src, dest, Some(Bandwidth::default()))
}

/// The tag of the delta from `src` to `dest` built for `bandwidth` (`None`: fewest bytes).
/// Deltas for other bandwidths differ in their bytes, so they get other tags: the hash
/// input gains ` <bytes per second>` or ` fewest-bytes`. The default bandwidth keeps
/// [`delta_tag`]'s form, so existing deltas keep their names.
pub fn delta_tag_for(src: &str, dest: &str, bandwidth: Option<Bandwidth>) -> String {
    let input = match bandwidth {
        Some(b) if b == Bandwidth::default() => format!("{src} {dest} v3"),
        Some(b) => format!("{src} {dest} v3 {}", b.bytes_per_second()),
        None => format!("{src} {dest} v3 fewest-bytes"),
    };
    let hash = Sha256::digest(input.as_bytes());
    format!("delta-{}", &hex::encode(hash)[..16])
}

/// Builds deltas for claimed rows.
#[derive(Debug)]
pub struct DeltaBuilder {
    config: BuilderConfig,
    started: AtomicU64,
}

impl DeltaBuilder {
    /// A builder with this configuration.
    pub fn new(config: BuilderConfig) -> Self {
        DeltaBuilder {
            config,
            started: AtomicU64::new(0),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &BuilderConfig {
        &self.config
    }

    /// How many builds this builder has started.
    pub fn builds_started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// Where the delta from `src` to `dest` built for `bandwidth` goes, and the location
    /// recorded for it.
    ///
    /// Registry images: the destination repository on the destination's registry, tagged
    /// [`delta_tag_for`]; the location is `HOST/REPO:TAG` (what a device pulls). Other
    /// images: an OCI layout under [`BuilderConfig::delta_dir`].
    pub fn output_for(
        &self,
        src: &ImageRecord,
        dest: &ImageRecord,
        bandwidth: Option<Bandwidth>,
    ) -> Result<(ImageReference, String), ServiceError> {
        let tag = delta_tag_for(&src.content_hash, &dest.content_hash, bandwidth);
        let dest_ref = parse(dest)?;
        Ok(match dest_ref {
            ImageReference::Registry(r) => {
                let out = RegistryReference {
                    registry: r.registry,
                    repository: r.repository,
                    tag: Some(tag),
                    digest: None,
                };
                let location = out.to_string();
                (ImageReference::Registry(out), location)
            }
            _ => {
                let out = ImageReference::OciLayout {
                    path: self.config.delta_dir.join(&tag),
                    tag: Some(tag),
                };
                let location = out.to_string();
                (out, location)
            }
        })
    }

    /// Builds the delta from `src` to `dest` and returns its location and size (what a
    /// device downloads). Registry images are read by the digest recorded at import.
    pub async fn build(
        &self,
        src: &ImageRecord,
        dest: &ImageRecord,
        device_bandwidth: Option<Bandwidth>,
        progress: Arc<dyn Progress>,
    ) -> Result<(String, u64), ServiceError> {
        self.started.fetch_add(1, Ordering::Relaxed);
        let (out, location) = self.output_for(src, dest, device_bandwidth)?;
        let opts = &self.config.registry;
        let source = open_pinned(src, opts).await?;
        let target = open_pinned(dest, opts).await?;
        if let ImageReference::OciLayout { path, .. } = &out {
            std::fs::create_dir_all(path).map_err(ServiceError::io(path))?;
        }
        let sink = open_sink(&out, opts)
            .await
            .map_err(|source| ServiceError::Image {
                reference: location.clone(),
                source,
            })?;
        let create = CreateOptions {
            workdir: self.config.workdir.clone(),
            gzip_level: self.config.gzip_level,
            device_bandwidth,
            ..CreateOptions::default()
        };
        tracing::info!(src = src.id, dest = dest.id, %location, device_bandwidth = ?device_bandwidth.map(|b| b.to_string()), "building delta");
        let info = bru_delta::create(&*source, &*target, &*sink, &create, progress)
            .await
            .map_err(ServiceError::Build)?;
        tracing::info!(
            src = src.id,
            dest = dest.id,
            %location,
            size = info.download_bytes,
            full = dest.image_size,
            "delta built"
        );
        Ok((location, info.download_bytes))
    }

    /// Runs the build of a row claimed by `owner`: heartbeats it while the build makes
    /// progress, retries transient failures ([`BuilderConfig::retry`]) within
    /// [`BuilderConfig::build_timeout`], and records the outcome.
    ///
    /// A permanent failure is recorded as a failed delta. A transient one that outlasts
    /// the retries (or the deadline, or a stall) is *not* recorded: the row is given up
    /// with [`Store::abandon_delta`] and the error is returned, so that the next request
    /// builds again.
    pub async fn run(
        &self,
        store: &dyn Store,
        row: &DeltaRecord,
        owner: &str,
    ) -> Result<DeltaRecord, ServiceError> {
        if !store.heartbeat(row.id, owner).await? {
            return Err(ServiceError::LostClaim { id: row.id });
        }
        let activity = Arc::new(Activity::new());
        let started = Instant::now();
        let pair = std::sync::Mutex::new(None);
        let work = async {
            let src = image(store, row.source_image).await?;
            let dest = image(store, row.target_image).await?;
            *pair.lock().unwrap_or_else(|p| p.into_inner()) = Some((src.clone(), dest.clone()));
            let bandwidth = match store.image_fleet_bandwidth(dest.id).await? {
                Some(b) => Some(b),
                None => self.config.device_bandwidth,
            };
            let progress: Arc<dyn Progress> = Arc::new(Watched {
                inner: match &self.config.progress {
                    Some(p) => p.start(&src, &dest),
                    None => Arc::new(NoProgress),
                },
                activity: Arc::clone(&activity),
            });
            // The same contents under other image ids: reuse their delta when it is where
            // this pair's would go (same repository, same tag: same contents, same
            // bandwidth).
            let (_, location) = self.output_for(&src, &dest, bandwidth)?;
            let same = store
                .deltas_by_content(&src.content_hash, &dest.content_hash, row.version)
                .await?;
            if let Some(done) = same
                .into_iter()
                .find(|d| d.location.as_deref() == Some(location.as_str()))
            {
                tracing::info!(delta = row.id, reused = done.id, %location, "same contents: reusing a delta");
                return Ok((location, done.size.unwrap_or(0)));
            }
            let mut retry = 0;
            loop {
                activity.touch();
                let e = match self
                    .build(&src, &dest, bandwidth, Arc::clone(&progress))
                    .await
                {
                    Ok(done) => return Ok(done),
                    Err(e) if e.is_transient() => e,
                    Err(e) => return Err(e),
                };
                retry += 1;
                let Some(delay) = self.config.retry.delay(retry, None) else {
                    return Err(e);
                };
                tracing::warn!(delta = row.id, error = %chain(&e), retry, ?delay, "transient build failure; retrying");
                // Waiting to retry is progress: the heartbeat goes on.
                let mut waited = Duration::ZERO;
                while waited < delay {
                    let step = (delay - waited).min(self.config.heartbeat_interval);
                    tokio::time::sleep(step).await;
                    waited += step;
                    activity.touch();
                }
            }
        };
        let deadline = self.config.build_timeout;
        let work = async {
            tokio::time::timeout(deadline, work)
                .await
                .unwrap_or(Err(ServiceError::BuildTimedOut { after: deadline }))
        };
        let heartbeat = async {
            let mut tick = tokio::time::interval(self.config.heartbeat_interval);
            tick.tick().await;
            loop {
                tick.tick().await;
                let idle = activity.idle();
                if idle >= self.config.stall_timeout {
                    return ServiceError::Stalled { idle };
                }
                match store.heartbeat(row.id, owner).await {
                    Ok(true) => {}
                    Ok(false) => return ServiceError::LostClaim { id: row.id },
                    Err(e) => tracing::warn!(delta = row.id, error = %e, "heartbeat failed"),
                }
            }
        };
        let result = tokio::select! {
            result = work => result,
            stopped = heartbeat => match stopped {
                lost @ ServiceError::LostClaim { .. } => return Err(lost),
                stalled => Err(stalled),
            },
        };
        let finished = |end: BuildEnd| {
            let pair = pair.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let (Some(hook), Some((src, dest))) = (&self.config.progress, pair) {
                hook.finish(&src, &dest, end, started.elapsed());
            }
        };
        let (outcome, end) = match result {
            Ok((location, size)) => (
                Outcome::Success { location, size },
                BuildEnd::Succeeded { size },
            ),
            Err(e) if e.is_transient() => {
                tracing::warn!(delta = row.id, error = %chain(&e), "delta build interrupted; not recorded as failed");
                if let Err(abandon) = store.abandon_delta(row.id, owner).await {
                    // The heartbeat has stopped: the row goes stale and is taken over.
                    tracing::warn!(delta = row.id, error = %abandon, "cannot give up the row");
                }
                finished(BuildEnd::Interrupted);
                return Err(e);
            }
            Err(e) => {
                tracing::warn!(delta = row.id, error = %chain(&e), "delta build failed");
                (Outcome::Failed { error: chain(&e) }, BuildEnd::Failed)
            }
        };
        // The outcome is worth a few tries: a database restarting now must not cost the
        // build (the row stays ours meanwhile; nobody takes over a fresh heartbeat).
        let mut retry = 0;
        let done = loop {
            match store.finish_delta(row.id, owner, outcome.clone()).await {
                Err(e) if e.is_transient() => {
                    retry += 1;
                    let Some(delay) = RECORD_RETRY.delay(retry, None) else {
                        return Err(e);
                    };
                    tracing::warn!(delta = row.id, error = %chain(&e), retry, "cannot record the outcome; retrying");
                    tokio::time::sleep(delay).await;
                }
                done => break done?,
            }
        };
        finished(end);
        Ok(done)
    }
}

/// When a build last showed a sign of life.
#[derive(Debug)]
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(now, Ordering::Relaxed);
    }

    fn idle(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// Passes progress events on and counts each as a sign of life.
struct Watched {
    inner: Arc<dyn Progress>,
    activity: Arc<Activity>,
}

impl Progress for Watched {
    fn event(&self, event: bru_delta::Event) {
        self.activity.touch();
        self.inner.event(event);
    }
}

async fn image(store: &dyn Store, id: u64) -> Result<ImageRecord, ServiceError> {
    store
        .image(id)
        .await?
        .ok_or(ServiceError::UnknownImage { id })
}

fn parse(image: &ImageRecord) -> Result<ImageReference, ServiceError> {
    image
        .location
        .parse()
        .map_err(|source| ServiceError::InvalidReference {
            service: image.service_name.clone(),
            source,
        })
}

/// Opens an image and checks that it is still the one recorded (same manifest digest).
async fn open_pinned(
    image: &ImageRecord,
    opts: &RegistryOptions,
) -> Result<Box<dyn bru_oci::ImageSource>, ServiceError> {
    let mut reference = parse(image)?;
    let err = |source| ServiceError::Image {
        reference: image.location.clone(),
        source,
    };
    if let ImageReference::Registry(r) = &mut reference {
        r.digest = Some(image.content_hash.parse().map_err(err)?);
    }
    let source = open_source(&reference, opts).await.map_err(err)?;
    let pulled = source.image().await.map_err(err)?;
    let expected: bru_oci::Digest = image.content_hash.parse().map_err(err)?;
    if pulled.manifest_digest != expected {
        return Err(err(bru_oci::OciError::DigestMismatch {
            expected,
            actual: pulled.manifest_digest,
        }));
    }
    Ok(source)
}

/// An error and its causes, joined with `: `.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_tags_differ_by_contents_and_bandwidth_and_keep_the_default_form() {
        let (a, b) = ("sha256:aa", "sha256:bb");
        let default = delta_tag(a, b);
        assert_eq!(default, delta_tag_for(a, b, Some(Bandwidth::default())));
        assert_eq!(default.len(), "delta-".len() + 16);
        let fast = delta_tag_for(a, b, Some("100".parse().unwrap()));
        let fewest = delta_tag_for(a, b, None);
        let swapped = delta_tag(b, a);
        let all: std::collections::HashSet<_> = [&default, &fast, &fewest, &swapped].into();
        assert_eq!(all.len(), 4);
    }
}
