//! Connection and request limits on loopback: slowloris connections are cut by the header
//! timeout and never lock out `/healthz`, idle keep-alive connections are closed, the
//! connection cap closes the idlest connection, and oversize requests get 414/431/413.

use std::net::SocketAddr;
use std::time::Duration;

use bru_server::{Auth, Limits, Server, ServerConfig};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Upper bound for anything the server must do "soon"; failures only, never measured.
const BOUND: Duration = Duration::from_secs(20);

async fn start(limits: Limits) -> (SocketAddr, tempfile::TempDir) {
    let store = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new(store.path(), Auth::None);
    config.limits = limits;
    let server = Server::open(config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server.serve(listener, std::future::pending()));
    (addr, store)
}

/// Sends `request` on a new connection and reads until the server closes it.
async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(BOUND, conn.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the server did not close the connection");
    String::from_utf8_lossy(&out).into_owned()
}

async fn healthz(addr: SocketAddr) -> String {
    let answer = tokio::time::timeout(
        BOUND,
        exchange(
            addr,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ),
    )
    .await
    .expect("/healthz did not answer");
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    answer
}

/// Waits until the server closes `conn`; returns what it sent before.
async fn closed_by_server(conn: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    match tokio::time::timeout(BOUND, conn.read_to_end(&mut out)).await {
        Ok(Ok(_)) => {}
        // A reset is a close as well.
        Ok(Err(e)) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        Err(_) => panic!("the server kept the connection open"),
    }
    out
}

/// Opens `n` connections that send half a request line and stall.
async fn stalled(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /heal").await.unwrap();
        conns.push(c);
    }
    conns
}

#[tokio::test]
async fn slowloris_is_cut_by_the_header_timeout_and_healthz_answers() {
    let (addr, _store) = start(Limits {
        header_read_timeout: Duration::from_millis(500),
        ..Limits::default()
    })
    .await;
    let mut conns = stalled(addr, 300).await;
    healthz(addr).await;
    for c in &mut conns {
        let sent = closed_by_server(c).await;
        assert!(sent.is_empty(), "{}", String::from_utf8_lossy(&sent));
    }
    // A head that trickles in a byte at a time is cut as well: the clock is not reset
    // by each byte.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    let mut cut = false;
    for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "
        .iter()
        .cycle()
        .take(400)
    {
        if slow.write_all(&[*b]).await.is_err() {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(cut || closed_by_server(&mut slow).await.is_empty());
    healthz(addr).await;
}

#[tokio::test]
async fn at_the_cap_the_idlest_connection_makes_room() {
    // Header timeout far beyond the test: only the cap can make room.
    let (addr, _store) = start(Limits {
        max_connections: 16,
        header_read_timeout: Duration::from_secs(3600),
        ..Limits::default()
    })
    .await;
    let mut conns = stalled(addr, 300).await;
    healthz(addr).await;
    // The oldest stalled connection was closed to admit a newer one.
    assert!(closed_by_server(&mut conns[0]).await.is_empty());
    healthz(addr).await;
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let (addr, _store) = start(Limits {
        header_read_timeout: Duration::from_secs(3600),
        idle_timeout: Duration::from_millis(300),
        ..Limits::default()
    })
    .await;
    let mut conn = TcpStream::connect(addr).await.unwrap();
    for _ in 0..2 {
        conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.ends_with(b"ok\n") {
            let n = tokio::time::timeout(BOUND, conn.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed while answering");
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got.starts_with(b"HTTP/1.1 200 "));
    }
    // Kept alive after two requests, then closed once silent for the idle timeout.
    assert!(closed_by_server(&mut conn).await.is_empty());
}

#[tokio::test]
async fn oversize_requests_are_refused_and_nothing_breaks() {
    let (addr, _store) = start(Limits::default()).await;
    let long_target = format!(
        "GET /healthz?{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "a".repeat(5000)
    );
    let answer = exchange(addr, long_target.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 414 "), "{answer}");
    assert!(answer.contains("x-request-id"), "{answer}");

    let huge_line = format!(
        "GET /healthz?{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(40_000)
    );
    let answer = exchange(addr, huge_line.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");

    let big_header = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(20_000)
    );
    let answer = exchange(addr, big_header.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");

    let mut many = String::from("GET /healthz HTTP/1.1\r\nHost: x\r\n");
    for i in 0..100 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let answer = exchange(addr, many.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");

    let with_body = "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
    let answer = exchange(addr, with_body.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    let chunked =
        "GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let answer = exchange(addr, chunked.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");

    healthz(addr).await;
}
