//! Attacks on the client port's sockets, against the real binary: slowloris (half-sent heads,
//! sockets that send nothing, heads dripped a byte at a time), idle keep-alive sockets,
//! unfinished bodies, and all of it under a low `ulimit -n`. Each test asserts that the sockets
//! are closed within their timeout (with margin for a loaded machine), that `/healthz` and
//! `/readyz` answer throughout, and that new clients get a connection or a refusal, never a hang.

mod common;

use std::time::Duration;

use common::binary::Binary;
use common::{Client, WAIT, metric_value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite;

/// Slack on every "closed within" bound: the machine is shared and loaded.
const MARGIN: Duration = Duration::from_secs(5);

/// How a slowloris socket misbehaves.
#[derive(Clone, Copy, Debug)]
enum Slowloris {
    /// Connects and sends nothing.
    Silent,
    /// Sends half a request head, then nothing.
    HalfHead,
    /// Sends a request head one byte every 100 ms, forever (never the blank line).
    Drip,
}

const HALF_HEAD: &[u8] = b"GET /ws HTTP/1.1\r\nHost: chat\r\nUpgrade: websocket\r\n";

/// Opens a slowloris socket and returns, in a task, how long after it started connecting the
/// server closed it (`None`: still open after `give_up`). Timed from before `connect`, since
/// the server's clock for the socket starts at `accept`, after it.
async fn slowloris(
    addr: std::net::SocketAddr,
    kind: Slowloris,
    give_up: Duration,
) -> JoinHandle<Option<Duration>> {
    let connected = Instant::now();
    let mut socket = TcpStream::connect(addr).await.expect("connect");
    tokio::spawn(async move {
        if !matches!(kind, Slowloris::Silent) {
            let _ = socket.write_all(HALF_HEAD).await;
        }
        let (mut read, mut write) = socket.split();
        let closed = async {
            let mut buf = [0u8; 1024];
            loop {
                match read.read(&mut buf).await {
                    Ok(0) | Err(_) => return connected.elapsed(),
                    Ok(_) => {}
                }
            }
        };
        let drip = async {
            if !matches!(kind, Slowloris::Drip) {
                return std::future::pending().await;
            }
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if write.write_all(b"X").await.is_err() {
                    return std::future::pending().await;
                }
            }
        };
        tokio::select! {
            elapsed = closed => Some(elapsed),
            () = drip => unreachable!(),
            _ = tokio::time::sleep(give_up) => None,
        }
    })
}

/// One probe of `/healthz` and `/readyz` on the admin port: both answer within 2 s.
async fn probe(node: &Binary) -> Result<(u16, u16), String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let get = |path: &'static str| {
        let request = client.get(node.admin_url(path));
        async move {
            request
                .send()
                .await
                .map(|r| r.status().as_u16())
                .map_err(|e| format!("{path}: {e}"))
        }
    };
    Ok((get("/healthz").await?, get("/readyz").await?))
}

/// A new WebSocket client: a connection (welcome), an HTTP refusal, or the socket closed at
/// once. `Err` only for a hang (no outcome within 3 s).
async fn new_client(node: &Binary) -> Result<&'static str, String> {
    match tokio::time::timeout(Duration::from_secs(3), Client::connect(&node.ws_url(), &[])).await {
        Err(_) => Err("a new client hung for 3 s".to_owned()),
        Ok(Ok(_)) => Ok("connected"),
        Ok(Err(tungstenite::Error::Http(response))) if response.status() == 503 => Ok("503"),
        Ok(Err(tungstenite::Error::Http(response))) => {
            Err(format!("unexpected status {}", response.status()))
        }
        Ok(Err(_)) => Ok("closed"),
    }
}

async fn metrics(node: &Binary) -> String {
    reqwest::get(node.admin_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_thousand_slowloris_sockets_are_closed_within_the_header_timeout() {
    let header_timeout = Duration::from_secs(2);
    let node = Binary::start("true", &["--header-timeout", "2s"]).await;
    let kinds = [Slowloris::Silent, Slowloris::HalfHead, Slowloris::Drip];
    let mut sockets = Vec::new();
    for i in 0..1000 {
        sockets.push(slowloris(node.addr, kinds[i % 3], header_timeout + MARGIN * 2).await);
    }
    // While they are open: the probes answer, a new client connects and chats.
    let (healthz, readyz) = probe(&node).await.expect("probes answer under slowloris");
    assert_eq!((healthz, readyz), (200, 200));
    let mut client = Client::connect(&node.ws_url(), &[])
        .await
        .expect("a new client connects under slowloris");
    client.subscribe("under-attack").await;
    client
        .publish("under-attack", serde_json::json!("hi"))
        .await;

    let mut closed = Vec::new();
    let mut open = 0;
    for socket in sockets {
        match socket.await.unwrap() {
            Some(after) => closed.push(after),
            None => open += 1,
        }
    }
    let first = closed.iter().min().copied();
    let last = closed.iter().max().copied();
    println!(
        "slowloris: {} of 1000 closed, first after {first:?}, last after {last:?}",
        closed.len()
    );
    assert_eq!(
        open,
        0,
        "sockets still open after {:?}",
        header_timeout + MARGIN * 2
    );
    assert_eq!(closed.len(), 1000);
    // Not before the header timeout (it is counted from accept, which follows connect) …
    assert!(first.unwrap() >= header_timeout, "{first:?}");
    // … and within it, with margin for this machine.
    assert!(last.unwrap() <= header_timeout + MARGIN, "{last:?}");

    let text = metrics(&node).await;
    assert_eq!(
        metric_value(&text, "chat_socket_timeouts_total{phase=\"header\"}"),
        Some(1000.0)
    );
    // Only the chat client's socket is still counted.
    assert_eq!(metric_value(&text, "chat_client_sockets"), Some(1.0));
    assert_eq!(probe(&node).await.unwrap(), (200, 200));
}

#[tokio::test]
async fn slowloris_under_ulimit_256_leaves_probes_and_new_clients_answered() {
    // The case: 300 half-sent heads against a node with 256 fds.
    let node = Binary::start("ulimit -n 256", &["--header-timeout", "6s"]).await;
    let max = node.max_connections as usize;
    assert!(
        max < 300,
        "the limit from 256 fds is below the attack: {max}"
    );
    let mut sockets = Vec::new();
    let attack = Instant::now();
    for _ in 0..300 {
        sockets.push(slowloris(node.addr, Slowloris::HalfHead, Duration::from_secs(30)).await);
    }
    // The gate is full (for the 6 s of the header timeout): /readyz says so (and answers),
    // /healthz is 200, new clients are refused or closed at once, none hangs.
    let mut outcomes = std::collections::BTreeMap::<&str, usize>::new();
    let mut readyz_seen = std::collections::BTreeSet::new();
    for round in 0..5 {
        if round > 0 && attack.elapsed() > Duration::from_secs(4) {
            break;
        }
        let (healthz, readyz) = probe(&node).await.expect("probes answer at 256 fds");
        assert_eq!(healthz, 200);
        readyz_seen.insert(readyz);
        let outcome = new_client(&node).await.expect("never a hang");
        *outcomes.entry(outcome).or_default() += 1;
    }
    println!(
        "max_connections {max}; under attack: readyz {readyz_seen:?}, new clients {outcomes:?}"
    );
    assert!(readyz_seen.contains(&503), "/readyz shows the full gate");

    let mut closed = 0;
    for socket in sockets {
        if socket.await.unwrap().is_some() {
            closed += 1;
        }
    }
    assert_eq!(closed, 300, "every slowloris socket closed");
    // Recovered: ready again, and a new client chats.
    node.wait_ready(200).await;
    let mut client = Client::connect(&node.ws_url(), &[])
        .await
        .expect("a client connects after the attack");
    client.subscribe("after").await;
    let text = metrics(&node).await;
    let timeouts = metric_value(&text, "chat_socket_timeouts_total{phase=\"header\"}").unwrap();
    let rejected = metric_value(&text, "websocket_connections_total{status=\"rejected\"}").unwrap();
    println!("header timeouts {timeouts}, rejected sockets {rejected}");
    assert!(timeouts >= max as f64, "{timeouts}");
    assert!(
        outcomes.values().sum::<usize>() >= 1 && !outcomes.contains_key("connected"),
        "{outcomes:?}"
    );
    assert!(rejected >= (300 - max) as f64, "{rejected}");
}

/// A keep-alive socket: sends `GET /healthz`-like requests on the client port and reads the
/// answers.
async fn request(socket: &mut TcpStream, head: &str) -> String {
    socket.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    // The answers here are small and carry a Content-Length: read until the body is complete.
    loop {
        let n = tokio::time::timeout(WAIT, socket.read(&mut buf))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(n > 0, "closed before answering");
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= length {
                return text.into_owned();
            }
        }
    }
}

/// Time until the server closes `socket` (reading and dropping anything it sends).
async fn closed_after(socket: &mut TcpStream, give_up: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(give_up, async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return start.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

#[tokio::test]
async fn idle_keep_alive_sockets_and_unfinished_bodies_are_timed_out() {
    let (header, idle, body) = (
        Duration::from_secs(1),
        Duration::from_secs(3),
        Duration::from_secs(1),
    );
    let node = Binary::start(
        "true",
        &[
            "--header-timeout",
            "1s",
            "--idle-timeout",
            "3s",
            "--body-timeout",
            "1s",
        ],
    )
    .await;
    let get = "GET /nothing-here HTTP/1.1\r\nHost: chat\r\n\r\n";

    // A socket that keeps asking more often than the timeouts stays open across them.
    let mut busy = TcpStream::connect(node.addr).await.unwrap();
    let started = Instant::now();
    for _ in 0..4 {
        assert!(request(&mut busy, get).await.starts_with("HTTP/1.1 404"));
        tokio::time::sleep(Duration::from_millis(800)).await;
    }
    assert!(
        started.elapsed() > idle,
        "the busy socket outlived one idle timeout"
    );
    assert!(request(&mut busy, get).await.starts_with("HTTP/1.1 404"));
    drop(busy);

    // Idle keep-alive sockets: closed after the idle timeout (not the shorter header one).
    let mut idlers = Vec::new();
    for _ in 0..20 {
        let mut socket = TcpStream::connect(node.addr).await.unwrap();
        assert!(request(&mut socket, get).await.starts_with("HTTP/1.1 404"));
        idlers.push(tokio::spawn(async move {
            closed_after(&mut socket, idle + MARGIN * 2).await
        }));
    }
    // Unfinished bodies: 408 after the body timeout, then closed.
    let mut bodies = Vec::new();
    for _ in 0..20 {
        let mut socket = TcpStream::connect(node.addr).await.unwrap();
        socket
            .write_all(
                b"POST /api/publish HTTP/1.1\r\nHost: chat\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"channel\":",
            )
            .await
            .unwrap();
        bodies.push(tokio::spawn(async move {
            let start = Instant::now();
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(body + MARGIN * 2, socket.read_to_end(&mut answer)).await;
            (
                start.elapsed(),
                String::from_utf8_lossy(&answer).into_owned(),
            )
        }));
    }
    // Meanwhile a keep-alive socket that starts a head and stalls: the header timeout from its
    // first byte.
    let mut staller = TcpStream::connect(node.addr).await.unwrap();
    assert!(request(&mut staller, get).await.starts_with("HTTP/1.1 404"));
    staller
        .write_all(b"GET /nothing-here HTTP/1.1\r\n")
        .await
        .unwrap();
    let stalled = closed_after(&mut staller, header + MARGIN * 2).await;

    let mut idle_closes = Vec::new();
    for idler in idlers {
        idle_closes.push(idler.await.unwrap().expect("idle socket closed"));
    }
    let mut body_answers = Vec::new();
    for b in bodies {
        body_answers.push(b.await.unwrap());
    }
    println!(
        "idle closes {:?}..{:?}; body answers {:?}..{:?}; stalled head closed after {stalled:?}",
        idle_closes.iter().min(),
        idle_closes.iter().max(),
        body_answers.iter().map(|b| b.0).min(),
        body_answers.iter().map(|b| b.0).max(),
    );
    for after in &idle_closes {
        assert!(
            *after >= idle.mul_f64(0.95) && *after <= idle + MARGIN,
            "{after:?}"
        );
    }
    for (after, answer) in &body_answers {
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("\"code\":\"bad_request\""), "{answer}");
        assert!(
            *after >= body.mul_f64(0.95) && *after <= body + MARGIN,
            "{after:?}"
        );
    }
    let stalled = stalled.expect("stalled head closed");
    assert!(
        stalled >= header.mul_f64(0.95) && stalled <= header + MARGIN,
        "{stalled:?}"
    );

    let text = metrics(&node).await;
    assert_eq!(
        metric_value(&text, "chat_socket_timeouts_total{phase=\"idle\"}"),
        Some(20.0)
    );
    assert_eq!(
        metric_value(&text, "chat_socket_timeouts_total{phase=\"body\"}"),
        Some(20.0)
    );
}
