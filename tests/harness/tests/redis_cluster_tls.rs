//! `RedisOptions::tls` and `RedisCluster` start real servers and stop them.

use std::time::Duration;

use test_harness::redis::cluster::{RedisCluster, SLOTS};
use test_harness::redis::{RedisOptions, RedisServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends an inline PING; Some(reply) when the port answers in plain RESP.
async fn plain_ping(port: u16) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    stream.write_all(b"PING\r\n").await.ok()?;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[tokio::test]
async fn tls_server_has_a_ca_and_speaks_tls_on_its_url_port() {
    let server = RedisServer::start_with(RedisOptions::default().tls()).await;
    assert_eq!(
        server.url(),
        format!("rediss://127.0.0.1:{}/", server.port())
    );
    assert_ne!(server.port(), server.plain_port());
    let ca = std::fs::read_to_string(server.ca_path().unwrap()).unwrap();
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(
        plain_ping(server.plain_port()).await.as_deref(),
        Some("+PONG\r\n")
    );
    assert_ne!(
        plain_ping(server.port()).await.as_deref(),
        Some("+PONG\r\n")
    );
    assert_eq!(server.command(&["PING"]).await.unwrap(), "PONG");
}

#[tokio::test]
async fn cluster_of_three_serves_every_slot_and_survives_a_node_restart() {
    let mut cluster = RedisCluster::start(3).await;
    assert_eq!(cluster.nodes().len(), 3);
    let url = cluster.url();
    assert!(url.starts_with("redis+cluster://127.0.0.1:"), "{url}");
    assert_eq!(url.matches(',').count(), 2);
    for node in cluster.nodes() {
        let info = node.command(&["CLUSTER", "INFO"]).await.unwrap();
        assert!(info.contains("cluster_state:ok"), "{info}");
        assert!(
            info.contains(&format!("cluster_slots_assigned:{SLOTS}")),
            "{info}"
        );
    }
    // A key is written on the node the harness says owns its slot; others redirect.
    let slot = cluster.key_slot("{probe}").await;
    let owner = cluster.node_for_slot(slot);
    let nodes = cluster.nodes();
    assert_eq!(
        nodes[owner]
            .command(&["SET", "{probe}", "1"])
            .await
            .unwrap(),
        "OK"
    );
    let other = (owner + 1) % 3;
    let moved = nodes[other].command(&["GET", "{probe}"]).await.unwrap_err();
    assert!(moved.to_string().contains("MOVED"), "{moved}");

    cluster.node_mut(owner).kill();
    assert!(plain_ping(cluster.nodes()[owner].port()).await.is_none());
    cluster.restart_node(owner).await;
    let info = cluster.nodes()[owner]
        .command(&["CLUSTER", "INFO"])
        .await
        .unwrap();
    assert!(info.contains("cluster_state:ok"), "{info}");
}

#[tokio::test]
async fn dropping_a_cluster_stops_every_server() {
    let cluster = RedisCluster::start(2).await;
    let ports: Vec<u16> = cluster.nodes().iter().map(RedisServer::port).collect();
    drop(cluster);
    for port in ports {
        assert!(
            plain_ping(port).await.is_none(),
            "port {port} still answers"
        );
    }
}
