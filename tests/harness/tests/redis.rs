//! The harness's redis-server: starts, answers, stops, restarts on the same port, and dies with
//! the test process.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use test_harness::redis::{RedisOptions, RedisServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends one inline command and returns the first reply line.
async fn command(port: u16, line: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream.write_all(format!("{line}\r\n").as_bytes()).await?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 512];
    while !reply.ends_with(b"\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&reply).trim_end().to_owned())
}

async fn refuses_connections(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).await.is_err()
}

#[tokio::test]
async fn start_answers_and_url_names_the_port() {
    let redis = RedisServer::start().await;
    assert_ne!(redis.port(), 0);
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}/", redis.port()));
    assert_eq!(command(redis.port(), "SET k v").await.unwrap(), "+OK");
    assert_eq!(command(redis.port(), "GET k").await.unwrap(), "$1\r\nv");
}

#[tokio::test]
async fn two_servers_get_different_ports() {
    let a = RedisServer::start().await;
    let b = RedisServer::start().await;
    assert_ne!(a.port(), b.port());
}

#[tokio::test]
async fn stop_then_restart_on_the_same_port_with_empty_data() {
    let mut redis = RedisServer::start().await;
    let port = redis.port();
    command(port, "SET k v").await.unwrap();
    redis.stop();
    assert!(!redis.is_running());
    assert!(
        refuses_connections(port).await,
        "stopped server still accepts"
    );
    redis.restart().await;
    assert_eq!(redis.port(), port);
    assert!(redis.is_running());
    assert_eq!(command(port, "PING").await.unwrap(), "+PONG");
    assert_eq!(
        command(port, "GET k").await.unwrap(),
        "$-1",
        "data survived"
    );
}

#[tokio::test]
async fn restart_of_a_running_server_and_after_kill() {
    let mut redis = RedisServer::start().await;
    let port = redis.port();
    redis.restart().await;
    assert_eq!(command(port, "PING").await.unwrap(), "+PONG");
    redis.kill();
    assert!(
        refuses_connections(port).await,
        "killed server still accepts"
    );
    redis.restart().await;
    assert_eq!(command(port, "PING").await.unwrap(), "+PONG");
}

#[tokio::test]
async fn drop_stops_the_server() {
    let redis = RedisServer::start().await;
    let port = redis.port();
    drop(redis);
    assert!(
        refuses_connections(port).await,
        "dropped server still accepts"
    );
}

#[tokio::test]
async fn password_is_required_and_in_the_url() {
    let redis = RedisServer::start_with(RedisOptions::default().password("s3cret")).await;
    assert_eq!(
        redis.url(),
        format!("redis://:s3cret@127.0.0.1:{}/", redis.port())
    );
    let reply = command(redis.port(), "GET k").await.unwrap();
    assert!(reply.starts_with("-NOAUTH"), "{reply}");
}

#[tokio::test]
async fn extra_args_reach_the_server() {
    let redis =
        RedisServer::start_with(RedisOptions::default().arg("--maxclients").arg("77")).await;
    let mut stream = TcpStream::connect(("127.0.0.1", redis.port()))
        .await
        .unwrap();
    stream
        .write_all(b"CONFIG GET maxclients\r\n")
        .await
        .unwrap();
    let mut reply = String::new();
    let mut buf = [0u8; 256];
    while !reply.contains("77") {
        let n = stream.read(&mut buf).await.unwrap();
        assert_ne!(n, 0, "closed before reply: {reply:?}");
        reply.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

#[tokio::test]
async fn missing_binary_is_a_clear_error() {
    let err =
        RedisServer::try_start_with(RedisOptions::default().program("/nonexistent/redis-server"))
            .await
            .unwrap_err();
    let message = err.to_string();
    assert!(message.contains("hack/setup.sh"), "{message}");
}

/// Child half of `server_dies_with_the_test_process`: starts a server, prints its port, and
/// waits to be killed. Never run on its own.
#[tokio::test]
#[ignore = "helper run by server_dies_with_the_test_process"]
async fn child_holds_a_server_until_killed() {
    if std::env::var_os("CHATCLUSTER_HARNESS_CHILD").is_none() {
        return;
    }
    let redis = RedisServer::start().await;
    println!("DIR={}", redis.log_path().parent().unwrap().display());
    println!("PORT={}", redis.port());
    tokio::time::sleep(Duration::from_secs(600)).await;
    drop(redis);
}

#[tokio::test]
async fn server_dies_with_the_test_process() {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_holds_a_server_until_killed",
            "--ignored",
            "--nocapture",
        ])
        .env("CHATCLUSTER_HARNESS_CHILD", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok);
    let dir = lines
        .find_map(|line| line.strip_prefix("DIR=").map(std::path::PathBuf::from))
        .expect("child printed its redis directory");
    let port: u16 = lines
        .find_map(|line| line.strip_prefix("PORT=").map(|p| p.parse().unwrap()))
        .expect("child printed its redis port");
    assert_eq!(command(port, "PING").await.unwrap(), "+PONG");
    // SIGKILL: no destructor runs in the child; only the watchdog can clean up.
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !refuses_connections(port).await {
        assert!(
            Instant::now() < deadline,
            "redis-server on {port} outlived its test process"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Its directory goes too, though no destructor ran.
    while dir.exists() {
        assert!(Instant::now() < deadline, "{} left behind", dir.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
