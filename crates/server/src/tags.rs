//! A short-lived memory of tag → image resolutions, so that a device polling for a delta by
//! tag does not make the server ask the registry on every poll.
//!
//! A tag may move, so an entry lives [`ServerConfig::tag_ttl`](crate::ServerConfig::tag_ttl)
//! (30 s by default, well under the supervisor's poll interval and the time a release takes to
//! roll out). Within that time a moved tag still names its previous image: a device asking by
//! tag gets the delta to the image the tag named at most that long ago. References with a
//! digest never need the registry once their image is recorded, so they are not kept here.
//! At most [`MAX_ENTRIES`] entries: when full, expired ones are dropped, then the map is
//! emptied (a burst of distinct tags costs registry requests, never unbounded memory).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bru_oci::RegistryReference;
use bru_service::ImageRecord;

/// Most tags remembered at once.
pub(crate) const MAX_ENTRIES: usize = 10_000;

/// Tag resolutions, keyed by `HOST/REPO:TAG`.
#[derive(Debug)]
pub(crate) struct TagCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, (Instant, ImageRecord)>>,
}

impl TagCache {
    pub(crate) fn new(ttl: Duration) -> Self {
        TagCache {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The key of a reference by tag only; `None` for digests (and a zero TTL).
    fn key(&self, r: &RegistryReference) -> Option<String> {
        if self.ttl.is_zero() || r.digest.is_some() {
            return None;
        }
        Some(r.to_string())
    }

    /// The image `r` resolved to less than the TTL ago.
    pub(crate) fn get(&self, r: &RegistryReference) -> Option<ImageRecord> {
        let key = self.key(r)?;
        let entries = self.entries.lock().ok()?;
        let (at, image) = entries.get(&key)?;
        (at.elapsed() < self.ttl).then(|| image.clone())
    }

    /// Remembers that `r` resolved to `image` now.
    pub(crate) fn put(&self, r: &RegistryReference, image: &ImageRecord) {
        let Some(key) = self.key(r) else {
            return;
        };
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(&key) {
            let ttl = self.ttl;
            entries.retain(|_, (at, _)| at.elapsed() < ttl);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(key, (Instant::now(), image.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(s: &str) -> RegistryReference {
        match s.parse() {
            Ok(bru_oci::ImageReference::Registry(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    fn image(id: u64) -> ImageRecord {
        ImageRecord {
            id,
            service_name: "app".into(),
            location: format!("reg.example/app@sha256:{}", "a".repeat(64)),
            content_hash: format!("sha256:{}", "a".repeat(64)),
            image_size: 1,
            status: "success".into(),
        }
    }

    #[test]
    fn tags_are_remembered_for_the_ttl_digests_never() {
        let cache = TagCache::new(Duration::from_secs(3600));
        let by_tag = reference("reg.example/app:v1");
        assert!(cache.get(&by_tag).is_none());
        cache.put(&by_tag, &image(7));
        assert_eq!(cache.get(&by_tag).map(|i| i.id), Some(7));
        assert!(cache.get(&reference("reg.example/app:v2")).is_none());
        assert!(cache.get(&reference("reg.example/other:v1")).is_none());
        let by_digest = reference(&format!("reg.example/app:v1@sha256:{}", "b".repeat(64)));
        cache.put(&by_digest, &image(8));
        assert!(cache.get(&by_digest).is_none());

        let expired = TagCache::new(Duration::from_nanos(1));
        expired.put(&by_tag, &image(7));
        std::thread::sleep(Duration::from_millis(2));
        assert!(expired.get(&by_tag).is_none());
        let off = TagCache::new(Duration::ZERO);
        off.put(&by_tag, &image(7));
        assert!(off.get(&by_tag).is_none());
    }

    #[test]
    fn the_map_stays_bounded() {
        let cache = TagCache::new(Duration::from_secs(3600));
        for i in 0..MAX_ENTRIES + 5 {
            cache.put(&reference(&format!("reg.example/app:t{i}")), &image(1));
        }
        let n = cache.entries.lock().unwrap().len();
        assert!(n <= MAX_ENTRIES, "{n}");
        // The newest is there.
        let last = reference(&format!("reg.example/app:t{}", MAX_ENTRIES + 4));
        assert!(cache.get(&last).is_some());
    }
}
