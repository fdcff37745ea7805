use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use super::*;
use crate::{Delta, DeltaStatus, DeltaTrigger};

/// An in-memory backend. `on_poll` runs before every `latest_delta` call and may change the
/// delta table or make the call fail.
#[derive(Default)]
struct Mem {
    releases: Vec<Release>,
    images: HashMap<u64, Image>,
    deltas: Mutex<HashMap<(u64, u64), Delta>>,
    triggers: Mutex<Vec<(u64, u64)>>,
    /// Errors returned by the next `latest_delta` calls once a delta was requested (popped
    /// from the end).
    delta_errors: Mutex<Vec<Error>>,
    /// Delta status set by a trigger.
    trigger_sets: Option<&'static str>,
    /// After this many delta reads following a trigger, the delta becomes `success`.
    succeed_after_reads: Option<usize>,
    reads: Mutex<usize>,
}

#[async_trait]
impl ReleaseSource for Mem {
    async fn release_by_id(&self, id: u64) -> Result<Option<Release>, Error> {
        Ok(self.releases.iter().find(|r| r.id == id).cloned())
    }
    async fn releases_by_commit(&self, prefix: &str) -> Result<Vec<Release>, Error> {
        Ok(self
            .releases
            .iter()
            .filter(|r| r.commit.starts_with(prefix))
            .cloned()
            .collect())
    }
    async fn image(&self, id: u64) -> Result<Option<Image>, Error> {
        Ok(self.images.get(&id).cloned())
    }
    async fn latest_delta(&self, src: u64, dest: u64) -> Result<Option<Delta>, Error> {
        if !self.triggers.lock().unwrap().is_empty() {
            if let Some(e) = self.delta_errors.lock().unwrap().pop() {
                return Err(e);
            }
        }
        let mut deltas = self.deltas.lock().unwrap();
        if !self.triggers.lock().unwrap().is_empty() {
            let mut reads = self.reads.lock().unwrap();
            *reads += 1;
            if self.succeed_after_reads.is_some_and(|n| *reads >= n) {
                if let Some(d) = deltas.get_mut(&(src, dest)) {
                    d.status = DeltaStatus::Success;
                }
            }
        }
        Ok(deltas.get(&(src, dest)).cloned())
    }
}

#[async_trait]
impl DeltaService for Mem {
    async fn request_delta(&self, src: u64, dest: u64) -> Result<DeltaTrigger, Error> {
        self.triggers.lock().unwrap().push((src, dest));
        if let Some(status) = self.trigger_sets {
            self.deltas
                .lock()
                .unwrap()
                .insert((src, dest), delta(src * 10 + dest, status, 500));
        }
        Ok(DeltaTrigger::Building)
    }
}

fn image(id: u64, hash: Option<&str>, size: u64) -> Image {
    Image {
        id,
        location: format!("registry2.example.com/v2/{id}"),
        content_hash: hash.map(str::to_owned),
        size,
    }
}

fn delta(id: u64, status: &str, size: u64) -> Delta {
    Delta {
        id,
        status: status.parse().unwrap(),
        version: 3,
        location: Some(format!("registry2.example.com/v2/delta-{id}")),
        size,
    }
}

fn release(id: u64, commit: &str, app: u64, services: &[(&str, u64)]) -> Release {
    Release {
        id,
        commit: commit.into(),
        application_id: app,
        images: services
            .iter()
            .map(|(name, image_id)| ServiceImage {
                service_name: (*name).into(),
                image_id: *image_id,
            })
            .collect(),
    }
}

/// Release 1 (app 7): main=11, old=12, same=13, twin=14.
/// Release 2 (app 7): main=21, new=22, same=13, twin=24 (same content as 14).
fn two_releases() -> Mem {
    let mut mem = Mem {
        releases: vec![
            release(
                1,
                "aaaa1111",
                7,
                &[("main", 11), ("old", 12), ("same", 13), ("twin", 14)],
            ),
            release(
                2,
                "bbbb2222",
                7,
                &[("twin", 24), ("main", 21), ("new", 22), ("same", 13)],
            ),
            release(3, "bbbb3333", 8, &[]),
        ],
        ..Mem::default()
    };
    for img in [
        image(11, Some("sha256:11"), 1000),
        image(12, None, 2000),
        image(13, Some("sha256:13"), 3000),
        image(14, Some("sha256:twin"), 4000),
        image(21, Some("sha256:21"), 5000),
        image(22, None, 6000),
        image(24, Some("sha256:twin"), 7000),
    ] {
        mem.images.insert(img.id, img);
    }
    mem
}

const ONE: ReleaseRef = ReleaseRef::Id(1);
const TWO: ReleaseRef = ReleaseRef::Id(2);

#[tokio::test]
async fn report_classifies_every_service() {
    let mem = two_releases();
    mem.deltas
        .lock()
        .unwrap()
        .insert((11, 21), delta(99, "success", 123));
    let info = get_update_info(&ONE, &TWO, &mem).await.unwrap();
    let names: Vec<_> = info
        .service_updates
        .iter()
        .map(|u| u.service_name.as_str())
        .collect();
    assert_eq!(names, ["main", "new", "same", "twin"]);
    let by_name: HashMap<_, _> = info
        .service_updates
        .iter()
        .map(|u| (u.service_name.as_str(), u))
        .collect();
    assert_eq!(by_name["main"].to_image.delta.as_ref().unwrap().size, 123);
    assert!(by_name["new"].from_image.is_none());
    assert_eq!(by_name["same"].status, UpdateStatus::Ready);
    assert_eq!(by_name["twin"].status, UpdateStatus::Ready);
    assert_eq!(info.overall_status, UpdateStatus::Ready);
    // delta 123 + new image 6000 + identical id 0 + identical content 0
    assert_eq!(info.estimated_total_payload_size, Some(6123));
    assert_eq!(info.removed_services.len(), 1);
    assert_eq!(info.removed_services[0].service_name, "old");
    assert_eq!(info.removed_services[0].from_image.id, 12);
    // Identical images are never compared through a delta.
    assert!(mem.triggers.lock().unwrap().is_empty());
}

#[tokio::test]
async fn status_is_the_minimum_and_size_only_when_ready() {
    let mem = two_releases();
    let info = get_update_info(&ONE, &TWO, &mem).await.unwrap();
    assert_eq!(info.service_updates[0].status, UpdateStatus::Pending);
    assert_eq!(info.overall_status, UpdateStatus::Pending);
    assert_eq!(info.estimated_total_payload_size, None);

    mem.deltas
        .lock()
        .unwrap()
        .insert((11, 21), delta(99, "running", 123));
    let info = get_update_info(&ONE, &TWO, &mem).await.unwrap();
    assert_eq!(info.service_updates[0].status, UpdateStatus::Preparing);
    assert!(info.service_updates[0].to_image.delta.is_none());
    assert_eq!(info.overall_status, UpdateStatus::Preparing);

    mem.deltas
        .lock()
        .unwrap()
        .insert((11, 21), delta(99, "failed", 123));
    let info = get_update_info(&ONE, &TWO, &mem).await.unwrap();
    assert_eq!(info.overall_status, UpdateStatus::Pending);
}

#[tokio::test]
async fn releases_by_commit_and_errors() {
    let mem = two_releases();
    let info = get_update_info(
        &ReleaseRef::Commit("aaaa".into()),
        &ReleaseRef::Commit("bbbb2".into()),
        &mem,
    )
    .await
    .unwrap();
    assert_eq!(info.from_release.commit, "aaaa1111");
    assert_eq!(info.to_release.id, 2);

    let err = get_update_info(&ONE, &ReleaseRef::Commit("bbbb".into()), &mem)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "Release is ambiguous: There are multiple releases matching the release hash 'bbbb'"
    );
    let err = get_update_info(&ONE, &ReleaseRef::Commit("cccc".into()), &mem)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "Release not found: cccc");
    let err = get_update_info(&ReleaseRef::Id(900813), &TWO, &mem)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "Release not found: 900813");
    let err = get_update_info(&ONE, &ReleaseRef::Id(3), &mem)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "Source and target release must be from the same application"
    );
}

#[tokio::test]
async fn missing_image_is_an_error() {
    let mut mem = two_releases();
    mem.images.remove(&22);
    let err = get_update_info(&ONE, &TWO, &mem).await.unwrap_err();
    assert_eq!(err.to_string(), "Image not found: 22");
}

#[tokio::test]
async fn empty_target_is_ready_with_zero_bytes() {
    let mut mem = two_releases();
    mem.releases.push(release(4, "dddd", 7, &[]));
    let info = get_update_info(&ONE, &ReleaseRef::Id(4), &mem)
        .await
        .unwrap();
    assert_eq!(info.overall_status, UpdateStatus::Ready);
    assert_eq!(info.estimated_total_payload_size, Some(0));
    assert_eq!(info.removed_services.len(), 4);
}

#[tokio::test]
async fn prepare_without_wait_rereads_the_state() {
    let mem = Mem {
        trigger_sets: Some("running"),
        ..two_releases()
    };
    let info = prepare_update(&ONE, &TWO, &mem, &PrepareOptions::default())
        .await
        .unwrap();
    assert_eq!(*mem.triggers.lock().unwrap(), [(11, 21)]);
    assert_eq!(info.overall_status, UpdateStatus::Preparing);
}

#[tokio::test]
async fn prepare_of_a_ready_update_triggers_nothing() {
    let mem = two_releases();
    mem.deltas
        .lock()
        .unwrap()
        .insert((11, 21), delta(99, "success", 1));
    let info = prepare_update(&ONE, &TWO, &mem, &PrepareOptions::default())
        .await
        .unwrap();
    assert_eq!(info.overall_status, UpdateStatus::Ready);
    assert!(mem.triggers.lock().unwrap().is_empty());
}

fn waiting(timeout: Option<u64>) -> PrepareOptions {
    PrepareOptions {
        wait: true,
        timeout: timeout.map(Duration::from_secs),
        poll_interval: Duration::from_secs(5),
        retrigger_interval: Duration::from_secs(30),
    }
}

#[tokio::test(start_paused = true)]
async fn wait_polls_until_ready_and_survives_transient_errors() {
    let mem = Mem {
        trigger_sets: Some("running"),
        succeed_after_reads: Some(4),
        ..two_releases()
    };
    mem.delta_errors.lock().unwrap().extend([
        Error::Request {
            status: 503,
            message: "Service Unavailable".into(),
            retry_after: None,
        },
        Error::NetworkTimeout {
            url: "http://x".into(),
        },
    ]);
    let info = prepare_update(&ONE, &TWO, &mem, &waiting(Some(3600)))
        .await
        .unwrap();
    assert_eq!(info.overall_status, UpdateStatus::Ready);
    assert_eq!(info.estimated_total_payload_size, Some(500 + 6000));
    assert!(mem.delta_errors.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn wait_fails_on_a_permanent_error() {
    let mem = Mem {
        trigger_sets: Some("running"),
        ..two_releases()
    };
    mem.delta_errors.lock().unwrap().push(Error::Request {
        status: 400,
        message: "bad".into(),
        retry_after: None,
    });
    let err = prepare_update(&ONE, &TWO, &mem, &waiting(None))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "Request error: bad");
}

#[tokio::test(start_paused = true)]
async fn timeout_carries_the_last_state_and_pending_deltas_are_retriggered() {
    let mem = two_releases();
    let start = Instant::now();
    let err = prepare_update(&ONE, &TWO, &mem, &waiting(Some(100)))
        .await
        .unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(100));
    let Error::Timeout { last, waited } = err else {
        panic!("expected a timeout, got {err:?}");
    };
    assert_eq!(waited, Duration::from_secs(100));
    assert_eq!(last.overall_status, UpdateStatus::Pending);
    assert_eq!(last.to_release.id, 2);
    // Triggered at 0 s, then again every 30 s while pending: 30, 60, 90.
    assert_eq!(mem.triggers.lock().unwrap().len(), 4);
}

#[tokio::test(start_paused = true)]
async fn zero_timeout_times_out_at_once() {
    let mem = two_releases();
    let err = prepare_update(&ONE, &TWO, &mem, &waiting(Some(0)))
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("timed out after 0 s"), "{err}");
}

#[test]
fn backoff_doubles_with_jitter_is_capped_and_honours_retry_after() {
    let s = Duration::from_secs;
    let within = |d: Duration, lo: u64, hi: u64| assert!(d >= s(lo) && d <= s(hi), "{d:?}");
    for _ in 0..50 {
        within(backoff(s(5), 1, None), 5, 10);
        within(backoff(s(5), 2, None), 10, 20);
        within(backoff(s(5), 10, None), 30, 60);
        within(backoff(s(90), 3, None), 45, 90);
        within(backoff(s(5), u32::MAX, None), 30, 60);
        assert_eq!(backoff(s(5), 1, Some(s(40))), s(40));
        assert_eq!(backoff(s(5), 1, Some(s(4000))), s(60));
    }
}

#[test]
fn service_order_matches_locale_compare_on_letters() {
    let mut names = vec!["b", "Ab", "aB", "ab", "A", "a", "z", "a1"];
    names.sort_by(|a, b| service_order(a, b));
    assert_eq!(names, ["a", "A", "a1", "ab", "aB", "Ab", "b", "z"]);
}

#[test]
fn report_json_has_the_original_key_order() {
    let info = UpdateInfo {
        from_release: ReleaseInfo {
            id: 1,
            commit: "a".into(),
        },
        to_release: ReleaseInfo {
            id: 2,
            commit: "b".into(),
        },
        service_updates: vec![ServiceUpdate {
            service_name: "main".into(),
            status: UpdateStatus::Ready,
            from_image: Some(image(11, None, 1).into()),
            to_image: ProducedImage {
                id: 21,
                location: "l".into(),
                content_hash: Some("h".into()),
                image_size: 2,
                delta: Some(delta(5, "success", 3).into()),
            },
        }],
        overall_status: UpdateStatus::Ready,
        estimated_total_payload_size: Some(3),
        removed_services: vec![],
    };
    let json = serde_json::to_string(&info).unwrap();
    assert_eq!(
        json,
        r#"{"originates_from__release":{"id":1,"commit":"a"},"produces__release":{"id":2,"commit":"b"},"is_produced_by__service_update":[{"service_name":"main","status":"ready","originates_from__image":{"id":11,"is_stored_at__image_location":"registry2.example.com/v2/11","content_hash":null,"image_size":1},"produces__image":{"id":21,"is_stored_at__image_location":"l","content_hash":"h","image_size":2,"is_produced_by__delta":{"id":5,"version":3,"is_stored_at__location":"registry2.example.com/v2/delta-5","size":3}}}],"overall_status":"ready","estimated_total_payload_size":3,"removes__service":[]}"#
    );
    let back: UpdateInfo = serde_json::from_str(&json).unwrap();
    assert_eq!(back, info);
}
