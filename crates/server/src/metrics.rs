//! Prometheus counters, rendered by hand in the text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bru_delta::{NoProgress, Progress};
use bru_service::{BuildProgress, DeltaStatus, ImageRecord, Store, DELTA_VERSION};

/// The server's counters.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    requests: Mutex<BTreeMap<u16, u64>>,
    started: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    build_millis: AtomicU64,
    bytes_saved: AtomicU64,
    pending: Mutex<Vec<Pending>>,
}

#[derive(Debug)]
struct Pending {
    src: u64,
    dest: u64,
    full_size: u64,
    since: Instant,
}

/// Counts builds as the builder starts them (the builder's progress hook).
#[derive(Debug)]
pub(crate) struct BuildHook(pub(crate) Arc<Metrics>);

impl BuildProgress for BuildHook {
    fn start(&self, src: &ImageRecord, dest: &ImageRecord) -> Arc<dyn Progress> {
        self.0.started.fetch_add(1, Ordering::Relaxed);
        lock(&self.0.pending).push(Pending {
            src: src.id,
            dest: dest.id,
            full_size: dest.image_size,
            since: Instant::now(),
        });
        Arc::new(NoProgress)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Metrics {
    /// Counts one answer of the delta endpoint.
    pub(crate) fn request(&self, status: u16) {
        *lock(&self.requests).entry(status).or_default() += 1;
    }

    /// Looks up the builds started here that have not ended yet and counts those that did.
    pub(crate) async fn settle(&self, store: &dyn Store) {
        let pairs: Vec<(u64, u64)> = lock(&self.pending)
            .iter()
            .map(|p| (p.src, p.dest))
            .collect();
        for (src, dest) in pairs {
            let row = match store.newest_delta(src, dest, DELTA_VERSION).await {
                Ok(Some(row)) if row.status != DeltaStatus::Running => row,
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read a delta row for the metrics");
                    continue;
                }
            };
            let mut pending = lock(&self.pending);
            let Some(i) = pending.iter().position(|p| (p.src, p.dest) == (src, dest)) else {
                continue;
            };
            let done = pending.swap_remove(i);
            drop(pending);
            let millis = u64::try_from(done.since.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.build_millis.fetch_add(millis, Ordering::Relaxed);
            if row.status == DeltaStatus::Success {
                self.succeeded.fetch_add(1, Ordering::Relaxed);
                let saved = done
                    .full_size
                    .saturating_sub(row.size.unwrap_or(done.full_size));
                self.bytes_saved.fetch_add(saved, Ordering::Relaxed);
            } else {
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The counters in the Prometheus text format.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        };
        counter(
            &mut out,
            "bru_delta_requests_total",
            "Answers of /api/v3/delta by HTTP status.",
        );
        for (status, n) in lock(&self.requests).iter() {
            let _ = writeln!(out, "bru_delta_requests_total{{status=\"{status}\"}} {n}");
        }
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        for (name, help, value) in [
            (
                "bru_delta_builds_started_total",
                "Delta builds started.",
                load(&self.started),
            ),
            (
                "bru_delta_builds_succeeded_total",
                "Delta builds that succeeded.",
                load(&self.succeeded),
            ),
            (
                "bru_delta_builds_failed_total",
                "Delta builds that failed.",
                load(&self.failed),
            ),
            (
                "bru_delta_bytes_saved_total",
                "Sum over successful builds of the full image size minus the delta size.",
                load(&self.bytes_saved),
            ),
        ] {
            counter(&mut out, name, help);
            let _ = writeln!(out, "{name} {value}");
        }
        counter(
            &mut out,
            "bru_delta_build_seconds_total",
            "Seconds spent in delta builds that ended.",
        );
        let _ = writeln!(
            out,
            "bru_delta_build_seconds_total {:.3}",
            load(&self.build_millis) as f64 / 1000.0
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_by_status() {
        let m = Metrics::default();
        m.request(504);
        m.request(504);
        m.request(200);
        let text = m.render();
        assert!(
            text.contains("bru_delta_requests_total{status=\"504\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("bru_delta_requests_total{status=\"200\"} 1\n"),
            "{text}"
        );
        assert!(text.contains(
            "# TYPE bru_delta_builds_started_total counter\nbru_delta_builds_started_total 0\n"
        ));
        assert!(text.contains("bru_delta_build_seconds_total 0.000\n"));
    }
}
