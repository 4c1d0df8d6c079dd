//! Shared test helpers: an in-process node on port 0, a WebSocket client, JWTs, metrics.
#![allow(dead_code)]

pub mod binary;
pub mod stall;

use std::net::SocketAddr;
use std::time::Duration;

use chat_node::Config;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for something that should happen promptly.
pub const WAIT: Duration = Duration::from_secs(10);

/// A chat-node running in this test process on 127.0.0.1 port 0; stopped on drop.
pub struct Node {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The server API port, when started with [`Node::start_with_api`].
    pub api: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), chat_node::ServeError>>>,
}

impl Node {
    /// Starts a node with extra flags (e.g. `["--redis-url", url]`).
    pub async fn start(args: &[&str]) -> Node {
        Node::launch(args, false).await
    }

    /// Starts a node that serves the server API too (`args` must name `--api-key-file`).
    pub async fn start_with_api(args: &[&str]) -> Node {
        Node::launch(args, true).await
    }

    async fn launch(args: &[&str], with_api: bool) -> Node {
        let mut all: Vec<&str> = args.to_vec();
        if !args.contains(&"--drain-timeout") {
            all.extend(["--drain-timeout", "200ms"]);
        }
        let config = Config::from_args(all).expect("valid test flags");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (addr, admin_addr) = (listener.local_addr().unwrap(), admin.local_addr().unwrap());
        let api = match with_api {
            true => Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
            false => None,
        };
        let api_addr = api.as_ref().map(|l| l.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(chat_node::run_with_api(
            listener,
            admin,
            api,
            config,
            async move {
                let _ = stopped.await;
            },
        ));
        Node {
            addr,
            admin: admin_addr,
            api: api_addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub async fn connect(&self) -> Client {
        Client::connect(&self.ws_url(), &[])
            .await
            .expect("websocket handshake")
    }

    pub async fn metrics(&self) -> String {
        get_text(&self.admin_url("/metrics")).await
    }

    /// Waits until `/metrics` shows `series` (exact line prefix) with a value >= `at_least`.
    pub async fn wait_metric(&self, series: &str, at_least: f64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let value = metric_value(&self.metrics().await, series);
            if value.is_some_and(|v| v >= at_least) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{series} never reached {at_least} (last {value:?})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The status of `GET /healthz` (liveness).
    pub async fn healthz(&self) -> u16 {
        reqwest::get(self.admin_url("/healthz"))
            .await
            .expect("/healthz answers")
            .status()
            .as_u16()
    }

    /// Waits until `/readyz` answers `status`.
    pub async fn wait_ready(&self, status: u16) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let got = reqwest::get(self.admin_url("/readyz"))
                .await
                .map(|r| r.status().as_u16())
                .ok();
            if got == Some(status) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "/readyz never answered {status} (last {got:?})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the node (drain) and waits for `run` to return.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("node stops in time")
                .expect("node task")
                .expect("node run");
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The value of the first series line starting with `series` (e.g. `chat_redis_up` or
/// `websocket_errors_total{code="bad_json"}`).
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A WebSocket test client.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub welcome: Value,
    /// Frames read while looking for another one (e.g. a message before its ack).
    backlog: std::collections::VecDeque<Value>,
}

/// The HTTP status of a refused handshake, or 101.
pub async fn handshake_status(url: &str, headers: &[(&str, &str)]) -> u16 {
    match Client::connect(url, headers).await {
        Ok(_) => 101,
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("unexpected handshake error {e}"),
    }
}

impl Client {
    pub async fn connect(
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Client, tungstenite::Error> {
        let mut request = url.into_client_request()?;
        for (name, value) in headers {
            let name = tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap();
            request
                .headers_mut()
                .insert(name, HeaderValue::from_str(value).unwrap());
        }
        let (ws, _) = tokio_tungstenite::connect_async(request).await?;
        let mut client = Client {
            ws,
            welcome: Value::Null,
            backlog: Default::default(),
        };
        client.welcome = client.recv().await;
        assert_eq!(client.welcome["type"], "welcome", "first frame is welcome");
        Ok(client)
    }

    /// A client again from a socket taken apart (e.g. split to write from another task).
    pub fn from_parts(ws: WebSocketStream<MaybeTlsStream<TcpStream>>, welcome: Value) -> Client {
        Client {
            ws,
            welcome,
            backlog: Default::default(),
        }
    }

    pub async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .expect("send frame");
    }

    pub async fn send_raw(&mut self, message: Message) {
        self.ws.send(message).await.expect("send frame");
    }

    /// Next JSON text frame (pings answered on the way).
    pub async fn recv(&mut self) -> Value {
        if let Some(frame) = self.backlog.pop_front() {
            return frame;
        }
        self.recv_wire().await
    }

    async fn recv_wire(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame in time")
                .expect("connection open")
                .expect("frame ok");
            match message {
                Message::Text(text) => return serde_json::from_str(&text).expect("JSON frame"),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Next frame of `kind`, skipping others.
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let frame = self.recv().await;
            if frame["type"] == kind {
                return frame;
            }
        }
    }

    /// The offsets of the next `n` `message` frames, in arrival order.
    pub async fn recv_offsets(&mut self, n: usize) -> Vec<String> {
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            let frame = self.recv_type("message").await;
            got.push(frame["offset"].as_str().expect("offset").to_owned());
        }
        got
    }

    /// Reads until the server closes; returns the close code.
    pub async fn closed(&mut self) -> u16 {
        loop {
            let next = tokio::time::timeout(WAIT * 2, self.ws.next())
                .await
                .expect("close in time");
            match next {
                Some(Ok(Message::Close(Some(CloseFrame { code, .. })))) => return u16::from(code),
                Some(Ok(Message::Close(None))) => return 1005,
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("connection failed before a close frame: {e}"),
                None => panic!("connection ended without a close frame"),
            }
        }
    }

    pub async fn subscribe(&mut self, channel: &str) -> Value {
        self.send(json!({"type":"subscribe","channel":channel}))
            .await;
        let frame = self.recv_type("subscribed").await;
        assert_eq!(frame["channel"], channel);
        frame
    }

    /// Publishes and returns the ack's offset.
    pub async fn publish(&mut self, channel: &str, data: Value) -> String {
        let reference = format!("r-{}", fastrand::u32(..));
        self.send(json!({"type":"publish","channel":channel,"data":data,"ref":reference}))
            .await;
        loop {
            let frame = self.recv_wire().await;
            if frame["type"] == "ack" && frame["ref"] == reference.as_str() {
                return frame["offset"].as_str().unwrap().to_owned();
            }
            assert_ne!(frame["type"], "error", "publish refused: {frame}");
            self.backlog.push_back(frame);
        }
    }

    /// Sends `frame` with a fresh `ref` and returns the reply carrying it (an answer or an
    /// `error`); frames read meanwhile stay in the backlog for `recv`.
    pub async fn request(&mut self, mut frame: Value) -> Value {
        let reference = format!("q-{}", fastrand::u32(..));
        frame["ref"] = json!(reference);
        self.send(frame).await;
        loop {
            let reply = self.recv_wire().await;
            if reply["ref"] == reference.as_str() {
                return reply;
            }
            self.backlog.push_back(reply);
        }
    }

    /// Sends a frame and returns the error code of the reply.
    pub async fn expect_error(&mut self, frame: Value) -> String {
        self.send(frame).await;
        let reply = self.recv_type("error").await;
        reply["code"].as_str().unwrap().to_owned()
    }
}

/// An HS256 secret long enough for the node's minimum (32 bytes).
pub const SECRET: &str = "test-secret-0123456789abcdef0123456789";

/// An HS256 token with `claims`.
pub fn token(secret: &str, claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// POST /api/publish; returns status and JSON body.
pub async fn http_publish(node: &Node, body: &str, bearer: Option<&str>) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(node.http("/api/publish"))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// `POST /api/<method>` on a server API port with `Authorization: <authorization>` (e.g.
/// `apikey <key>`); returns status and JSON body.
pub async fn api_call(
    api: SocketAddr,
    authorization: Option<&str>,
    method: &str,
    body: &str,
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("http://{api}/api/{method}"))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let response = request.send().await.expect("server API answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The body of a GET, as text (panics on any error: tests only).
pub async fn get_text(url: &str) -> String {
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

/// An SSE stream read event by event: (`event`, `data` as JSON); keep-alive comments skipped.
pub struct SseReader {
    stream: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>>>>,
    buffer: String,
}

impl SseReader {
    pub async fn open(node: &Node, query: &str) -> SseReader {
        let response = reqwest::get(node.http(&format!("/sse?{query}")))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        SseReader {
            stream: Box::pin(response.bytes_stream()),
            buffer: String::new(),
        }
    }

    pub async fn next(&mut self) -> (String, Value) {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut event, mut data) = (String::from("message"), None);
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data = Some(serde_json::from_str(v.trim()).unwrap());
                    }
                }
                match data {
                    Some(data) => return (event, data),
                    None => continue,
                }
            }
            let chunk = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .unwrap_or_else(|_| panic!("an SSE event in time; buffer {:?}", self.buffer))
                .expect("the stream stays open")
                .unwrap();
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }
}
