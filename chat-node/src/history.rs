//! History pages for chat UIs: the `history` frame, `GET /api/history` (page loads), and the
//! limit of `last` on subscribe.
//!
//! Every page is bounded twice: by `--max-history-page` messages (a bigger `limit` is clamped,
//! so a client asking for 1,000,000 gets a page, never the channel), read from Redis with one
//! `XRANGE`/`XREVRANGE … COUNT`, and by [`PAGE_BYTES`] of message frames (half the send queue
//! on a WebSocket, so the answer always fits beside live traffic): past it the page is cut
//! short, keeping at least one message. A short page therefore does not mean the end; only an
//! empty one does (or, forwards, reaching the channel's newest `offset`).

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::value::RawValue;
use tracing::warn;

use crate::auth;
use crate::broker::{BrokerError, History, HistoryQuery};
use crate::channel;
use crate::handshake::{Refusal, origin_refused};
use crate::offset::Offset;
use crate::protocol::{ErrorCode, ServerFrame};
use crate::server::AppState;

/// The `not_available` message for history in a namespace that keeps none.
pub const NOT_KEPT: &str = "history is not enabled for this channel's namespace";

/// Most bytes of message frames in one page.
pub const PAGE_BYTES: usize = 1 << 20;

/// The page size for a requested `limit`: clamped to `--max-history-page`; none = the cap.
pub fn page_limit(app: &AppState, requested: Option<u64>) -> usize {
    let cap = app.config.max_history_page;
    usize::try_from(requested.map_or(cap, |r| r.min(cap))).unwrap_or(usize::MAX)
}

/// The byte budget of one page's message frames.
pub fn page_bytes(app: &AppState) -> usize {
    (app.config.send_queue_bytes / 2).clamp(1, PAGE_BYTES)
}

#[derive(Serialize)]
struct Reply<'a> {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    channel: &'a str,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    reference: Option<&'a str>,
    messages: Vec<Box<RawValue>>,
    offset: Offset,
    epoch: &'a str,
}

/// The JSON of a page: `{"type":"history",…}` on a WebSocket (`with_type`), the same without
/// `type` over HTTP. Message frames past `max_bytes` are left out (the first is always kept).
pub fn render(
    channel: &str,
    history: &History,
    reference: Option<&str>,
    with_type: bool,
    max_bytes: usize,
) -> String {
    let mut messages = Vec::with_capacity(history.messages.len());
    let mut bytes = 0;
    for message in &history.messages {
        let frame = ServerFrame::Message {
            channel,
            offset: message.offset,
            from: &message.from,
            ts: message.ts_us / 1000,
            data: &message.data,
        }
        .to_json();
        bytes += frame.len();
        if bytes > max_bytes && !messages.is_empty() {
            break;
        }
        // A frame we serialized ourselves is valid JSON.
        match RawValue::from_string(frame) {
            Ok(raw) => messages.push(raw),
            Err(_) => continue,
        }
    }
    let reply = Reply {
        kind: with_type.then_some("history"),
        channel,
        reference,
        messages,
        offset: history.newest,
        epoch: &history.epoch,
    };
    serde_json::to_string(&reply).unwrap_or_else(|_| String::from("{}"))
}

/// The error code, HTTP status and message for a failed read.
pub fn broker_failure(error: &BrokerError, channel: &str) -> (ErrorCode, StatusCode, &'static str) {
    match error {
        BrokerError::Unavailable => (
            ErrorCode::Unavailable,
            StatusCode::SERVICE_UNAVAILABLE,
            "message broker unavailable, retry later",
        ),
        BrokerError::Internal(e) => {
            warn!(details.channel = %channel, details.reason = %e, "history read failed");
            (
                ErrorCode::Internal,
                StatusCode::INTERNAL_SERVER_ERROR,
                "history read failed",
            )
        }
    }
}

/// What `GET /api/history` was asked.
#[derive(Default)]
struct HttpQuery {
    channel: Option<String>,
    channels: usize,
    limit: Option<String>,
    since: Option<String>,
    before: Option<String>,
    reverse: Option<String>,
    token: Option<String>,
}

fn parse_query(raw: Option<&str>) -> HttpQuery {
    let mut q = HttpQuery::default();
    for (key, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        let value = Some(value.into_owned());
        match key.as_ref() {
            "channel" => {
                q.channels += 1;
                q.channel = value;
            }
            "limit" => q.limit = value,
            "since" => q.since = value,
            "before" => q.before = value,
            "reverse" => q.reverse = value,
            "token" => q.token = value,
            _ => {}
        }
    }
    q
}

/// `GET /api/history?channel=…&limit=…&before=…&since=…&reverse=true`: a page of history for
/// page loads, with the rights and Origin rules of `/sse`; answers like the `history` frame,
/// without `type`.
pub async fn http(
    State(app): State<Arc<AppState>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    let refuse = |status: StatusCode, code: ErrorCode, message: &str| {
        app.metrics.error(code);
        Refusal::from_error(status, code, message)
    };
    let bad = |code: ErrorCode, message: &str| refuse(StatusCode::BAD_REQUEST, code, message);
    if !app.origins.allows(&headers) {
        return Err(origin_refused(&app));
    }
    let query = parse_query(raw.as_deref());
    let (identity, _) = auth::authenticate(app.auth.as_ref(), &headers, query.token.as_deref())
        .map_err(|e| {
            refuse(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                &e.to_string(),
            )
        })?;
    let channel = match (query.channel, query.channels) {
        (Some(c), 1) => c,
        _ => return Err(bad(ErrorCode::BadRequest, "give exactly one ?channel=")),
    };
    if !channel::is_valid(&channel) {
        return Err(bad(
            ErrorCode::BadChannel,
            "channel must be 1-128 characters of A-Z a-z 0-9 _ - . : / #",
        ));
    }
    let offset = |value: Option<String>, name: &str| -> Result<Option<Offset>, Refusal> {
        value
            .filter(|v| !v.is_empty())
            .map(|v| v.parse::<Offset>())
            .transpose()
            .map_err(|e| bad(ErrorCode::BadRequest, &format!("bad `{name}`: {e}")))
    };
    let since = offset(query.since, "since")?;
    let before = offset(query.before, "before")?;
    let limit = query
        .limit
        .filter(|v| !v.is_empty())
        .map(|v| v.parse::<u64>())
        .transpose()
        .map_err(|_| {
            bad(
                ErrorCode::BadRequest,
                "`limit` must be a whole number, 0 or more",
            )
        })?;
    let reverse = match query.reverse.as_deref() {
        None | Some("" | "false" | "0") => false,
        Some("true" | "1") => true,
        Some(_) => {
            return Err(bad(
                ErrorCode::BadRequest,
                "`reverse` must be true or false",
            ));
        }
    };
    if !identity.may_subscribe(&channel) {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "your token does not allow this channel",
        ));
    }
    let options = app.namespaces.of(&channel);
    if options.private {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            crate::session::NEEDS_TOKEN,
        ));
    }
    if !options.may_subscribe(identity.subject.is_some()) {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            crate::session::NO_ANONYMOUS,
        ));
    }
    if options.history.is_none() {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            ErrorCode::NotAvailable,
            NOT_KEPT,
        ));
    }
    let query = HistoryQuery {
        limit: page_limit(&app, limit),
        since,
        before,
        reverse,
    };
    let history = app.broker.history(&channel, query).await.map_err(|e| {
        let (code, status, message) = broker_failure(&e, &channel);
        refuse(status, code, message)
    })?;
    let body = render(&channel, &history, None, false, PAGE_BYTES);
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Message;

    fn message(ms: u64, text: &str) -> Message {
        Message {
            channel: "c".into(),
            offset: Offset::new(ms, 0),
            from: "u".into(),
            ts_us: ms * 1000,
            data: RawValue::from_string(format!("{text:?}")).unwrap(),
            trace: None,
        }
    }

    #[test]
    fn renders_pages_within_the_byte_budget() {
        let history = History {
            messages: vec![message(1, "a"), message(2, "b"), message(3, "c")],
            newest: Offset::new(9, 0),
            epoch: "e".into(),
        };
        let all: serde_json::Value =
            serde_json::from_str(&render("c", &history, Some("h1"), true, 1 << 20)).unwrap();
        assert_eq!(all["type"], "history");
        assert_eq!(all["ref"], "h1");
        assert_eq!(all["offset"], "9-0");
        assert_eq!(all["epoch"], "e");
        assert_eq!(all["messages"].as_array().unwrap().len(), 3);
        assert_eq!(all["messages"][1]["type"], "message");
        assert_eq!(all["messages"][1]["data"], "b");
        assert_eq!(all["messages"][1]["ts"], 2);
        // One byte: still one message, so a client always makes progress.
        let cut: serde_json::Value =
            serde_json::from_str(&render("c", &history, None, false, 1)).unwrap();
        assert!(cut.get("type").is_none() && cut.get("ref").is_none());
        assert_eq!(cut["messages"].as_array().unwrap().len(), 1);
    }
}
