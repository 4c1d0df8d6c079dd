//! A protocol v1 WebSocket client, as an application would use chat-node through an ingress:
//! it can send a Host header, keeps the ingress's affinity cookie, and knows which node
//! answered (the `welcome` frame).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a frame that should come promptly may take.
pub const FRAME: Duration = Duration::from_secs(10);

/// A connected client.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The node that sent `welcome` (its pod name).
    pub node: String,
    /// This connection's client id (from `welcome`).
    pub id: String,
    /// `join`/`leave` frames of presence-enabled channels, kept aside in arrival order so that
    /// the calls waiting for a reply are not disturbed by them.
    pub presence: std::collections::VecDeque<Value>,
}

/// How a connection ended, or the next frame.
#[derive(Debug)]
pub enum Frame {
    Json(Value),
    Closed(Option<u16>),
}

impl Client {
    /// Connects to `url` (e.g. `ws://127.0.0.1/ws`), with `host` as the Host header and `cookie`
    /// (`name=value`) when given, and reads the `welcome` frame.
    pub async fn connect(
        url: &str,
        host: Option<&str>,
        cookie: Option<&str>,
    ) -> Result<Client, String> {
        let mut request = url.into_client_request().map_err(|e| e.to_string())?;
        if let Some(host) = host {
            request.headers_mut().insert(
                "Host",
                HeaderValue::from_str(host).map_err(|e| e.to_string())?,
            );
        }
        if let Some(cookie) = cookie {
            request.headers_mut().insert(
                "Cookie",
                HeaderValue::from_str(cookie).map_err(|e| e.to_string())?,
            );
        }
        let (ws, _response) =
            tokio::time::timeout(FRAME, tokio_tungstenite::connect_async(request))
                .await
                .map_err(|_| format!("handshake with {url} timed out"))?
                .map_err(|e| format!("handshake with {url}: {e}"))?;
        let mut client = Client {
            ws,
            node: String::new(),
            id: String::new(),
            presence: Default::default(),
        };
        match client.next().await {
            Frame::Json(welcome) if welcome["type"] == "welcome" => {
                client.node = welcome["node"].as_str().unwrap_or_default().to_owned();
                client.id = welcome["client"].as_str().unwrap_or_default().to_owned();
                Ok(client)
            }
            other => Err(format!("expected welcome, got {other:?}")),
        }
    }

    /// [`Client::connect`], retried for up to 30 s until the `welcome` comes from a pod of the
    /// ChatCluster `cluster` (its pods are `<cluster>-...`): an ingress learns a new route a
    /// moment after the pods behind it turn Ready, and until then a request for the new host
    /// gets a 404, or, while another test runs a host-less Ingress (which answers every host
    /// name), reaches that test's cluster.
    pub async fn connect_when_routed(
        url: &str,
        host: Option<&str>,
        cookie: Option<&str>,
        cluster: &str,
    ) -> Client {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let prefix = format!("{cluster}-");
        loop {
            let outcome = match Client::connect(url, host, cookie).await {
                Ok(client) if client.node.starts_with(&prefix) => return client,
                Ok(client) => {
                    let node = client.node.clone();
                    client.close().await;
                    format!("reached {node}, not a pod of {cluster}")
                }
                Err(err) => err,
            };
            if tokio::time::Instant::now() > deadline {
                panic!("no route to {cluster} at {url} (Host {host:?}) after 30 s: {outcome}")
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Sends one JSON frame.
    pub async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .expect("send a frame");
    }

    /// The next JSON frame or the close (Pings are answered by the library).
    pub async fn next(&mut self) -> Frame {
        self.next_within(FRAME)
            .await
            .unwrap_or_else(|| panic!("no frame within {FRAME:?}"))
    }

    /// [`Client::next`] with a deadline; `None` when nothing came. `join`/`leave` frames go to
    /// [`Client::presence`].
    pub async fn next_within(&mut self, timeout: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.next_frame_before(deadline).await? {
                Frame::Json(f) if f["type"] == "join" || f["type"] == "leave" => {
                    self.presence.push_back(f)
                }
                frame => return Some(frame),
            }
        }
    }

    /// The next `join` or `leave` frame, waiting up to [`FRAME`] for one (any other frame in the
    /// meantime is a failure).
    pub async fn presence_event(&mut self) -> Value {
        if let Some(event) = self.presence.pop_front() {
            return event;
        }
        match self
            .next_frame_before(tokio::time::Instant::now() + FRAME)
            .await
        {
            Some(Frame::Json(f)) if f["type"] == "join" || f["type"] == "leave" => f,
            other => panic!("expected a join or leave frame, got {other:?}"),
        }
    }

    async fn next_frame_before(&mut self, deadline: tokio::time::Instant) -> Option<Frame> {
        loop {
            let message = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            match message {
                Some(Ok(Message::Text(text))) => {
                    return Some(Frame::Json(
                        serde_json::from_str(&text).expect("JSON frame"),
                    ));
                }
                Some(Ok(Message::Close(frame))) => {
                    return Some(Frame::Closed(frame.map(|f| u16::from(f.code))));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Some(Frame::Closed(None)),
            }
        }
    }

    /// Subscribes (with `since` when given) and returns the `subscribed` frame; messages that
    /// arrive before it are returned too.
    pub async fn subscribe(&mut self, channel: &str, since: Option<&str>) -> (Value, Vec<Value>) {
        let mut frame = json!({"type": "subscribe", "channel": channel});
        if let Some(since) = since {
            frame["since"] = json!(since);
        }
        self.send(frame).await;
        let mut early = Vec::new();
        loop {
            match self.next().await {
                Frame::Json(f) if f["type"] == "subscribed" => return (f, early),
                Frame::Json(f) if f["type"] == "message" => early.push(f),
                other => panic!("expected subscribed on {channel}, got {other:?}"),
            }
        }
    }

    /// Publishes `data` with `ref` and waits for its ack (messages on the way are returned).
    pub async fn publish(
        &mut self,
        channel: &str,
        data: Value,
        reference: &str,
    ) -> (String, Vec<Value>) {
        self.send(json!({"type": "publish", "channel": channel, "data": data, "ref": reference}))
            .await;
        let mut seen = Vec::new();
        loop {
            match self.next().await {
                Frame::Json(f) if f["type"] == "ack" && f["ref"] == reference => {
                    return (f["offset"].as_str().unwrap_or_default().to_owned(), seen);
                }
                Frame::Json(f) if f["type"] == "message" => seen.push(f),
                other => panic!("expected the ack of {reference}, got {other:?}"),
            }
        }
    }

    /// The next `message` frame (skipping nothing else: anything else is a failure).
    pub async fn message(&mut self) -> Value {
        match self.next().await {
            Frame::Json(f) if f["type"] == "message" => f,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// Closes the connection normally.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
