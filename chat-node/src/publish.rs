//! `POST /api/publish`: server-side publish. Body `{"channel":"…","data":…}`; answers 200
//! `{"offset":"…"}`, or 400 / 401 / 403 / 429 / 503 with `{"code","message"}`; a body that
//! has not arrived within `--body-timeout` gets 408 and the socket is closed.

use std::net::IpAddr;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Query, Request, State};
use axum::http::header::CONNECTION;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::value::RawValue;
use tracing::{Instrument, debug, warn};

use crate::auth;
use crate::broker::{BrokerError, PublishRequest, now_us};
use crate::channel;
use crate::handshake::{ClientAddress, Refusal, TokenQuery, origin_refused};
use crate::metrics::phases;
use crate::offset::Offset;
use crate::protocol::{ErrorCode, nests_deeper_than};
use crate::rates::RateKey;
use crate::server::AppState;
use crate::server_api::revocations::now_secs;
use crate::telemetry;

#[derive(Deserialize)]
struct PublishBody<'a> {
    #[serde(borrow)]
    channel: Option<&'a RawValue>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

#[derive(serde::Serialize)]
pub struct Published {
    /// Left out in a namespace without history (no offsets there).
    #[serde(skip_serializing_if = "Offset::is_zero")]
    offset: Offset,
}

/// Sender name for messages published over HTTP without a token subject.
const HTTP_SENDER: &str = "http";

pub async fn publish(
    State(app): State<Arc<AppState>>,
    Query(query): Query<TokenQuery>,
    ClientAddress(address): ClientAddress,
    headers: HeaderMap,
    request: Request,
) -> Response {
    // The body is read here, under `--body-timeout` (counted from the end of the head): a
    // client that announces a body and trickles it, or never sends it, holds its socket only
    // that long.
    let body = match tokio::time::timeout(
        app.config.body_timeout,
        Bytes::from_request(request, &()),
    )
    .await
    {
        Ok(Ok(body)) => body,
        Ok(Err(rejection)) => return rejection.into_response(),
        Err(_) => {
            app.metrics.socket_timeout(phases::BODY);
            app.metrics.error(ErrorCode::BadRequest);
            let mut response = Refusal::from_error(
                StatusCode::REQUEST_TIMEOUT,
                ErrorCode::BadRequest,
                "request body not received within the body timeout",
            )
            .into_response();
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
    };
    // The channel is known only after parsing; the span names it when it is.
    let span = telemetry::receive_span("http", None, Some(&headers));
    publish_in(app, query, address, headers, body)
        .instrument(span)
        .await
        .into_response()
}

async fn publish_in(
    app: Arc<AppState>,
    query: TokenQuery,
    address: IpAddr,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Published>, Refusal> {
    let refuse = |status: StatusCode, code: ErrorCode, message: &str| {
        app.metrics.error(code);
        telemetry::received(code.as_str());
        Refusal::from_error(status, code, message)
    };
    // Before anything else: a cross-site form or `fetch` (even a `text/plain` one that needs no
    // CORS preflight) must not publish in the name of the visitor's browser.
    if !app.origins.allows(&headers) {
        telemetry::received(ErrorCode::Forbidden.as_str());
        return Err(origin_refused(&app));
    }
    let (identity, _) = auth::authenticate(app.auth.as_ref(), &headers, query.token.as_deref())
        .map_err(|e| {
            refuse(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                &e.to_string(),
            )
        })?;
    if app.revocations.revokes(&identity, now_secs()) {
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "token revoked",
        ));
    }
    if body.len() > app.config.max_message_bytes {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            "body larger than max-message-bytes",
        ));
    }
    let parsed: PublishBody<'_> = serde_json::from_slice(&body).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            refuse(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadJson,
                "body is not valid JSON",
            )
        } else {
            refuse(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                "body must be {\"channel\":\"…\",\"data\":…}",
            )
        }
    })?;
    let channel: String = parsed
        .channel
        .and_then(|raw| serde_json::from_str(raw.get()).ok())
        .ok_or_else(|| {
            refuse(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                "`channel` must be a string",
            )
        })?;
    let data = parsed.data.ok_or_else(|| {
        refuse(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            "missing `data`",
        )
    })?;
    let max_depth = app.config.max_json_depth;
    if nests_deeper_than(data.get(), max_depth) {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            &format!("`data` nests deeper than {max_depth} levels"),
        ));
    }
    if !channel::is_valid(&channel) {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadChannel,
            "channel must be 1-128 characters of A-Z a-z 0-9 _ - . : / #",
        ));
    }
    if !identity.may_publish(&channel) {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "your token does not allow this channel",
        ));
    }
    if !app.namespaces.of(&channel).client_publish {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            crate::session::NO_CLIENT_PUBLISH,
        ));
    }
    if !app.rates.allow(&RateKey::of(&identity, address)) {
        return Err(refuse(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            "publishing too fast, slow down",
        ));
    }
    let label = app.metrics.namespace_label(&channel);
    telemetry::received_on(&channel);
    let span = telemetry::publish_span(&channel);
    let request = PublishRequest {
        channel,
        from: identity.subject.unwrap_or_else(|| HTTP_SENDER.to_owned()),
        ts_us: now_us(),
        data: data.to_owned(),
        trace: telemetry::trace_context(&span),
    };
    let published = app.broker.publish(request).instrument(span.clone()).await;
    telemetry::published(&span, published.as_ref().ok().copied());
    match published {
        Ok(offset) => {
            app.metrics.published(&label);
            telemetry::received("published");
            debug!(details.offset = %offset, "published over http");
            Ok(Json(Published { offset }))
        }
        Err(BrokerError::Unavailable) => Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "message broker unavailable",
        )),
        Err(BrokerError::Internal(e)) => {
            warn!(details.reason = %e, "http publish failed");
            Err(refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                "publish failed",
            ))
        }
    }
}
