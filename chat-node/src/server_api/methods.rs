//! `POST /api/<method>` on the API port: the key check, the bounded body, and each method.
//!
//! | method | body | answer |
//! |---|---|---|
//! | `publish` | `{"channel","data"}` | `{"offset"}` |
//! | `broadcast` | `{"channels":[…],"data"}` | `{"results":[{"channel","offset"} or {"channel","error":{"code","message"}}]}` |
//! | `disconnect` | `{"user"}` or `{"client"}`, optional `"code"` (4000–4999, default 4002) | `{"disconnected","nodes"}` |
//! | `unsubscribe` | `{"user","channel"}` | `{"unsubscribed","nodes"}` |
//! | `presence` | `{"channel"}` | `{"channel","clients":[{"client","user","conn_info"?}],"total","truncated"}` |
//! | `presence_stats` | `{"channel"}` | `{"channel","clients","users"}` |
//! | `history` | `{"channel","limit"?,"since"?,"before"?,"reverse"?}` | `{"channel","messages":[message frames],"offset","epoch"}` |
//! | `channels` | `{"prefix"?,"limit"?}` | `{"channels":[{"channel","subscribers"}]}` |
//! | `info` | `{}` | `{"nodes":[{"node","connections","subscriptions"}]}` |
//! | `revoke` | `{"jti"}` or `{"user"}`, `"until"` (Unix s) | `{"disconnected","nodes"}` |

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::header::{AUTHORIZATION, CONNECTION, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tracing::{debug, warn};

use super::cluster::Outcome;
use super::commands::{Command, apply};
use super::key::MAX_KEY_BYTES;
use super::revocations::{MAX_NAME_BYTES, MAX_UNTIL_SECS, Revocation, now_secs};
use super::{ApiState, Reach};
use crate::broker::{BrokerError, HistoryQuery, PublishRequest, now_us};
use crate::handshake::Refusal;
use crate::offset::Offset;
use crate::protocol::{ErrorCode, close, nests_deeper_than};
use crate::{channel, history};

/// Channels one `broadcast` may name.
pub const MAX_BROADCAST_CHANNELS: usize = 1_000;
/// Channels `channels` lists by default, and at most.
pub const DEFAULT_CHANNELS_LIMIT: usize = 1_000;
pub const MAX_CHANNELS_LIMIT: usize = 10_000;
/// Longest user or client id accepted.
pub const MAX_ID_BYTES: usize = MAX_NAME_BYTES;
/// The `from` of messages published through the API.
pub const API_SENDER: &str = "api";
/// Room in a body besides the message data: a broadcast's channel list and the JSON around it.
const ENVELOPE_BYTES: usize = MAX_BROADCAST_CHANNELS * 132 + 4096;

fn refusal(status: StatusCode, code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal::new(status, code, message)
}

fn bad(message: impl Into<String>) -> Refusal {
    refusal(
        StatusCode::BAD_REQUEST,
        ErrorCode::BadRequest.as_str(),
        message,
    )
}

fn broker_refusal(e: BrokerError) -> Refusal {
    match e {
        BrokerError::Unavailable => refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable.as_str(),
            "redis unavailable, retry later",
        ),
        BrokerError::Internal(e) => {
            warn!(details.reason = %e, "server API call failed");
            refusal(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal.as_str(),
                "internal error",
            )
        }
    }
}

/// Anything but `POST /api/<method>`.
pub async fn not_found() -> Response {
    refusal(StatusCode::NOT_FOUND, "not_found", "use POST /api/<method>").into_response()
}

/// Checks `Authorization: apikey <key>`.
pub fn authorize(state: &ApiState, headers: &HeaderMap) -> Result<(), Refusal> {
    let unauthorized = |message: &str| {
        let mut r = refusal(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized.as_str(),
            message,
        );
        r.message.push_str(" (send `Authorization: apikey <key>`)");
        r
    };
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Err(unauthorized("missing API key"));
    };
    let value = value.as_bytes();
    let Some((scheme, key)) = value
        .iter()
        .position(|b| *b == b' ')
        .map(|i| (&value[..i], value[i + 1..].trim_ascii()))
    else {
        return Err(unauthorized("missing API key"));
    };
    if !scheme.eq_ignore_ascii_case(b"apikey") {
        return Err(unauthorized("not an API key"));
    }
    if key.len() > MAX_KEY_BYTES || !state.key.matches(key) {
        return Err(unauthorized("wrong API key"));
    }
    Ok(())
}

/// The methods, as metric labels.
const METHODS: [&str; 10] = [
    "publish",
    "broadcast",
    "disconnect",
    "unsubscribe",
    "presence",
    "presence_stats",
    "history",
    "channels",
    "info",
    "revoke",
];

/// `method` as a label value: one of [`METHODS`], or `unknown` (callers choose the name).
pub fn method_label(method: &str) -> &'static str {
    METHODS
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("unknown")
}

/// `POST /api/{method}`.
pub async fn call(
    State(state): State<Arc<ApiState>>,
    Path(method): Path<String>,
    request: Request,
) -> Response {
    let result = call_in(&state, &method, request).await;
    let code = result.as_ref().map_or_else(|r| r.code, |_| "ok");
    state.metrics.count("http", &method, code);
    match result {
        Ok(body) => Json(body).into_response(),
        Err(refused) => {
            debug!(details.method = %method, details.error_code = refused.code, "server API call refused");
            let status = refused.status;
            let mut response = refused.into_response();
            let headers = response.headers_mut();
            if status == StatusCode::UNAUTHORIZED {
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("apikey"));
            }
            // The rest of a body too big or too slow is not read: the socket goes.
            if status == StatusCode::REQUEST_TIMEOUT || status == StatusCode::PAYLOAD_TOO_LARGE {
                headers.insert(CONNECTION, HeaderValue::from_static("close"));
            }
            response
        }
    }
}

async fn call_in(state: &ApiState, method: &str, request: Request) -> Result<Value, Refusal> {
    authorize(state, request.headers())?;
    let app = &state.app;
    let limit = app.config.max_message_bytes + ENVELOPE_BYTES;
    let body = match tokio::time::timeout(
        app.config.body_timeout,
        axum::body::to_bytes(request.into_body(), limit),
    )
    .await
    {
        Ok(Ok(body)) => body,
        Ok(Err(_)) => {
            return Err(refusal(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("body larger than {limit} bytes (max-message-bytes plus the envelope)"),
            ));
        }
        Err(_) => {
            return Err(refusal(
                StatusCode::REQUEST_TIMEOUT,
                ErrorCode::BadRequest.as_str(),
                "request body not received within the body timeout",
            ));
        }
    };
    dispatch(state, method, &body).await
}

/// Runs `method` on a JSON body (HTTP's, or one the gRPC service built): one place for every
/// check, so both transports refuse the same input the same way.
pub async fn dispatch(state: &ApiState, method: &str, body: &Bytes) -> Result<Value, Refusal> {
    match method {
        "publish" => publish(state, body).await,
        "broadcast" => broadcast(state, body).await,
        "disconnect" => disconnect(state, body).await,
        "unsubscribe" => unsubscribe(state, body).await,
        "presence" => presence(state, body).await,
        "presence_stats" => presence_stats(state, body).await,
        "history" => history(state, body).await,
        "channels" => channels(state, body).await,
        "info" => info(state, body).await,
        "revoke" => revoke(state, body).await,
        _ => Err(refusal(
            StatusCode::NOT_FOUND,
            "unknown_method",
            "unknown method; use publish, broadcast, disconnect, unsubscribe, presence, presence_stats, history, channels, info or revoke",
        )),
    }
}

/// Parses a body; an empty body counts as `{}`.
fn parse<'a, T: Deserialize<'a>>(body: &'a Bytes) -> Result<T, Refusal> {
    let text: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(text).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            refusal(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadJson.as_str(),
                "body is not valid JSON",
            )
        } else {
            bad(e.to_string())
        }
    })
}

fn parse_owned<T: DeserializeOwned>(body: &Bytes) -> Result<T, Refusal> {
    parse(body)
}

fn check_channel(name: &str) -> Result<(), Refusal> {
    if channel::is_valid(name) {
        Ok(())
    } else {
        Err(refusal(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadChannel.as_str(),
            format!("bad channel name {name:?}: 1-128 characters of A-Z a-z 0-9 _ - . : / #"),
        ))
    }
}

fn check_id(what: &str, id: &str) -> Result<(), Refusal> {
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        return Err(bad(format!("`{what}` must be 1-{MAX_ID_BYTES} bytes")));
    }
    Ok(())
}

fn check_data(state: &ApiState, data: &RawValue) -> Result<(), Refusal> {
    let config = &state.app.config;
    if data.get().len() > config.max_message_bytes {
        return Err(bad(format!(
            "`data` larger than max-message-bytes ({})",
            config.max_message_bytes
        )));
    }
    if nests_deeper_than(data.get(), config.max_json_depth) {
        return Err(bad(format!(
            "`data` nests deeper than {} levels",
            config.max_json_depth
        )));
    }
    Ok(())
}

async fn publish_one(
    state: &ApiState,
    channel: String,
    data: Box<RawValue>,
) -> Result<Offset, BrokerError> {
    let app = &state.app;
    let label = app.metrics.namespace_label(&channel);
    let request = PublishRequest {
        channel,
        from: API_SENDER.to_owned(),
        ts_us: now_us(),
        data,
        trace: None,
    };
    let offset = app.broker.publish(request).await?;
    app.metrics.published(&label);
    Ok(offset)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody<'a> {
    channel: String,
    #[serde(borrow)]
    data: &'a RawValue,
}

async fn publish(state: &ApiState, body: &Bytes) -> Result<Value, Refusal> {
    let parsed: PublishBody<'_> = parse(body)?;
    check_channel(&parsed.channel)?;
    check_data(state, parsed.data)?;
    let offset = publish_one(state, parsed.channel, parsed.data.to_owned())
        .await
        .map_err(broker_refusal)?;
    // A namespace without history gives no offset (`0-0`): the answer leaves it out.
    if offset.is_zero() {
        return Ok(json!({}));
    }
    Ok(json!({ "offset": offset }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BroadcastBody<'a> {
    channels: Vec<String>,
    #[serde(borrow)]
    data: &'a RawValue,
}

async fn broadcast(state: &ApiState, body: &Bytes) -> Result<Value, Refusal> {
    let parsed: BroadcastBody<'_> = parse(body)?;
    if parsed.channels.is_empty() || parsed.channels.len() > MAX_BROADCAST_CHANNELS {
        return Err(bad(format!(
            "`channels` must list 1-{MAX_BROADCAST_CHANNELS} channels"
        )));
    }
    for name in &parsed.channels {
        check_channel(name)?;
    }
    check_data(state, parsed.data)?;
    // All in flight at once; the broker applies them in the order they are first polled.
    let publishes = parsed
        .channels
        .iter()
        .map(|name| publish_one(state, name.clone(), parsed.data.to_owned()));
    let results = futures_util::future::join_all(publishes).await;
    let results: Vec<Value> = parsed
        .channels
        .iter()
        .zip(results)
        .map(|(name, result)| match result {
            Ok(offset) if offset.is_zero() => json!({"channel": name}),
            Ok(offset) => json!({"channel": name, "offset": offset}),
            Err(e) => {
                let refused = broker_refusal(e);
                json!({"channel": name, "error": {"code": refused.code, "message": refused.message}})
            }
        })
        .collect();
    Ok(json!({ "results": results }))
}

/// Runs a command on every node (or this one with the embedded broker).
async fn everywhere(state: &ApiState, command: Command) -> Result<Outcome, Refusal> {
    match &state.reach {
        Reach::Local => Ok(Outcome {
            count: apply(&state.app, &command),
            nodes: 1,
        }),
        Reach::Cluster(control) => control.execute(command).await.map_err(broker_refusal),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectBody {
    user: Option<String>,
    client: Option<String>,
    code: Option<u16>,
}

async fn disconnect(state: &ApiState, body: &Bytes) -> Result<Value, Refusal> {
    let parsed: DisconnectBody = parse_owned(body)?;
    match (&parsed.user, &parsed.client) {
        (Some(user), None) => check_id("user", user)?,
        (None, Some(client)) => {
            if client.is_empty()
                || client.len() > 32
                || !client.bytes().all(|b| b.is_ascii_hexdigit())
            {
                return Err(bad(
                    "`client` must be a client id: 32 hex digits, as in `welcome`",
                ));
            }
        }
        _ => return Err(bad("give exactly one of `user` and `client`")),
    }
    let code = parsed.code.unwrap_or(close::DISCONNECTED);
    if !(4000..=4999).contains(&code) {
        return Err(bad("`code` must be an application close code, 4000-4999"));
    }
    let outcome = everywhere(
        state,
        Command::Disconnect {
            user: parsed.user,
            client: parsed.client,
            code,
        },
    )
    .await?;
    Ok(json!({"disconnected": outcome.count, "nodes": outcome.nodes}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnsubscribeBody {
    user: String,
    channel: String,
}

async fn unsubscribe(state: &ApiState, body: &Bytes) -> Result<Value, Refusal> {
    let parsed: UnsubscribeBody = parse_owned(body)?;
    check_id("user", &parsed.user)?;
    check_channel(&parsed.channel)?;
    let outcome = everywhere(
        state,
        Command::Unsubscribe {
            user: parsed.user,
            channel: parsed.channel,
        },
    )
    .await?;
    Ok(json!({"unsubscribed": outcome.count, "nodes": outcome.nodes}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelBody {
    channel: String,
}

/// The channel of a `presence`/`presence_stats` body, whose namespace must keep presence.
fn presence_channel(state: &ApiState, body: &Bytes) -> Result<String, Refusal> {
    let parsed: ChannelBody = parse_owned(body)?;
    check_channel(&parsed.channel)?;
    if !channel::namespace_listed(&state.app.config.presence_namespaces, &parsed.channel) {
        return Err(refusal(
            StatusCode::CONFLICT,
            ErrorCode::NotAvailable.as_str(),
            "presence is not enabled for this channel's namespace (--presence-namespaces)",
        ));
    }
    Ok(parsed.channel)
}

/// Who is subscribed to a channel, on every node: at most `--max-presence` entries and
/// [`history::PAGE_BYTES`] of them (`truncated` when cut).
async fn presence(state: &ApiState, body: &Bytes) -> Result<Value, Refusal> {
    let channel = presence_channel(state, body)?;
    let app = &state.app;
    let max = usize::try_from(app.config.max_presence).unwrap_or(usize::MAX);
    let mut answer = app
        .broker
        .presence(&channel, max)
        .await
        .map_err(broker_refusal)?;
    let mut bytes = 0;
    let fits = answer
        .entries
        .iter()
        .take_while(|e| {
            bytes += e.len() + 1;
            bytes <= history::PAGE_BYTES
        })
        .count();
    answer.entries.truncate(fits);
    let clients: Vec<Value> = answer
        .entries
        .iter()
        .filter_map(|entry| serde_json::from_str(entry).ok())
        .collect();
    let truncated = clients.len() < answer.total;
    Ok(json!({
        "channel": channel,
        "clients": clients,
        "total": answer.total,
        "truncated": truncated,
    }))
}

async fn presence_stats(state: &ApiState, body: &Bytes) -> Result<Value, Refusal> {
    let channel = presence_channel(state, body)?;
    let stats = state
        .app
        .broker
        .presence_stats(&channel)
        .await
        .map_err(broker_refusal)?;
    Ok(json!({"channel": channel, "clients": stats.clients, "users": stats.users}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryBody {
    channel: String,
    limit: Option<u64>,
    since: Option<String>,
    before: Option<String>,
    #[serde(default)]
    reverse: bool,
}

/// A page of a channel's history, as the `history` frame without `type` (bounded like it: at
/// most `--max-history-page` messages and [`history::PAGE_BYTES`] of them).
async fn history(state: &ApiState, body: &Bytes) -> Result<Value, Refusal> {
    let parsed: HistoryBody = parse_owned(body)?;
    check_channel(&parsed.channel)?;
    let offset = |value: Option<String>, name: &str| -> Result<Option<Offset>, Refusal> {
        value
            .filter(|v| !v.is_empty())
            .map(|v| v.parse::<Offset>())
            .transpose()
            .map_err(|e| bad(format!("bad `{name}`: {e}")))
    };
    let app = &state.app;
    let query = HistoryQuery {
        limit: history::page_limit(app, parsed.limit),
        since: offset(parsed.since, "since")?,
        before: offset(parsed.before, "before")?,
        reverse: parsed.reverse,
    };
    let page = app
        .broker
        .history(&parsed.channel, query)
        .await
        .map_err(broker_refusal)?;
    let text = history::render(&parsed.channel, &page, None, false, history::PAGE_BYTES);
    serde_json::from_str(&text).map_err(|_| {
        refusal(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal.as_str(),
            "internal error",
        )
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelsBody {
    prefix: Option<String>,
    limit: Option<usize>,
}

async fn channels(state: &ApiState, body: &Bytes) -> Result<Value, Refusal> {
    let parsed: ChannelsBody = parse_owned(body)?;
    let limit = parsed.limit.unwrap_or(DEFAULT_CHANNELS_LIMIT);
    if limit == 0 || limit > MAX_CHANNELS_LIMIT {
        return Err(bad(format!("`limit` must be 1-{MAX_CHANNELS_LIMIT}")));
    }
    if parsed.prefix.as_ref().is_some_and(|p| p.len() > 128) {
        return Err(bad("`prefix` longer than a channel name"));
    }
    let counts: Vec<(String, u64)> = match &state.reach {
        Reach::Local => state
            .app
            .hub
            .subscriber_counts()
            .into_iter()
            .map(|(c, n)| (c, n as u64))
            .collect(),
        Reach::Cluster(control) => control
            .channels()
            .await
            .map_err(broker_refusal)?
            .into_iter()
            .collect(),
    };
    let prefix = parsed.prefix.unwrap_or_default();
    let mut listed: Vec<(String, u64)> = counts
        .into_iter()
        .filter(|(c, n)| *n > 0 && c.starts_with(&prefix))
        .collect();
    listed.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let total = listed.len();
    listed.truncate(limit);
    let channels: Vec<Value> = listed
        .into_iter()
        .map(|(channel, subscribers)| json!({"channel": channel, "subscribers": subscribers}))
        .collect();
    Ok(json!({"channels": channels, "total": total}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InfoBody {}

async fn info(state: &ApiState, body: &Bytes) -> Result<Value, Refusal> {
    let _: InfoBody = parse_owned(body)?;
    let app = &state.app;
    let nodes = match &state.reach {
        Reach::Local => {
            let subscriptions: usize = app.hub.subscriber_counts().iter().map(|(_, n)| n).sum();
            vec![json!({
                "node": app.node_id,
                "connections": app.sessions.len(),
                "subscriptions": subscriptions,
            })]
        }
        Reach::Cluster(control) => control
            .nodes()
            .await
            .map_err(broker_refusal)?
            .into_iter()
            .map(|n| json!({"node": n.node, "connections": n.connections, "subscriptions": n.subscriptions}))
            .collect(),
    };
    Ok(json!({ "nodes": nodes }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    jti: Option<String>,
    user: Option<String>,
    until: u64,
}

async fn revoke(state: &ApiState, body: &Bytes) -> Result<Value, Refusal> {
    let parsed: RevokeBody = parse_owned(body)?;
    let now = now_secs();
    if parsed.until <= now || parsed.until > now + MAX_UNTIL_SECS {
        return Err(bad(format!(
            "`until` must be a Unix time in seconds in the future, at most {MAX_UNTIL_SECS} s ahead"
        )));
    }
    let revocation = match (parsed.jti, parsed.user) {
        (Some(id), None) => {
            check_id("jti", &id)?;
            Revocation::Token {
                id,
                until: parsed.until,
            }
        }
        (None, Some(user)) => {
            check_id("user", &user)?;
            Revocation::User {
                user,
                at: now,
                until: parsed.until,
            }
        }
        _ => return Err(bad("give exactly one of `jti` and `user`")),
    };
    let full = || {
        refusal(
            StatusCode::INSUFFICIENT_STORAGE,
            "too_many_revocations",
            "the revocation list is full; use shorter `until` times",
        )
    };
    let outcome = match &state.reach {
        Reach::Local => {
            state
                .app
                .revocations
                .insert(&revocation, now)
                .map_err(|_| full())?;
            Outcome {
                count: apply(&state.app, &Command::Revoke { revocation }),
                nodes: 1,
            }
        }
        Reach::Cluster(control) => control
            .revoke(revocation)
            .await
            .map_err(broker_refusal)?
            .map_err(|_| full())?,
    };
    Ok(json!({"disconnected": outcome.count, "nodes": outcome.nodes}))
}
