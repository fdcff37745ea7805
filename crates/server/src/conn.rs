//! The accept loop and per-connection limits (see [`Limits`]).
//!
//! hyper's own `header_read_timeout` starts as soon as a connection waits for a request, so
//! it would also close keep-alive connections after the header timeout. A small watchdog per
//! connection keeps the two apart instead: the header clock runs from accept (a new
//! connection) or from the first byte of the next request (a keep-alive connection) until
//! hyper hands over the request; the idle clock runs while a kept-alive connection is silent.
//! Neither clock runs while a request is being answered (long polls are bounded by the
//! handler). hyper itself bounds the request head (`max_header_size`, `max_headers`).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tower::ServiceExt as _;

/// Connection and request limits of the server. Every field is documented with its default
/// ([`Limits::default`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open connections at most (default 512; `--max-connections`). At the cap a new
    /// connection closes the connection that has been waiting longest for a request; when
    /// every connection is answering a request, the new one gets `503` with `Retry-After: 1`
    /// and is closed. The cap is lowered at start to fit the process's open-file limit
    /// (the soft `RLIMIT_NOFILE` less [`FD_RESERVE`]).
    pub max_connections: usize,
    /// The longest a request head (request line and headers) may take to arrive: from accept
    /// for a new connection, from its first byte on a kept-alive one (default 10 s;
    /// `--header-timeout`). The connection is closed without an answer.
    pub header_read_timeout: Duration,
    /// The longest a kept-alive connection may stay silent between requests (default 60 s;
    /// `--idle-timeout`).
    pub idle_timeout: Duration,
    /// The largest request head, request line included (default 16 KiB). Larger heads get
    /// `431` and the connection is closed.
    pub max_header_bytes: usize,
    /// The most header fields in a request (default 64); more get `431`.
    pub max_headers: usize,
    /// The longest request target, path and query (default 4 KiB); longer ones get `414`.
    pub max_uri_bytes: usize,
}

/// Open files kept free for the store, registry connections and builds when the connection
/// cap is fitted to the open-file limit.
pub const FD_RESERVE: usize = 64;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 512,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_header_bytes: 16 * 1024,
            max_headers: 64,
            max_uri_bytes: 4 * 1024,
        }
    }
}

impl Limits {
    /// The connection cap fitted to an open-file limit `nofile` (`None`: unknown).
    pub fn connection_cap(&self, nofile: Option<u64>) -> usize {
        let cap = self.max_connections.max(1);
        match nofile.and_then(|n| usize::try_from(n).ok()) {
            Some(n) => cap.min(n.saturating_sub(FD_RESERVE).max(n / 2).max(1)),
            None => cap,
        }
    }
}

/// The soft open-file limit of this process, read from `/proc/self/limits` (Linux; `None`
/// elsewhere or when unlimited).
pub fn open_file_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// What the watchdog of one connection knows.
#[derive(Debug)]
struct Activity {
    /// Requests being answered.
    in_flight: usize,
    /// When the head being read started (accept, or the first byte after a request).
    head_since: Option<Instant>,
    /// When the connection last became idle (its last answer was handed over).
    idle_since: Instant,
}

#[derive(Debug)]
struct Conn {
    activity: Mutex<Activity>,
    close: Notify,
}

impl Conn {
    fn new(now: Instant) -> Conn {
        Conn {
            activity: Mutex::new(Activity {
                in_flight: 0,
                head_since: Some(now),
                idle_since: now,
            }),
            close: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Activity> {
        self.activity.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes arrived: a head starts unless a request is being answered or one is already
    /// being read.
    fn bytes_read(&self) {
        let mut a = self.lock();
        if a.in_flight == 0 && a.head_since.is_none() {
            a.head_since = Some(Instant::now());
        }
    }

    /// Why the connection must close now, if it must.
    fn expired(&self, now: Instant, limits: &Limits) -> Option<&'static str> {
        let a = self.lock();
        if a.in_flight > 0 {
            return None;
        }
        match a.head_since {
            Some(t) if now.duration_since(t) >= limits.header_read_timeout => {
                Some("header read timeout")
            }
            None if now.duration_since(a.idle_since) >= limits.idle_timeout => Some("idle timeout"),
            _ => None,
        }
    }

    /// The instant the connection last made progress when it is not answering a request.
    fn evictable_since(&self) -> Option<Instant> {
        let a = self.lock();
        (a.in_flight == 0).then(|| a.head_since.unwrap_or(a.idle_since))
    }
}

/// Marks one request in flight on a connection; dropping it makes the connection idle.
struct InFlight(Arc<Conn>);

impl InFlight {
    fn start(conn: &Arc<Conn>) -> InFlight {
        let mut a = conn.lock();
        a.in_flight += 1;
        a.head_since = None;
        drop(a);
        InFlight(Arc::clone(conn))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut a = self.0.lock();
        a.in_flight = a.in_flight.saturating_sub(1);
        a.idle_since = Instant::now();
    }
}

/// A TCP stream that reports received bytes to its connection's watchdog.
struct Tracked {
    stream: TcpStream,
    conn: Arc<Conn>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conn.bytes_read();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The open connections, for the cap.
#[derive(Debug, Default)]
struct Table {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Conn>>>,
}

impl Table {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a connection, closing the one idle longest when at `cap`; `None` when every
    /// open connection is answering a request.
    fn admit(&self, cap: usize) -> Option<(u64, Arc<Conn>)> {
        let mut open = self.lock();
        if open.len() >= cap {
            let oldest = open
                .iter()
                .filter_map(|(id, c)| c.evictable_since().map(|t| (t, *id)))
                .min()
                .map(|(_, id)| id)?;
            if let Some(evicted) = open.remove(&oldest) {
                evicted.close.notify_one();
            }
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn::new(Instant::now()));
        open.insert(id, Arc::clone(&conn));
        Some((id, conn))
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// The answer to a connection beyond the cap, written without waiting.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\n\
content-type: application/json\r\ncontent-length: 34\r\nconnection: close\r\n\r\n\
{\"error\":\"too many connections\"}\r\n";

/// Accepts connections until `shutdown` completes, then closes idle connections, lets open
/// requests finish (at most `drain` longer) and returns.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
) {
    let cap = limits.connection_cap(open_file_limit());
    if cap < limits.max_connections {
        tracing::warn!(
            cap,
            requested = limits.max_connections,
            "connection cap lowered to fit the open-file limit"
        );
    }
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_header_size(limits.max_header_bytes)
        .max_buf_size(limits.max_header_bytes.max(8192) * 2)
        .max_headers(limits.max_headers);
    let table = Arc::new(Table::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
            // Reap finished connection tasks so the set stays small.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // EMFILE, ENFILE, ENOBUFS…: retry shortly instead of spinning or dying.
                tracing::warn!(error = %e, open = table.len(), "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some((id, conn)) = table.admit(cap) else {
            let _ = stream.try_write(BUSY);
            tracing::warn!(cap, "connection refused: every connection is busy");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let http = http.clone();
        let router = router.clone();
        let table = Arc::clone(&table);
        let stop = stop_rx.clone();
        tasks.spawn(async move {
            run_connection(http, stream, Arc::clone(&conn), router, limits, stop).await;
            table.remove(id);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained =
        tokio::time::timeout(drain, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(open = tasks.len(), "closing connections still open");
        tasks.abort_all();
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

async fn run_connection(
    http: http1::Builder,
    stream: TcpStream,
    conn: Arc<Conn>,
    router: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let io = TokioIo::new(Tracked {
        stream,
        conn: Arc::clone(&conn),
    });
    let service = {
        let conn = Arc::clone(&conn);
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let in_flight = InFlight::start(&conn);
            let router = router.clone();
            async move {
                let response = router.oneshot(req).await;
                drop(in_flight);
                response
            }
        })
    };
    let served = http.serve_connection(io, service);
    tokio::pin!(served);
    let check = (limits.header_read_timeout.min(limits.idle_timeout) / 4)
        .clamp(Duration::from_millis(5), Duration::from_secs(1));
    let mut tick = tokio::time::interval(check);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopping = *stop.borrow();
    if stopping {
        served.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            result = served.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended");
                }
                return;
            }
            () = conn.close.notified() => {
                tracing::debug!("connection closed to admit a new one");
                return;
            }
            changed = stop.changed(), if !stopping => {
                stopping = true;
                if changed.is_ok() {
                    served.as_mut().graceful_shutdown();
                }
            }
            _ = tick.tick() => {
                if let Some(reason) = conn.expired(Instant::now(), &limits) {
                    tracing::debug!(reason, "connection closed");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_fits_the_open_file_limit() {
        let limits = Limits::default();
        assert_eq!(limits.connection_cap(None), 512);
        assert_eq!(limits.connection_cap(Some(1_048_576)), 512);
        assert_eq!(limits.connection_cap(Some(1024)), 512);
        assert_eq!(limits.connection_cap(Some(256)), 192);
        assert_eq!(limits.connection_cap(Some(100)), 50);
        assert_eq!(limits.connection_cap(Some(0)), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn clocks_run_only_between_requests() {
        let limits = Limits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            ..Limits::default()
        };
        let conn = Arc::new(Conn::new(Instant::now()));
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(conn.expired(Instant::now(), &limits), None);
        // A request arrives and takes long: no clock runs.
        let req = InFlight::start(&conn);
        tokio::time::advance(Duration::from_secs(120)).await;
        conn.bytes_read();
        assert_eq!(conn.expired(Instant::now(), &limits), None);
        assert_eq!(conn.evictable_since(), None);
        drop(req);
        // Kept alive: the idle clock.
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(conn.expired(Instant::now(), &limits), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(conn.expired(Instant::now(), &limits), Some("idle timeout"));
        // A byte of the next head: the header clock, from that byte.
        conn.bytes_read();
        tokio::time::advance(Duration::from_secs(9)).await;
        conn.bytes_read();
        assert_eq!(conn.expired(Instant::now(), &limits), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            conn.expired(Instant::now(), &limits),
            Some("header read timeout")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_cap_the_idlest_makes_room_unless_all_are_busy() {
        let table = Table::default();
        let (first, a) = table.admit(2).unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        let (_, b) = table.admit(2).unwrap();
        // Full: the connection waiting longest (a) is told to close and removed.
        let (_, c) = table.admit(2).unwrap();
        assert_eq!(table.len(), 2);
        assert!(!table.lock().contains_key(&first));
        tokio::time::timeout(Duration::from_secs(1), a.close.notified())
            .await
            .expect("the evicted connection was not told to close");
        // Both remaining connections answer requests: nothing can make room.
        let _busy = (InFlight::start(&b), InFlight::start(&c));
        assert!(table.admit(2).is_none());
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn the_busy_answer_is_well_formed() {
        let text = std::str::from_utf8(BUSY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
    }
}
