//! Deadlines of registry traffic: how long a connection, a read and a slow transfer may
//! take, and the HTTP clients (one per setting) that a program's registry connections share.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use tokio::time::Instant;

/// Time limits of registry requests.
///
/// A request fails when the connection is not made within `connect`, when nothing at all
/// arrives for `read` (response headers or the next piece of a body), or when a body
/// arrives slower than `min_speed`: fewer than `min_speed.0` bytes in a window of
/// `min_speed.1` (a registry that sends one byte a second defeats a read timeout alone).
/// All three end in a transient [`crate::OciError::Http`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Timeouts {
    /// Connection set-up, TLS included (default 30 s).
    pub connect: Duration,
    /// Longest silence while waiting for a response or reading its body (default 60 s).
    pub read: Duration,
    /// Slowest acceptable body transfer: at least this many bytes in every window of this
    /// length (default 16 KiB in 30 s).
    pub min_speed: (u64, Duration),
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(30),
            read: Duration::from_secs(60),
            min_speed: (16 * 1024, Duration::from_secs(30)),
        }
    }
}

/// The HTTP clients of one program's registry traffic, one per setting (plain HTTP allowed
/// or not, timeouts), created on first use and shared by every clone: connections are pooled
/// across images, builds and requests. It lives in [`crate::RegistryOptions`], so a program
/// that builds its options once shares one pool; it is not process-global, because pooled
/// connections belong to the async runtime that opened them (tests run one runtime each).
#[derive(Clone, Default)]
pub struct HttpClients(Arc<Mutex<HashMap<(bool, Timeouts), reqwest::Client>>>);

impl std::fmt::Debug for HttpClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map(|m| m.len()).unwrap_or(0);
        f.debug_struct("HttpClients").field("clients", &n).finish()
    }
}

impl HttpClients {
    /// The client for registries spoken to with `insecure` and these timeouts.
    pub(crate) fn get(
        &self,
        insecure: bool,
        timeouts: &Timeouts,
    ) -> Result<reqwest::Client, reqwest::Error> {
        let mut clients = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(&(insecure, *timeouts)) {
            return Ok(c.clone());
        }
        let client = reqwest::Client::builder()
            .connect_timeout(timeouts.connect)
            .read_timeout(timeouts.read)
            .user_agent(concat!("balena-release-update/", env!("CARGO_PKG_VERSION")))
            .https_only(!insecure)
            // Blobs are content-addressed: never let a Content-Encoding header change the bytes.
            .no_gzip()
            .build()?;
        clients.insert((insecure, *timeouts), client.clone());
        Ok(client)
    }
}

/// A body stream that fails with [`io::ErrorKind::TimedOut`] when it delivers fewer than
/// `bytes` in a window of `window`. A stream that delivers nothing at all is the read
/// timeout's job; this one catches a trickle.
pub(crate) struct MinSpeed<S> {
    inner: S,
    bytes: u64,
    window: Duration,
    window_start: Instant,
    seen: u64,
}

impl<S> MinSpeed<S> {
    pub(crate) fn new(inner: S, (bytes, window): (u64, Duration)) -> Self {
        MinSpeed {
            inner,
            bytes,
            window,
            window_start: Instant::now(),
            seen: 0,
        }
    }
}

impl<S> Stream for MinSpeed<S>
where
    S: Stream<Item = io::Result<Bytes>> + Unpin,
{
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let item = std::task::ready!(Pin::new(&mut this.inner).poll_next(cx));
        if let Some(Ok(chunk)) = &item {
            this.seen += chunk.len() as u64;
            let elapsed = this.window_start.elapsed();
            if elapsed >= this.window {
                if this.seen < this.bytes {
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "the registry sent {} bytes in {:.0?}, less than the {} bytes required",
                            this.seen, elapsed, this.bytes
                        ),
                    ))));
                }
                this.window_start = Instant::now();
                this.seen = 0;
            }
        }
        Poll::Ready(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt as _;

    #[test]
    fn clones_share_their_clients_and_separate_options_do_not() {
        let a = HttpClients::default();
        let shared = a.clone();
        a.get(true, &Timeouts::default()).unwrap();
        a.get(true, &Timeouts::default()).unwrap();
        shared.get(false, &Timeouts::default()).unwrap();
        assert_eq!(format!("{a:?}"), "HttpClients { clients: 2 }");
        assert_eq!(
            format!("{:?}", HttpClients::default()),
            "HttpClients { clients: 0 }"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_fails_and_a_steady_stream_passes() {
        let trickle = futures::stream::unfold(0u32, |n| async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            (n < 100).then(|| (Ok(Bytes::from_static(b"x")), n + 1))
        });
        let mut guarded = MinSpeed::new(Box::pin(trickle), (100, Duration::from_secs(10)));
        let mut got = 0;
        let err = loop {
            match guarded.next().await {
                Some(Ok(c)) => got += c.len(),
                Some(Err(e)) => break e,
                None => panic!("the trickle was accepted"),
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(got < 12, "{got} bytes before the stop");

        let steady = futures::stream::unfold(0u32, |n| async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            (n < 40).then(|| (Ok(Bytes::from(vec![0u8; 20])), n + 1))
        });
        let all: Vec<_> = MinSpeed::new(Box::pin(steady), (100, Duration::from_secs(10)))
            .collect()
            .await;
        assert_eq!(all.len(), 40);
        assert!(all.iter().all(Result::is_ok));
    }
}
