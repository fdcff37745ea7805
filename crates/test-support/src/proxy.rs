//! A misbehaving TCP proxy on loopback, for fault-injection tests: it forwards to a real
//! server (a registry) and, when told to, refuses connections, stalls answers or trickles
//! them, the faults a registry shows when it restarts or hangs.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the proxy does with traffic from the server back to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forward everything.
    Pass,
    /// Accept and close new connections at once (a registry that is down); open ones
    /// are cut.
    Refuse,
    /// Forward `n` more bytes on each connection (counted from when this mode is set),
    /// then send nothing more, keeping the connection open (a registry that hangs
    /// mid-blob).
    StallAfter(u64),
    /// Forward one byte per `interval` (a registry that trickles).
    Trickle(Duration),
}

/// A proxy from `127.0.0.1:PORT` to a target address, running on its own threads until
/// dropped.
#[derive(Debug)]
pub struct FaultProxy {
    /// `127.0.0.1:PORT` to connect to instead of the target.
    pub addr: String,
    mode: Arc<Mutex<ProxyMode>>,
    connections: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl FaultProxy {
    /// Starts a proxy to `target` (`HOST:PORT`) in [`ProxyMode::Pass`].
    ///
    /// # Panics
    /// When no loopback port can be bound (test code).
    pub fn start(target: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = listener.local_addr().expect("local address").to_string();
        let mode = Arc::new(Mutex::new(ProxyMode::Pass));
        let connections = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let target = target.to_string();
        {
            let (mode, connections, stop) = (mode.clone(), connections.clone(), stop.clone());
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(client) = client else { continue };
                    connections.fetch_add(1, Ordering::Relaxed);
                    let current = *mode.lock().unwrap_or_else(|p| p.into_inner());
                    if current == ProxyMode::Refuse {
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    }
                    let Ok(server) = TcpStream::connect(&target) else {
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    };
                    let (c2, s2) = match (client.try_clone(), server.try_clone()) {
                        (Ok(c), Ok(s)) => (c, s),
                        _ => continue,
                    };
                    // Requests pass unchanged; answers go through the fault.
                    std::thread::spawn(move || pump(client, server, None));
                    let mode = mode.clone();
                    std::thread::spawn(move || pump(s2, c2, Some(mode)));
                }
            });
        }
        FaultProxy {
            addr,
            mode,
            connections,
            stop,
        }
    }

    /// Changes the fault for traffic from now on.
    pub fn set(&self, mode: ProxyMode) {
        *self.mode.lock().unwrap_or_else(|p| p.into_inner()) = mode;
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so that it sees the stop flag.
        let _ = TcpStream::connect(&self.addr);
    }
}

/// Copies `from` to `to`, applying `mode` (when given) to every chunk.
fn pump(mut from: TcpStream, mut to: TcpStream, mode: Option<Arc<Mutex<ProxyMode>>>) {
    let mut buf = [0u8; 16 * 1024];
    let mut sent = 0u64;
    let mut last = None;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let current = mode
            .as_ref()
            .map(|m| *m.lock().unwrap_or_else(|p| p.into_inner()));
        if current != last {
            sent = 0;
            last = current;
        }
        let ok = match current {
            None | Some(ProxyMode::Pass) => to.write_all(&buf[..n]).is_ok(),
            Some(ProxyMode::Refuse) => false,
            Some(ProxyMode::StallAfter(limit)) => {
                let allowed = limit.saturating_sub(sent).min(n as u64) as usize;
                let ok = to.write_all(&buf[..allowed]).is_ok();
                if ok && allowed < n {
                    // Hold the connection open and silent until the client gives up.
                    let mut sink = [0u8; 1024];
                    to.set_read_timeout(None).ok();
                    while matches!(to.read(&mut sink), Ok(m) if m > 0) {}
                    break;
                }
                ok
            }
            Some(ProxyMode::Trickle(interval)) => buf[..n].iter().all(|b| {
                std::thread::sleep(interval);
                to.write_all(std::slice::from_ref(b)).is_ok()
            }),
        };
        if !ok {
            break;
        }
        sent += n as u64;
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that answers every connection with `len` bytes and closes.
    fn server(len: usize) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let mut c = c;
                let _ = c.write_all(&vec![7u8; len]);
            }
        });
        addr
    }

    /// Reads until EOF (false) or until `timeout` has passed (true).
    fn fetch(addr: &str, timeout: Duration) -> (usize, bool) {
        let mut c = TcpStream::connect(addr).unwrap();
        let end = std::time::Instant::now() + timeout;
        let mut got = 0;
        let mut buf = [0u8; 4096];
        loop {
            let left = end.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return (got, true);
            }
            c.set_read_timeout(Some(left)).unwrap();
            match c.read(&mut buf) {
                Ok(0) => return (got, false),
                Ok(n) => got += n,
                Err(_) => return (got, true),
            }
        }
    }

    #[test]
    fn passes_stalls_and_refuses() {
        let proxy = FaultProxy::start(&server(50_000));
        assert_eq!(fetch(&proxy.addr, Duration::from_secs(5)), (50_000, false));
        proxy.set(ProxyMode::StallAfter(1000));
        assert_eq!(fetch(&proxy.addr, Duration::from_millis(300)), (1000, true));
        proxy.set(ProxyMode::Refuse);
        assert_eq!(fetch(&proxy.addr, Duration::from_secs(5)), (0, false));
        proxy.set(ProxyMode::Trickle(Duration::from_millis(20)));
        let (got, timed_out) = fetch(&proxy.addr, Duration::from_millis(300));
        assert!(timed_out && got > 0 && got < 1000, "{got}");
        assert_eq!(proxy.connections(), 4);
    }
}
