//! Prometheus counters, rendered by hand in the text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bru_delta::{NoProgress, Progress};
use bru_service::{BuildEnd, BuildProgress, ImageRecord};

/// The server's counters.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    requests: Mutex<BTreeMap<u16, u64>>,
    started: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    interrupted: AtomicU64,
    build_millis: AtomicU64,
    bytes_saved: AtomicU64,
}

/// Counts builds as the builder starts and ends them (the builder's progress hook).
#[derive(Debug)]
pub(crate) struct BuildHook(pub(crate) Arc<Metrics>);

impl BuildProgress for BuildHook {
    fn start(&self, src: &ImageRecord, dest: &ImageRecord) -> Arc<dyn Progress> {
        let _ = (src, dest);
        self.0.started.fetch_add(1, Ordering::Relaxed);
        Arc::new(NoProgress)
    }

    fn finish(&self, _src: &ImageRecord, dest: &ImageRecord, end: BuildEnd, took: Duration) {
        let m = &self.0;
        let millis = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
        m.build_millis.fetch_add(millis, Ordering::Relaxed);
        match end {
            BuildEnd::Succeeded { size } => {
                m.succeeded.fetch_add(1, Ordering::Relaxed);
                let saved = dest.image_size.saturating_sub(size);
                m.bytes_saved.fetch_add(saved, Ordering::Relaxed);
            }
            BuildEnd::Failed => {
                m.failed.fetch_add(1, Ordering::Relaxed);
            }
            BuildEnd::Interrupted => {
                m.interrupted.fetch_add(1, Ordering::Relaxed);
            }
        }
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
                "bru_delta_builds_interrupted_total",
                "Delta builds given up for a transient reason (not recorded as failed).",
                load(&self.interrupted),
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

    #[test]
    fn build_ends_are_counted_from_the_hook() {
        let m = Arc::new(Metrics::default());
        let hook = BuildHook(Arc::clone(&m));
        let image = |id, size| ImageRecord {
            id,
            service_name: "s".into(),
            location: "r/x@sha256:00".into(),
            content_hash: "sha256:00".into(),
            image_size: size,
            status: "success".into(),
        };
        let (src, dest) = (image(1, 1000), image(2, 1000));
        for end in [
            BuildEnd::Succeeded { size: 300 },
            BuildEnd::Failed,
            BuildEnd::Interrupted,
        ] {
            hook.start(&src, &dest);
            hook.finish(&src, &dest, end, Duration::from_millis(1500));
        }
        let text = m.render();
        for line in [
            "bru_delta_builds_started_total 3\n",
            "bru_delta_builds_succeeded_total 1\n",
            "bru_delta_builds_failed_total 1\n",
            "bru_delta_builds_interrupted_total 1\n",
            "bru_delta_bytes_saved_total 700\n",
            "bru_delta_build_seconds_total 4.500\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }
}
