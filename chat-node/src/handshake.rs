//! The checks before a connection is accepted (`/ws` and `/sse`): draining, origin, auth; and
//! the WebSocket upgrade with small buffers. (The connection limit is enforced earlier, when the
//! socket is accepted: see `accept.rs`.)

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{ConnectInfo, FromRequestParts, Query, State};
use axum::http::header::RETRY_AFTER;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tracing::debug;

use crate::auth::{self, Identity};
use crate::per_user::UserSlot;
use crate::protocol::ErrorCode;
use crate::rates::{self, RateKey};
use crate::server::AppState;
use crate::server_api::revocations::now_secs;
use crate::session;
use crate::telemetry;

/// The subprotocol a client may offer besides its `bearer.<jwt>`.
pub const SUBPROTOCOL: &str = "chat.v1";
/// Read buffer per connection, allocated when the connection opens and kept while it lives:
/// tungstenite's default is 128 KiB, far more than chat frames need. Bigger frames (up to
/// `--max-message-bytes`) still arrive: the buffer grows to the frame's length for them, and
/// reads take at most this many bytes past what is buffered.
const READ_BUFFER: usize = 512;
/// Frames are gathered up to this size before a write, then flushed per batch.
const WRITE_BUFFER: usize = 4 * 1024;

/// An HTTP refusal with the contract's JSON body `{"code","message"}`.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl Refusal {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn from_error(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal::new(status, code.as_str(), message)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(serde_json::json!({"code": self.code, "message": self.message})),
        )
            .into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(1));
        } else if self.status == StatusCode::SERVICE_UNAVAILABLE {
            let secs = 1 + fastrand::u32(0..4);
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// The client's address for its publish budget ([`crate::rates::client_address`]): the TCP
/// peer, or the configured proxy header's last entry.
pub struct ClientAddress(pub IpAddr);

impl FromRequestParts<Arc<AppState>> for ClientAddress {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(rates::UNKNOWN_ADDRESS, |info| info.0.ip());
        Ok(ClientAddress(rates::client_address(
            app.config.client_address_header.as_ref(),
            &parts.headers,
            peer,
        )))
    }
}

#[derive(Deserialize, Default)]
pub struct TokenQuery {
    pub token: Option<String>,
}

/// The answer to a browser request from an origin that may not use this node (HTTP 403).
pub fn origin_refused(app: &AppState) -> Refusal {
    app.metrics.error(ErrorCode::Forbidden);
    Refusal::from_error(
        StatusCode::FORBIDDEN,
        ErrorCode::Forbidden,
        "origin not allowed (see --allowed-origins)",
    )
}

/// Draining, origin and auth checks shared by `/ws` and `/sse`.
pub fn admit(
    app: &Arc<AppState>,
    headers: &HeaderMap,
    token: Option<&str>,
) -> Result<(Identity, Option<String>), Refusal> {
    if app.draining.load(Ordering::Acquire) {
        app.metrics.connection("rejected");
        return Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "node is draining, reconnect elsewhere",
        ));
    }
    if !app.origins.allows(headers) {
        app.metrics.connection("rejected");
        return Err(origin_refused(app));
    }
    let refuse = |reason: String| {
        app.metrics.connection("unauthorized");
        app.metrics.error(ErrorCode::Unauthorized);
        debug!(details.reason = %reason, "refused handshake");
        Refusal::from_error(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, reason)
    };
    let admitted =
        auth::authenticate(app.auth.as_ref(), headers, token).map_err(|e| refuse(e.to_string()))?;
    if app.revocations.revokes(&admitted.0, now_secs()) {
        return Err(refuse("token revoked".to_owned()));
    }
    Ok(admitted)
}

/// A slot in the user's connection count (`--max-connections-per-user`), or HTTP 429
/// `too_many_connections` when the user holds the most sessions allowed on this node.
pub fn user_slot(app: &AppState, identity: &Identity) -> Result<Option<UserSlot>, Refusal> {
    app.user_connections.take(identity).map_err(|full| {
        app.metrics.connection("rejected");
        debug!(details.max = full.max, "refused handshake: too many connections of its user");
        Refusal::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_connections",
            format!(
                "this user already has {} connections open on this node (--max-connections-per-user); close one first",
                full.max
            ),
        )
    })
}

/// The refusal of a socket accepted past the connection limit.
pub fn at_capacity() -> Refusal {
    Refusal::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "at_capacity",
        "node is at its connection limit",
    )
}

/// [`admit`] inside a `chat.connect` span recording the auth result and the outcome.
pub fn admit_traced(
    app: &Arc<AppState>,
    headers: &HeaderMap,
    token: Option<&str>,
    transport: &'static str,
) -> Result<(Identity, Option<String>), Refusal> {
    let span = telemetry::connect_span(transport);
    if span.is_none() {
        return admit(app, headers, token);
    }
    let admitted = span.in_scope(|| admit(app, headers, token));
    let auth_on = app.auth.is_some();
    let (auth, result) = match &admitted {
        Ok(_) => (if auth_on { "ok" } else { "off" }, "accepted"),
        Err(r) if r.code == ErrorCode::Unauthorized.as_str() => ("refused", r.code),
        Err(r) => ("skipped", r.code),
    };
    telemetry::connected(&span, auth, result);
    admitted
}

/// `GET /ws`.
///
/// The checks come before the upgrade headers are looked at: a plain `GET /ws` (no upgrade)
/// with a refused token is answered 401 like a handshake, else with the upgrade's own refusal.
/// Browsers hide the status of a failed WebSocket handshake, so the JS client asks this way
/// whether its token is what failed.
pub async fn websocket(
    State(app): State<Arc<AppState>>,
    Query(query): Query<TokenQuery>,
    ClientAddress(address): ClientAddress,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let admitted = admit_traced(&app, &headers, query.token.as_deref(), "ws");
    let (identity, subprotocol) = match admitted {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal.into_response(),
    };
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    let user_slot = match user_slot(&app, &identity) {
        Ok(slot) => slot,
        Err(refusal) => return refusal.into_response(),
    };
    let max = app.config.max_message_bytes;
    // `chat.v1` borrowed: the chosen protocol is kept for the connection's life, and a
    // static one costs no allocation.
    let mut protocols = vec![Cow::Borrowed(SUBPROTOCOL)];
    protocols.extend(subprotocol.map(Cow::Owned));
    // Boxed: axum keeps this closure's captures for the connection's whole life.
    let accepted = Box::new(session::Accepted {
        task: app.tracker.token(),
        app,
        rate_key: RateKey::of(&identity, address),
        identity,
        user_slot,
    });
    upgrade
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(WRITE_BUFFER + 2 * max + 1024)
        .max_message_size(max)
        .max_frame_size(max)
        .protocols(protocols)
        .on_upgrade(move |socket| session::run(socket, *accepted))
}

/// Whether `identity` may receive `channels` over a stream without a subscribe frame (SSE,
/// long-polling): each must be one its token lets it subscribe to, not in a private namespace
/// (those need a subscription token, which only the WebSocket subscribe frame carries), and
/// not in a namespace that refuses clients without a user when it has none.
pub fn may_stream<'a>(
    app: &AppState,
    identity: &Identity,
    mut channels: impl Iterator<Item = &'a str>,
) -> Result<(), Refusal> {
    let refused = channels.find_map(|c| {
        let options = app.namespaces.of(c);
        if !identity.may_subscribe(c) {
            Some(format!("channel {c:?} not allowed"))
        } else if options.private {
            Some(format!(
                "channel {c:?} is private: subscribe over WebSocket with a subscription token"
            ))
        } else if !options.may_subscribe(identity.subject.is_some()) {
            Some(format!("channel {c:?}: {}", crate::session::NO_ANONYMOUS))
        } else {
            None
        }
    });
    match refused {
        None => Ok(()),
        Some(message) => {
            app.metrics.error(ErrorCode::Forbidden);
            Err(Refusal::from_error(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                message,
            ))
        }
    }
}
