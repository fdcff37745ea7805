//! The one retry policy of the project: exponential back-off with jitter that honours a
//! server's `Retry-After`, and the test for which I/O errors are worth retrying.
//!
//! Kept here rather than taken from a retry crate because its users are not all retry
//! loops of one fallible call: the registry client retries on the *status* of a response it
//! still returns, the update poller and the delta builder sleep between attempts of work
//! they own. What they share is the schedule, which is a few lines.

use std::io;
use std::time::Duration;

/// When to try again after a transient failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay before the first retry (before jitter).
    pub base: Duration,
    /// No delay is longer than this, whatever the attempt or `Retry-After` says.
    pub max_delay: Duration,
    /// Retries after the first attempt (0: never retry).
    pub retries: u32,
}

impl RetryPolicy {
    /// Registry requests: 4 retries from 200 ms, at most 10 s apart (about 3 s in all
    /// without `Retry-After`).
    pub const REQUEST: RetryPolicy = RetryPolicy {
        base: Duration::from_millis(200),
        max_delay: Duration::from_secs(10),
        retries: 4,
    };

    /// Whole delta builds after a transient failure: 4 retries from 2 s, at most 60 s
    /// apart (about 1 minute in all), within the build deadline.
    pub const BUILD: RetryPolicy = RetryPolicy {
        base: Duration::from_secs(2),
        max_delay: Duration::from_secs(60),
        retries: 4,
    };

    /// The delay before retry number `retry` (1 for the first retry): `base × 2^(retry-1)`
    /// capped at `max_delay`, with "equal jitter" (a uniformly random point in its upper
    /// half, so that clients failing together do not retry together), and never shorter
    /// than `retry_after` (itself capped at `max_delay`). `None` once the retries are spent.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Option<Duration> {
        if retry == 0 || retry > self.retries {
            return None;
        }
        let exp = self
            .base
            .saturating_mul(1u32 << (retry - 1).min(20))
            .min(self.max_delay);
        let half = exp / 2;
        let jitter = Duration::from_nanos(fastrand::u64(0..=half.as_nanos() as u64));
        let backoff = half + jitter;
        Some(backoff.max(retry_after.unwrap_or_default().min(self.max_delay)))
    }
}

/// Parses a `Retry-After` value given in seconds (the form registries and balena's API
/// send). HTTP dates are not honoured: they need a clock agreement this client cannot
/// check, and the back-off applies anyway.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value
        .trim()
        .parse::<u32>()
        .ok()
        .map(|s| Duration::from_secs(u64::from(s)))
}

/// `ENOSPC` and `EDQUOT` on Linux: the disk or the quota is full.
const DISK_FULL_ERRNOS: [i32; 2] = [28, 122];

/// Whether an I/O error is worth retrying later: the network broke or timed out, or the
/// disk is full (space comes back when other work ends). Corrupt data, missing files and
/// refused permissions are not.
pub fn io_is_transient(e: &io::Error) -> bool {
    use io::ErrorKind as K;
    if e.raw_os_error()
        .is_some_and(|c| DISK_FULL_ERRNOS.contains(&c))
    {
        return true;
    }
    matches!(
        e.kind(),
        K::TimedOut
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::ConnectionRefused
            | K::NotConnected
            | K::BrokenPipe
            | K::UnexpectedEof
            | K::Interrupted
            | K::WouldBlock
            | K::StorageFull
            | K::QuotaExceeded
            | K::HostUnreachable
            | K::NetworkUnreachable
            | K::NetworkDown
    )
}

/// Whether an I/O error says the disk (or the quota) is full.
pub fn io_is_disk_full(e: &io::Error) -> bool {
    e.raw_os_error()
        .is_some_and(|c| DISK_FULL_ERRNOS.contains(&c))
        || matches!(
            e.kind(),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_with_jitter_up_to_the_cap_and_stop_after_the_retries() {
        let p = RetryPolicy {
            base: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            retries: 6,
        };
        for _ in 0..200 {
            let d1 = p.delay(1, None).unwrap();
            assert!((50..=100).contains(&d1.as_millis()), "{d1:?}");
            let d3 = p.delay(3, None).unwrap();
            assert!((200..=400).contains(&d3.as_millis()), "{d3:?}");
            let d6 = p.delay(6, None).unwrap();
            assert!((500..=1000).contains(&d6.as_millis()), "{d6:?}");
        }
        assert_eq!(p.delay(0, None), None);
        assert_eq!(p.delay(7, None), None);
        // Jitter: 200 draws of the first delay are not all equal.
        let draws: std::collections::HashSet<_> = (0..200).map(|_| p.delay(2, None)).collect();
        assert!(draws.len() > 10);
    }

    #[test]
    fn retry_after_is_honoured_but_capped() {
        let p = RetryPolicy::REQUEST;
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(3))),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(3600))),
            Some(p.max_delay)
        );
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }

    #[test]
    fn transient_io_errors_are_network_and_full_disks() {
        assert!(io_is_transient(&io::Error::from_raw_os_error(28)));
        assert!(io_is_disk_full(&io::Error::from_raw_os_error(28)));
        assert!(io_is_transient(&io::Error::from(io::ErrorKind::TimedOut)));
        assert!(io_is_transient(&io::Error::from(
            io::ErrorKind::ConnectionReset
        )));
        assert!(!io_is_transient(&io::Error::from(io::ErrorKind::NotFound)));
        assert!(!io_is_transient(&io::Error::from(
            io::ErrorKind::InvalidData
        )));
        assert!(!io_is_transient(&io::Error::from(
            io::ErrorKind::PermissionDenied
        )));
        assert!(!io_is_disk_full(&io::Error::from(io::ErrorKind::TimedOut)));
    }
}
