//! WebSocket protocol v1: the frames clients send, the frames the server sends, error codes
//! and close codes. Parsing never panics and always names what was wrong.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::broker::MAX_EPOCH_LEN;
use crate::channel;
use crate::offset::Offset;

/// Close codes of the contract.
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    /// The client broke RFC 6455 (unmasked frame, oversized or fragmented control frame,
    /// reserved bits or opcodes, a continuation out of place, a bad close frame).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
    pub const HEARTBEAT_TIMEOUT: u16 = 4000;
    pub const SLOW_CONSUMER: u16 = 4001;
    /// Disconnected through the server API: the client must not reconnect by itself.
    pub const DISCONNECTED: u16 = 4002;
}

/// Error codes carried by `error` frames (and HTTP error bodies).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    BadJson,
    BadRequest,
    BadFrame,
    UnknownType,
    BadChannel,
    Forbidden,
    TooManySubscriptions,
    RateLimited,
    Unavailable,
    Internal,
    Unauthorized,
    NotAvailable,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 12] = [
        ErrorCode::BadJson,
        ErrorCode::BadRequest,
        ErrorCode::BadFrame,
        ErrorCode::UnknownType,
        ErrorCode::BadChannel,
        ErrorCode::Forbidden,
        ErrorCode::TooManySubscriptions,
        ErrorCode::RateLimited,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
        ErrorCode::Unauthorized,
        ErrorCode::NotAvailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::BadChannel => "bad_channel",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotAvailable => "not_available",
        }
    }
}

/// A refused client frame: the code, a human message, and the `ref` to echo if one was readable.
#[derive(Debug)]
pub struct FrameError {
    pub code: ErrorCode,
    pub message: String,
    pub reference: Option<String>,
}

impl FrameError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        FrameError {
            code,
            message: message.into(),
            reference: None,
        }
    }
}

/// What a client asked for.
#[derive(Debug)]
pub enum Request {
    Subscribe {
        channel: String,
        since: Option<Offset>,
        /// The epoch `since` belongs to (from an earlier `subscribed`); another epoch than the
        /// channel's current one is a gap.
        epoch: Option<String>,
        /// Recover the newest `last` messages (never with `since`); capped by the node.
        last: Option<u64>,
        /// A subscription token (a JWT for this channel and the connection's user): needed in
        /// a private namespace, and a grant of its own elsewhere.
        token: Option<Box<str>>,
    },
    History {
        channel: String,
        /// Capped by the node; absent = the cap.
        limit: Option<u64>,
        since: Option<Offset>,
        before: Option<Offset>,
        reverse: bool,
    },
    Unsubscribe {
        channel: String,
    },
    /// Who is subscribed to the channel (namespaces with presence only).
    Presence {
        channel: String,
    },
    /// How many clients and users are subscribed to the channel.
    PresenceStats {
        channel: String,
    },
    Publish {
        channel: String,
        data: Box<RawValue>,
    },
    /// A liveness check the client can see (browsers cannot see WebSocket Pings): answered
    /// with `pong` and the same `ref`.
    Ping,
}

/// A parsed client frame: the request and its optional `ref`.
#[derive(Debug)]
pub struct ClientFrame {
    pub request: Request,
    pub reference: Option<String>,
}

/// Every field borrowed raw, so an invalid field type is `bad_request`, not `bad_json`, and
/// `data` is kept as the client's bytes (never re-encoded).
#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    channel: Option<&'a RawValue>,
    #[serde(borrow, default)]
    since: Option<&'a RawValue>,
    #[serde(borrow, default)]
    epoch: Option<&'a RawValue>,
    #[serde(borrow, default)]
    last: Option<&'a RawValue>,
    #[serde(borrow, default)]
    limit: Option<&'a RawValue>,
    #[serde(borrow, default)]
    before: Option<&'a RawValue>,
    #[serde(borrow, default)]
    reverse: Option<&'a RawValue>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    token: Option<&'a RawValue>,
    #[serde(rename = "ref", borrow, default)]
    reference: Option<&'a RawValue>,
}

const MAX_REF_LEN: usize = 128;

/// Longest subscription token accepted (a JWT with a few claims is a few hundred bytes).
pub const MAX_SUBSCRIPTION_TOKEN_LEN: usize = 4096;

/// Whether `json` (valid JSON) nests arrays and objects more than `max` levels deep (`1` and
/// `"[["` are 0 levels, `{"a":1}` is 1, `[[1]]` is 2). A scan of the bytes, without recursion
/// and without building anything, so a 30,000-level document costs one pass and no stack.
pub fn nests_deeper_than(json: &str, max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in json.as_bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

fn string_field(raw: Option<&RawValue>, name: &str) -> Result<Option<String>, FrameError> {
    match raw {
        None => Ok(None),
        Some(raw) if raw.get() == "null" => Ok(None),
        Some(raw) => serde_json::from_str::<String>(raw.get())
            .map(Some)
            .map_err(|_| {
                FrameError::new(ErrorCode::BadRequest, format!("`{name}` must be a string"))
            }),
    }
}

fn count_field(raw: Option<&RawValue>, name: &str) -> Result<Option<u64>, FrameError> {
    match raw {
        None => Ok(None),
        Some(raw) if raw.get() == "null" => Ok(None),
        Some(raw) => serde_json::from_str::<u64>(raw.get())
            .map(Some)
            .map_err(|_| {
                FrameError::new(
                    ErrorCode::BadRequest,
                    format!("`{name}` must be a whole number, 0 or more"),
                )
            }),
    }
}

fn offset_field(raw: Option<&RawValue>, name: &str) -> Result<Option<Offset>, FrameError> {
    match string_field(raw, name)? {
        None => Ok(None),
        Some(s) => s
            .parse::<Offset>()
            .map(Some)
            .map_err(|e| FrameError::new(ErrorCode::BadRequest, format!("bad `{name}`: {e}"))),
    }
}

/// Parses one text frame of protocol v1; `data` may nest at most `max_depth` levels.
pub fn parse_client_frame(text: &str, max_depth: usize) -> Result<ClientFrame, FrameError> {
    let raw: RawFrame<'_> = serde_json::from_str(text).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            FrameError::new(ErrorCode::BadJson, "frame is not valid JSON")
        } else {
            FrameError::new(
                ErrorCode::BadRequest,
                "frame must be a JSON object with string fields",
            )
        }
    })?;
    let reference = string_field(raw.reference, "ref")?;
    if reference.as_ref().is_some_and(|r| r.len() > MAX_REF_LEN) {
        return Err(FrameError::new(
            ErrorCode::BadRequest,
            "`ref` is longer than 128 bytes",
        ));
    }
    let with_ref = |mut e: FrameError| {
        e.reference = reference.clone();
        e
    };
    let kind = string_field(raw.kind, "type")
        .map_err(with_ref)?
        .ok_or_else(|| with_ref(FrameError::new(ErrorCode::BadRequest, "missing `type`")))?;
    let channel = || -> Result<String, FrameError> {
        let name = string_field(raw.channel, "channel")?
            .ok_or_else(|| FrameError::new(ErrorCode::BadRequest, "missing `channel`"))?;
        if !channel::is_valid(&name) {
            return Err(FrameError::new(
                ErrorCode::BadChannel,
                "channel must be 1-128 characters of A-Z a-z 0-9 _ - . : / #",
            ));
        }
        Ok(name)
    };
    let request = match kind.as_str() {
        "subscribe" => {
            let channel = channel().map_err(with_ref)?;
            let since = offset_field(raw.since, "since").map_err(with_ref)?;
            let last = count_field(raw.last, "last").map_err(with_ref)?;
            if since.is_some() && last.is_some() {
                return Err(with_ref(FrameError::new(
                    ErrorCode::BadRequest,
                    "give `since` or `last`, not both",
                )));
            }
            let epoch = string_field(raw.epoch, "epoch").map_err(with_ref)?;
            if epoch.as_ref().is_some_and(|e| e.len() > MAX_EPOCH_LEN) {
                return Err(with_ref(FrameError::new(
                    ErrorCode::BadRequest,
                    format!("`epoch` is longer than {MAX_EPOCH_LEN} bytes"),
                )));
            }
            let token = string_field(raw.token, "token").map_err(with_ref)?;
            if token
                .as_ref()
                .is_some_and(|t| t.len() > MAX_SUBSCRIPTION_TOKEN_LEN)
            {
                return Err(with_ref(FrameError::new(
                    ErrorCode::BadRequest,
                    format!("`token` is longer than {MAX_SUBSCRIPTION_TOKEN_LEN} bytes"),
                )));
            }
            Request::Subscribe {
                channel,
                since,
                epoch,
                last,
                token: token.map(String::into_boxed_str),
            }
        }
        "history" => {
            let channel = channel().map_err(with_ref)?;
            let reverse = match raw.reverse.map(RawValue::get) {
                None | Some("null" | "false") => false,
                Some("true") => true,
                Some(_) => {
                    return Err(with_ref(FrameError::new(
                        ErrorCode::BadRequest,
                        "`reverse` must be true or false",
                    )));
                }
            };
            Request::History {
                channel,
                limit: count_field(raw.limit, "limit").map_err(with_ref)?,
                since: offset_field(raw.since, "since").map_err(with_ref)?,
                before: offset_field(raw.before, "before").map_err(with_ref)?,
                reverse,
            }
        }
        "unsubscribe" => Request::Unsubscribe {
            channel: channel().map_err(with_ref)?,
        },
        "presence" => Request::Presence {
            channel: channel().map_err(with_ref)?,
        },
        "presence_stats" => Request::PresenceStats {
            channel: channel().map_err(with_ref)?,
        },
        "publish" => {
            let channel = channel().map_err(with_ref)?;
            let data = raw.data.ok_or_else(|| {
                with_ref(FrameError::new(ErrorCode::BadRequest, "missing `data`"))
            })?;
            if nests_deeper_than(data.get(), max_depth) {
                return Err(with_ref(FrameError::new(
                    ErrorCode::BadRequest,
                    format!("`data` nests deeper than {max_depth} levels"),
                )));
            }
            Request::Publish {
                channel,
                data: data.to_owned(),
            }
        }
        "ping" => Request::Ping,
        _ => {
            return Err(with_ref(FrameError::new(
                ErrorCode::UnknownType,
                "`type` must be subscribe, unsubscribe, publish, history, presence, presence_stats or ping",
            )));
        }
    };
    Ok(ClientFrame { request, reference })
}

/// Frames the server sends. Serialized once; `message` frames are shared by all local
/// subscribers of a channel.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerFrame<'a> {
    Welcome {
        node: &'a str,
        client: &'a str,
        /// The heartbeat interval in whole seconds (v1; 0 below one second).
        heartbeat: u64,
        /// The same interval in milliseconds, exact: a client checks liveness by it.
        heartbeat_ms: u64,
    },
    /// `offset` and `epoch` are `None` in a namespace without history (it has neither).
    Subscribed {
        channel: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<Offset>,
        recovered: usize,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        gap: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<&'a str>,
    },
    Unsubscribed {
        channel: &'a str,
    },
    /// `clients`: a JSON array of presence entries.
    Presence {
        channel: &'a str,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
        clients: &'a RawValue,
        total: usize,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        truncated: bool,
    },
    #[serde(rename = "presence_stats")]
    PresenceStats {
        channel: &'a str,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
        clients: usize,
        users: usize,
    },
    /// `info`: the presence entry of the client that subscribed.
    Join {
        channel: &'a str,
        info: &'a RawValue,
    },
    /// `info`: the presence entry of the client that unsubscribed or disconnected.
    Leave {
        channel: &'a str,
        info: &'a RawValue,
    },
    /// `offset` is left out for `0-0` (a namespace without history).
    Message {
        channel: &'a str,
        #[serde(skip_serializing_if = "Offset::is_zero")]
        offset: Offset,
        from: &'a str,
        ts: u64,
        data: &'a RawValue,
    },
    Ack {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
        #[serde(skip_serializing_if = "Offset::is_zero")]
        offset: Offset,
    },
    Error {
        code: &'static str,
        message: &'a str,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
    },
    /// The answer to a client's `ping`.
    Pong {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
    },
}

impl ServerFrame<'_> {
    pub fn to_json(&self) -> String {
        // Serializing these plain structs cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> ErrorCode {
        parse_client_frame(text, 32).unwrap_err().code
    }

    #[test]
    fn nesting_depth() {
        assert!(!nests_deeper_than("1", 0));
        assert!(!nests_deeper_than(r#""[[{{""#, 0));
        assert!(!nests_deeper_than(r#"{"a":"\"[{"}"#, 1));
        assert!(nests_deeper_than(r#"{"a":"\\","b":[1]}"#, 1));
        assert!(!nests_deeper_than("[[1],[2],{}]", 2));
        assert!(nests_deeper_than("[[[1]]]", 2));
        let deep = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000));
        assert!(nests_deeper_than(&deep, 32));
        let frame =
            |data: &str| format!(r#"{{"type":"publish","channel":"a","data":{data},"ref":"d1"}}"#);
        let at_limit = format!("{}{}", "[".repeat(32), "]".repeat(32));
        assert!(parse_client_frame(&frame(&at_limit), 32).is_ok());
        let over = format!("{}{}", "{\"a\":".repeat(33), "}".repeat(33)).replace(":}", ":1}");
        let e = parse_client_frame(&frame(&over), 32).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert_eq!(e.reference.as_deref(), Some("d1"));
    }

    #[test]
    fn parses_requests() {
        let f = parse_client_frame(
            r#"{"type":"publish","channel":"chat:a","data":{"text":"hi"},"ref":"c-1"}"#,
            32,
        )
        .unwrap();
        assert_eq!(f.reference.as_deref(), Some("c-1"));
        match f.request {
            Request::Publish { channel, data } => {
                assert_eq!(channel, "chat:a");
                assert_eq!(data.get(), r#"{"text":"hi"}"#);
            }
            other => panic!("unexpected {other:?}"),
        }
        let f =
            parse_client_frame(r#"{"type":"subscribe","channel":"a","since":"5-1"}"#, 32).unwrap();
        assert!(
            matches!(f.request, Request::Subscribe { since: Some(o), epoch: None, .. } if o == Offset::new(5, 1))
        );
        let f = parse_client_frame(
            r#"{"type":"subscribe","channel":"a","since":"5-1","epoch":"abc"}"#,
            32,
        )
        .unwrap();
        assert!(matches!(f.request, Request::Subscribe { epoch: Some(e), .. } if e == "abc"));
        let f = parse_client_frame(
            r#"{"type":"history","channel":"a","limit":1000000,"before":"9-0","reverse":true}"#,
            32,
        )
        .unwrap();
        assert!(matches!(
            f.request,
            Request::History { limit: Some(1_000_000), since: None, before: Some(b), reverse: true, .. } if b == Offset::new(9, 0)
        ));
        let f = parse_client_frame(r#"{"type":"ping","ref":"k1"}"#, 32).unwrap();
        assert!(matches!(f.request, Request::Ping));
        assert_eq!(f.reference.as_deref(), Some("k1"));
    }

    #[test]
    fn error_codes() {
        assert_eq!(code("{not json"), ErrorCode::BadJson);
        assert_eq!(code("[1,2]"), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"type":1}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"type":"subscribe"}"#), ErrorCode::BadRequest);
        assert_eq!(
            code(r#"{"type":"jump","channel":"a"}"#),
            ErrorCode::UnknownType
        );
        assert_eq!(
            code(r#"{"type":"subscribe","channel":"a b"}"#),
            ErrorCode::BadChannel
        );
        assert_eq!(
            code(r#"{"type":"publish","channel":"a"}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(r#"{"type":"subscribe","channel":"a","since":"x"}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(r#"{"type":"subscribe","channel":"a","epoch":7}"#),
            ErrorCode::BadRequest
        );
        for bad in [
            r#"{"type":"subscribe","channel":"a","since":"1-0","last":5}"#,
            r#"{"type":"subscribe","channel":"a","last":-1}"#,
            r#"{"type":"history","channel":"a","limit":1.5}"#,
            r#"{"type":"history","channel":"a","limit":"5"}"#,
            r#"{"type":"history","channel":"a","before":"x"}"#,
            r#"{"type":"history","channel":"a","reverse":1}"#,
        ] {
            assert_eq!(code(bad), ErrorCode::BadRequest, "{bad}");
        }
        assert_eq!(
            code(r#"{"type":"history","channel":"a b"}"#),
            ErrorCode::BadChannel
        );
        assert_eq!(code(r#"{"type":"presence"}"#), ErrorCode::BadRequest);
        assert_eq!(
            code(r#"{"type":"presence_stats","channel":"a b"}"#),
            ErrorCode::BadChannel
        );
        let f =
            parse_client_frame(r#"{"type":"presence_stats","channel":"a","ref":"p"}"#, 32).unwrap();
        assert!(matches!(f.request, Request::PresenceStats { channel } if channel == "a"));
        let long = format!(
            r#"{{"type":"subscribe","channel":"a","epoch":"{}"}}"#,
            "e".repeat(65)
        );
        assert_eq!(code(&long), ErrorCode::BadRequest);
        let e = parse_client_frame(r#"{"type":"nope","ref":"r9"}"#, 32).unwrap_err();
        assert_eq!(e.reference.as_deref(), Some("r9"));
    }

    #[test]
    fn serializes_frames() {
        let data = RawValue::from_string(r#"{"text":"hi"}"#.into()).unwrap();
        let json = ServerFrame::Message {
            channel: "c",
            offset: Offset::new(1, 2),
            from: "u",
            ts: 1,
            data: &data,
        }
        .to_json();
        assert_eq!(
            json,
            r#"{"type":"message","channel":"c","offset":"1-2","from":"u","ts":1,"data":{"text":"hi"}}"#
        );
        let json = ServerFrame::PresenceStats {
            channel: "c",
            reference: Some("p1"),
            clients: 3,
            users: 2,
        }
        .to_json();
        assert_eq!(
            json,
            r#"{"type":"presence_stats","channel":"c","ref":"p1","clients":3,"users":2}"#
        );
        let info = RawValue::from_string(r#"{"client":"x","user":"u"}"#.into()).unwrap();
        let json = ServerFrame::Join {
            channel: "c",
            info: &info,
        }
        .to_json();
        assert_eq!(
            json,
            r#"{"type":"join","channel":"c","info":{"client":"x","user":"u"}}"#
        );
        let json = ServerFrame::Subscribed {
            channel: "c",
            offset: Some(Offset::ZERO),
            recovered: 0,
            gap: false,
            epoch: Some("e1"),
        }
        .to_json();
        assert_eq!(
            json,
            r#"{"type":"subscribed","channel":"c","offset":"0-0","recovered":0,"epoch":"e1"}"#
        );
        // A namespace without history: no offsets, no epoch.
        let json = ServerFrame::Subscribed {
            channel: "c",
            offset: None,
            recovered: 0,
            gap: false,
            epoch: None,
        }
        .to_json();
        assert_eq!(json, r#"{"type":"subscribed","channel":"c","recovered":0}"#);
        let json = ServerFrame::Ack {
            reference: Some("r"),
            offset: Offset::ZERO,
        }
        .to_json();
        assert_eq!(json, r#"{"type":"ack","ref":"r"}"#);
        let pong = ServerFrame::Pong {
            reference: Some("k1"),
        };
        assert_eq!(pong.to_json(), r#"{"type":"pong","ref":"k1"}"#);
        assert_eq!(
            ServerFrame::Pong { reference: None }.to_json(),
            r#"{"type":"pong"}"#
        );
        let welcome = ServerFrame::Welcome {
            node: "n",
            client: "c",
            heartbeat: 0,
            heartbeat_ms: 250,
        };
        assert_eq!(
            welcome.to_json(),
            r#"{"type":"welcome","node":"n","client":"c","heartbeat":0,"heartbeat_ms":250}"#
        );
    }
}
