//! WebSocket client side of the benchmark: connecting from a chosen loopback source address,
//! the few frames of protocol v1 (PROTOCOL.md) the benchmark sends and reads, and, for
//! Centrifugo, its connect command (see [`crate::centrifugo`]).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, protocol::frame::coding::CloseCode};
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

use crate::centrifugo;

pub type Ws = WebSocketStream<TcpStream>;

/// The client protocol a server speaks.
#[derive(Clone)]
pub enum Proto {
    /// chat-node's protocol v1 (the reference server speaks the same subset).
    ChatV1,
    /// Centrifugo's protocol v2 (JSON), authenticated with HS256 connection tokens.
    Centrifugo(centrifugo::Auth),
}

impl std::fmt::Debug for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Proto::ChatV1 => "ChatV1",
            Proto::Centrifugo(_) => "Centrifugo",
        })
    }
}

/// Where a server's WebSocket endpoint is, and what it speaks.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub path: String,
    pub proto: Proto,
}

impl Endpoint {
    pub fn url(&self) -> String {
        format!("ws://{}{}", self.addr, self.path)
    }
}

/// How a connection attempt ended when it did not give a WebSocket.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("refused with HTTP {0}")]
    HttpStatus(StatusCode),
    #[error("tcp connect failed: {0}")]
    Tcp(#[source] std::io::Error),
    #[error("websocket handshake failed: {0}")]
    Handshake(#[source] tokio_tungstenite::tungstenite::Error),
    /// Centrifugo's connect command was refused (error reply or close code).
    #[error("connect refused: {0}")]
    Refused(String),
}

impl ConnectError {
    /// A short label for counting failures by kind.
    pub fn label(&self) -> String {
        match self {
            ConnectError::HttpStatus(s) => format!("http_{}", s.as_u16()),
            ConnectError::Tcp(e) => format!("tcp_{:?}", e.kind()),
            ConnectError::Handshake(_) => "handshake".to_owned(),
            ConnectError::Refused(why) => format!("refused_{why}"),
        }
    }
}

/// Small buffers: the load generator holds tens of thousands of mostly idle connections.
fn client_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

/// Opens a WebSocket to `endpoint`, from `source` (port chosen by the kernel) when given; for
/// Centrifugo, also sends the connect command and waits for its reply.
pub async fn connect(endpoint: &Endpoint, source: Option<IpAddr>) -> Result<Ws, ConnectError> {
    let socket = TcpSocket::new_v4().map_err(ConnectError::Tcp)?;
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(ConnectError::Tcp)?;
    }
    let stream = socket
        .connect(endpoint.addr)
        .await
        .map_err(ConnectError::Tcp)?;
    stream.set_nodelay(true).map_err(ConnectError::Tcp)?;
    let mut ws = match client_async_with_config(endpoint.url(), stream, Some(client_config())).await
    {
        Ok((ws, _response)) => ws,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            return Err(ConnectError::HttpStatus(response.status()));
        }
        Err(e) => return Err(ConnectError::Handshake(e)),
    };
    if let Proto::Centrifugo(auth) = &endpoint.proto {
        centrifugo_connect(&mut ws, auth).await?;
    }
    Ok(ws)
}

/// Centrifugo's connect command (id 1) and its reply.
async fn centrifugo_connect(ws: &mut Ws, auth: &centrifugo::Auth) -> Result<(), ConnectError> {
    let command = centrifugo::connect_command(1, &auth.token());
    ws.send(Message::text(command))
        .await
        .map_err(ConnectError::Handshake)?;
    let reply = async {
        while let Some(msg) = ws.next().await {
            match msg.map_err(ConnectError::Handshake)? {
                Message::Text(text) => {
                    for r in centrifugo::replies(text.as_str()) {
                        if let Some(e) = r.error {
                            return Err(ConnectError::Refused(format!("{}_{}", e.code, e.message)));
                        }
                        if r.id == Some(1) && r.connect.is_some() {
                            return Ok(());
                        }
                    }
                }
                Message::Close(frame) => {
                    let code = frame.map_or(CloseCode::Status, |f| f.code);
                    return Err(ConnectError::Refused(format!("close_{}", u16::from(code))));
                }
                _ => {}
            }
        }
        Err(ConnectError::Refused("closed".to_owned()))
    };
    tokio::time::timeout(Duration::from_secs(30), reply)
        .await
        .map_err(|_| ConnectError::Refused("timeout".to_owned()))?
}

/// Frames the benchmark sends.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ClientFrame<'a> {
    Subscribe {
        channel: &'a str,
    },
    Publish {
        channel: &'a str,
        data: &'a Payload<'a>,
        #[serde(rename = "ref")]
        reference: &'a str,
    },
}

/// The `data` of every published message: its send time, so that subscribers can compute
/// publish-to-delivery latency, plus padding to a realistic size.
#[derive(Debug, Serialize, Deserialize)]
pub struct Payload<'a> {
    /// Wall-clock send time, microseconds since the Unix epoch.
    pub t: u64,
    #[serde(borrow, default)]
    pub text: &'a str,
    /// Centrifugo only: the message's sequence number on its channel, set by its one publisher
    /// (Centrifugo's publish reply carries no offset, and with history off neither do its
    /// publications). The other designs use the server's offsets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s: Option<u64>,
}

/// Frames the benchmark reads; fields it does not need are ignored.
#[derive(Debug, Deserialize)]
pub struct ServerFrame<'a> {
    #[serde(rename = "type")]
    pub kind: &'a str,
    #[serde(default)]
    pub channel: Option<&'a str>,
    #[serde(default)]
    pub offset: Option<&'a str>,
    #[serde(default, rename = "ref")]
    pub reference: Option<&'a str>,
    #[serde(default)]
    pub code: Option<&'a str>,
    #[serde(default, borrow)]
    pub data: Option<Payload<'a>>,
}

/// A message offset (`<ms>-<seq>`, a Redis Stream id); ordered like the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Offset(pub u64, pub u64);

impl Offset {
    pub fn parse(s: &str) -> Option<Offset> {
        let (ms, seq) = s.split_once('-')?;
        Some(Offset(ms.parse().ok()?, seq.parse().ok()?))
    }
}

/// Microseconds since the Unix epoch, the clock every load process shares.
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_order_like_stream_ids() {
        let a = Offset::parse("1732752000123-0").unwrap();
        let b = Offset::parse("1732752000123-1").unwrap();
        let c = Offset::parse("1732752000124-0").unwrap();
        assert!(a < b && b < c);
        assert_eq!(Offset::parse("nope"), None);
    }

    #[test]
    fn reads_a_message_frame() {
        let raw = r#"{"type":"message","channel":"bench:c-1","offset":"5-0","from":"x","ts":1,"data":{"t":42,"text":"hi"}}"#;
        let f: ServerFrame<'_> = serde_json::from_str(raw).unwrap();
        assert_eq!(f.kind, "message");
        assert_eq!(f.channel, Some("bench:c-1"));
        assert_eq!(f.data.unwrap().t, 42);
    }

    #[test]
    fn writes_a_publish_frame() {
        let data = Payload {
            t: 7,
            text: "x",
            s: None,
        };
        let s = serde_json::to_string(&ClientFrame::Publish {
            channel: "c",
            data: &data,
            reference: "3",
        })
        .unwrap();
        assert_eq!(
            s,
            r#"{"type":"publish","channel":"c","data":{"t":7,"text":"x"},"ref":"3"}"#
        );
    }
}
