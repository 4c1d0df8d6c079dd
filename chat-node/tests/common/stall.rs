//! A TCP proxy in front of a real redis-server that can hold a Pub/Sub request back: while
//! holding, a connection that sends a `SUBSCRIBE` has that request, and everything it sends
//! after it, kept in the proxy (in order) until [`SubscribeStall::release`]; what Redis sends
//! keeps flowing. That is a `SUBSCRIBE` Redis answers late while the same connection goes on
//! delivering messages, as when the request's segment is lost and TCP retransmits it after a
//! timeout that doubles each time, or a sidecar queues it.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct SubscribeStall {
    pub addr: SocketAddr,
    holding: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl SubscribeStall {
    /// Listens on a free loopback port and forwards to `127.0.0.1:<redis_port>`.
    pub async fn start(redis_port: u16) -> SubscribeStall {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (holding, _) = watch::channel(false);
        let watch = holding.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", redis_port)).await else {
                    continue;
                };
                tokio::spawn(forward(client, server, watch.subscribe()));
            }
        });
        SubscribeStall {
            addr,
            holding,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// From now on, hold back every connection's requests from its next `SUBSCRIBE` on.
    pub fn hold(&self) {
        self.holding.send_replace(true);
    }

    /// Sends everything held, in order, and stops holding.
    pub fn release(&self) {
        self.holding.send_replace(false);
    }
}

impl Drop for SubscribeStall {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(client: TcpStream, server: TcpStream, mut holding: watch::Receiver<bool>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match client_read.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let request = &buf[..n];
        let subscribe = request.windows(9).any(|w| w == b"SUBSCRIBE");
        if *holding.borrow() && subscribe && holding.wait_for(|h| !*h).await.is_err() {
            return;
        }
        if server_write.write_all(request).await.is_err() {
            return;
        }
    }
}
