//! The server API over gRPC (package `chatcluster.api.v1`, service `ServerApi`), on the same
//! port as HTTP: the accept loop hands sockets that open with the HTTP/2 preface to tonic
//! (see `accept.rs`), so one port and one key serve both. The four modes:
//!
//! - unary: every HTTP method, through the same [`methods::dispatch`] (one set of checks and
//!   error codes for both transports);
//! - server streaming, `Subscribe`: channels (with `since` and its `epoch`) as a session of the
//!   node like an SSE stream: one `Subscribed` per channel first (offset, epoch, `recovered`,
//!   `gap` as the client protocol's `subscribed`), then history replayed, then live, with the
//!   same bounded send queue: a caller that does not read is cut off with `RESOURCE_EXHAUSTED`
//!   instead of being buffered for;
//! - client streaming, `PublishStream`: publishes in order, one summary at the end;
//! - bidirectional, `Session`: publishes, subscribes and unsubscribes in, one `Reply` each and
//!   messages out.
//!
//! `grpc.health.v1.Health` (serving while the node is ready) and server reflection (v1 and
//! v1alpha) are served without the key; `ServerApi` needs `authorization: apikey <key>`.
//! Each HTTP/2 connection is served in [`h2`]: the port's socket timeouts, and `grpc-timeout`
//! deadlines answered with `DEADLINE_EXCEEDED` (the call's future dropped); a stream ends, and
//! its subscriptions with it, when its caller cancels it or goes away.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::StatusCode;
use futures_util::Stream;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::methods;
use super::proto::server_api_server::{ServerApi, ServerApiServer};
use super::proto::{self, reply, session_event, session_request};
use super::{ApiState, h2};
use crate::accept::Http2Socket;
use crate::admin::not_ready_reason;
use crate::broker::BrokerError;
use crate::channel;
use crate::fanout::{Outbound, SessionControl, SessionTag, Subscriber};
use crate::handshake::Refusal;
use crate::metrics::reasons;
use crate::offset::Offset;
use crate::protocol::close;
use crate::replay::{self, detach};
use crate::request_cycle::Timeouts;
use crate::server::{AppState, SessionRegistration};

/// Publishes one `PublishStream` may carry (its summary lists each, so it must stay a message
/// of sane size: at most [`SUMMARY_ENTRY_BYTES`] per entry).
pub const MAX_STREAM_PUBLISHES: usize = 10_000;
/// The most one summary entry takes encoded: a 128-byte channel, an offset or an error.
const SUMMARY_ENTRY_BYTES: usize = 256;
/// Events a `Session` may have waiting for its caller besides the node's send queue (acks).
const SESSION_ACKS: usize = 256;
/// Longest `epoch` accepted in a `Subscribe` (the node's own are 20 characters or so).
const MAX_EPOCH_BYTES: usize = 64;

fn status_of(refusal: Refusal) -> Status {
    let code = match refusal.status {
        StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => tonic::Code::InvalidArgument,
        StatusCode::UNAUTHORIZED => tonic::Code::Unauthenticated,
        StatusCode::NOT_FOUND => tonic::Code::Unimplemented,
        StatusCode::SERVICE_UNAVAILABLE => tonic::Code::Unavailable,
        StatusCode::INSUFFICIENT_STORAGE | StatusCode::TOO_MANY_REQUESTS => {
            tonic::Code::ResourceExhausted
        }
        StatusCode::REQUEST_TIMEOUT => tonic::Code::DeadlineExceeded,
        StatusCode::CONFLICT => tonic::Code::FailedPrecondition,
        _ => tonic::Code::Internal,
    };
    // The contract's error code leads the message, as `code: message`.
    Status::new(code, format!("{}: {}", refusal.code, refusal.message))
}

/// A status as the contract's error (`code: message` split again).
fn error_of(status: &Status) -> proto::Error {
    let (code, message) = status
        .message()
        .split_once(": ")
        .map_or(("internal", status.message()), |(c, m)| (c, m));
    proto::Error {
        code: code.to_owned(),
        message: message.to_owned(),
    }
}

fn invalid(code: &str, message: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{code}: {message}"))
}

/// `data_json` as the raw JSON it must be.
fn data(data_json: &str) -> Result<Box<RawValue>, Status> {
    serde_json::from_str::<Box<RawValue>>(data_json)
        .map_err(|_| invalid("bad_json", "`data_json` is not valid JSON"))
}

fn count_reply(value: &Value, field: &str) -> proto::CountReply {
    proto::CountReply {
        count: value[field].as_u64().unwrap_or(0),
        nodes: value["nodes"].as_u64().unwrap_or(0),
    }
}

fn channel_result(value: &Value) -> proto::ChannelResult {
    // No `error`: published (with an empty offset in a namespace without history).
    let result = match value.get("error") {
        None => proto::channel_result::Result::Offset(
            value["offset"].as_str().unwrap_or_default().to_owned(),
        ),
        Some(_) => proto::channel_result::Result::Error(proto::Error {
            code: value["error"]["code"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            message: value["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        }),
    };
    proto::ChannelResult {
        channel: value["channel"].as_str().unwrap_or_default().to_owned(),
        result: Some(result),
    }
}

/// The `ServerApi` service.
pub struct GrpcApi {
    state: Arc<ApiState>,
}

impl GrpcApi {
    async fn call(&self, method: &str, body: Value) -> Result<Value, Status> {
        let body = Bytes::from(body.to_string());
        let result = methods::dispatch(&self.state, method, &body).await;
        let code = result.as_ref().map_or_else(|r| r.code, |_| "ok");
        self.state.metrics.count("grpc", method, code);
        result.map_err(status_of)
    }

    async fn publish_one(&self, request: proto::PublishRequest) -> Result<String, Status> {
        let body = json!({"channel": request.channel, "data": data(&request.data_json)?});
        let answer = self.call("publish", body).await?;
        Ok(answer["offset"].as_str().unwrap_or_default().to_owned())
    }
}

/// A message frame as the hub encoded it, read back for a gRPC `Message`.
#[derive(Deserialize)]
struct Frame<'a> {
    channel: &'a str,
    /// Absent in a namespace without history.
    #[serde(default)]
    offset: &'a str,
    from: &'a str,
    ts: u64,
    #[serde(borrow)]
    data: &'a RawValue,
}

fn message_of(frame: &str) -> Option<proto::Message> {
    let frame: Frame<'_> = serde_json::from_str(frame).ok()?;
    Some(proto::Message {
        channel: frame.channel.to_owned(),
        offset: frame.offset.to_owned(),
        from: frame.from.to_owned(),
        ts: frame.ts,
        data_json: frame.data.get().to_owned(),
    })
}

/// A `message` frame already parsed (a history page's), as a gRPC `Message`.
fn message_of_value(frame: &Value) -> Option<proto::Message> {
    Some(proto::Message {
        channel: frame["channel"].as_str()?.to_owned(),
        offset: frame["offset"].as_str()?.to_owned(),
        from: frame["from"].as_str().unwrap_or_default().to_owned(),
        ts: frame["ts"].as_u64().unwrap_or(0),
        data_json: frame.get("data")?.to_string(),
    })
}

/// Why a stream ended, as a gRPC status.
fn closed_status(closing: Option<(u16, &'static str)>) -> Option<Status> {
    let (code, reason) = closing?;
    let status = match reason {
        reasons::CLIENT_CLOSE | reasons::CONNECTION_LOST => return None,
        reasons::SLOW_CONSUMER => Status::resource_exhausted(format!(
            "slow_consumer: the stream was not read fast enough (close {code}); subscribe again with `since`"
        )),
        reasons::DRAINING => {
            Status::unavailable("draining: the node is shutting down; subscribe again elsewhere")
        }
        reasons::DISCONNECTED => {
            Status::aborted(format!("disconnected by the server API (close {code})"))
        }
        _ => Status::aborted(format!("{reason} (close {code})")),
    };
    Some(status)
}

/// A gRPC stream as a session of this node: registered (drain, `disconnect` by its client
/// id), subscribed in the hub, unsubscribed when dropped.
struct StreamSession {
    app: Arc<AppState>,
    subscriber: Subscriber,
    channels: Mutex<HashSet<String>>,
    _registration: SessionRegistration,
    _task: tokio_util::task::task_tracker::TaskTrackerToken,
}

impl StreamSession {
    fn open(app: &Arc<AppState>) -> (Arc<Self>, String) {
        let id = SessionTag::new_client_id();
        let client = format!("{id:032x}");
        let tag = SessionTag {
            client: id,
            ..SessionTag::default()
        };
        let control = Arc::new(SessionControl::tagged(
            app.config.send_queue.max(2),
            app.config.send_queue_bytes,
            tag,
        ));
        let subscriber = Subscriber::new(control.clone());
        let session = Arc::new(StreamSession {
            _registration: app.sessions.register(control),
            _task: app.tracker.token(),
            app: app.clone(),
            subscriber,
            channels: Mutex::new(HashSet::new()),
        });
        (session, client)
    }

    fn control(&self) -> &SessionControl {
        &self.subscriber.control
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Subscribes one channel; its history after `since` is replayed in the background, paced
    /// by the caller's reading, then live messages follow.
    async fn subscribe(
        self: &Arc<Self>,
        channel: &str,
        since: Option<Offset>,
        epochs: &[String],
    ) -> Result<proto::Subscribed, Status> {
        if !self.lock().insert(channel.to_owned()) {
            return Err(invalid("bad_request", "already subscribed to this channel"));
        }
        match replay::begin(&self.app, channel, since, epochs, &self.subscriber).await {
            Ok((replay, start)) => {
                let session = self.clone();
                let name = channel.to_owned();
                tokio::spawn(async move {
                    if let Err(e) = replay.run(&session.app).await {
                        replay::close_after(&session.app, &session.subscriber, &e, &name);
                    }
                });
                Ok(proto::Subscribed {
                    channel: channel.to_owned(),
                    offset: start.newest.to_string(),
                    epoch: start.epoch,
                    recovered: start.count as u64,
                    gap: start.gap,
                })
            }
            Err(e) => {
                self.lock().remove(channel);
                detach(&self.app, channel, self.subscriber.id);
                Err(match e {
                    BrokerError::Unavailable => {
                        Status::unavailable("unavailable: redis unavailable")
                    }
                    BrokerError::Internal(_) => Status::internal("internal: subscribe failed"),
                })
            }
        }
    }

    fn unsubscribe(&self, channel: &str) -> bool {
        if !self.lock().remove(channel) {
            return false;
        }
        detach(&self.app, channel, self.subscriber.id);
        true
    }

    /// The next message for the caller, or the status the stream ends with.
    async fn next(&self) -> Result<proto::Message, Option<Status>> {
        loop {
            match self.control().next().await {
                Some(Outbound::Message(delivery)) => {
                    delivery.delivered.inc();
                    if let Some(message) = message_of(delivery.frame.as_str()) {
                        return Ok(message);
                    }
                }
                Some(_) => continue,
                None => return Err(closed_status(self.control().closing())),
            }
        }
    }
}

impl Drop for StreamSession {
    fn drop(&mut self) {
        self.subscriber
            .control
            .close(close::NORMAL, reasons::CLIENT_CLOSE);
        for channel in std::mem::take(&mut *self.lock()) {
            detach(&self.app, &channel, self.subscriber.id);
        }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn check_channel(name: &str) -> Result<(), Status> {
    if channel::is_valid(name) {
        Ok(())
    } else {
        Err(invalid(
            "bad_channel",
            format!("bad channel name {name:?}: 1-128 characters of A-Z a-z 0-9 _ - . : / #"),
        ))
    }
}

#[tonic::async_trait]
impl ServerApi for GrpcApi {
    async fn publish(
        &self,
        request: Request<proto::PublishRequest>,
    ) -> Result<Response<proto::PublishReply>, Status> {
        let offset = self.publish_one(request.into_inner()).await?;
        Ok(Response::new(proto::PublishReply { offset }))
    }

    async fn broadcast(
        &self,
        request: Request<proto::BroadcastRequest>,
    ) -> Result<Response<proto::BroadcastReply>, Status> {
        let request = request.into_inner();
        let body = json!({"channels": request.channels, "data": data(&request.data_json)?});
        let answer = self.call("broadcast", body).await?;
        let results = answer["results"]
            .as_array()
            .map(|r| r.iter().map(channel_result).collect())
            .unwrap_or_default();
        Ok(Response::new(proto::BroadcastReply { results }))
    }

    async fn disconnect(
        &self,
        request: Request<proto::DisconnectRequest>,
    ) -> Result<Response<proto::CountReply>, Status> {
        let request = request.into_inner();
        let mut body = match request.target {
            Some(proto::disconnect_request::Target::User(user)) => json!({"user": user}),
            Some(proto::disconnect_request::Target::Client(client)) => json!({"client": client}),
            None => json!({}),
        };
        if request.code != 0 {
            body["code"] = json!(request.code.min(u32::from(u16::MAX)));
        }
        let answer = self.call("disconnect", body).await?;
        Ok(Response::new(count_reply(&answer, "disconnected")))
    }

    async fn unsubscribe(
        &self,
        request: Request<proto::UnsubscribeRequest>,
    ) -> Result<Response<proto::CountReply>, Status> {
        let request = request.into_inner();
        let body = json!({"user": request.user, "channel": request.channel});
        let answer = self.call("unsubscribe", body).await?;
        Ok(Response::new(count_reply(&answer, "unsubscribed")))
    }

    async fn presence(
        &self,
        request: Request<proto::ChannelRequest>,
    ) -> Result<Response<proto::PresenceReply>, Status> {
        let body = json!({"channel": request.into_inner().channel});
        let answer = self.call("presence", body).await?;
        let clients = answer["clients"]
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|c| proto::ClientInfo {
                        client: c["client"].as_str().unwrap_or_default().to_owned(),
                        user: c["user"].as_str().unwrap_or_default().to_owned(),
                        conn_info_json: c
                            .get("conn_info")
                            .map(Value::to_string)
                            .unwrap_or_default(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Response::new(proto::PresenceReply {
            clients,
            total: answer["total"].as_u64().unwrap_or(0),
            truncated: answer["truncated"].as_bool().unwrap_or(false),
        }))
    }

    async fn presence_stats(
        &self,
        request: Request<proto::ChannelRequest>,
    ) -> Result<Response<proto::PresenceStatsReply>, Status> {
        let body = json!({"channel": request.into_inner().channel});
        let answer = self.call("presence_stats", body).await?;
        Ok(Response::new(proto::PresenceStatsReply {
            clients: answer["clients"].as_u64().unwrap_or(0),
            users: answer["users"].as_u64().unwrap_or(0),
        }))
    }

    async fn history(
        &self,
        request: Request<proto::HistoryRequest>,
    ) -> Result<Response<proto::HistoryReply>, Status> {
        let request = request.into_inner();
        let mut body = json!({
            "channel": request.channel,
            "since": request.since,
            "before": request.before,
            "reverse": request.reverse,
        });
        if request.limit != 0 {
            body["limit"] = json!(request.limit);
        }
        let answer = self.call("history", body).await?;
        let messages = answer["messages"]
            .as_array()
            .map(|list| list.iter().filter_map(message_of_value).collect())
            .unwrap_or_default();
        Ok(Response::new(proto::HistoryReply {
            messages,
            offset: answer["offset"].as_str().unwrap_or_default().to_owned(),
            epoch: answer["epoch"].as_str().unwrap_or_default().to_owned(),
        }))
    }

    async fn channels(
        &self,
        request: Request<proto::ChannelsRequest>,
    ) -> Result<Response<proto::ChannelsReply>, Status> {
        let request = request.into_inner();
        let mut body = json!({"prefix": request.prefix});
        if request.limit != 0 {
            body["limit"] = json!(request.limit);
        }
        let answer = self.call("channels", body).await?;
        let channels = answer["channels"]
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|c| proto::ChannelCount {
                        channel: c["channel"].as_str().unwrap_or_default().to_owned(),
                        subscribers: c["subscribers"].as_u64().unwrap_or(0),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Response::new(proto::ChannelsReply {
            channels,
            total: answer["total"].as_u64().unwrap_or(0),
        }))
    }

    async fn info(
        &self,
        _request: Request<proto::InfoRequest>,
    ) -> Result<Response<proto::InfoReply>, Status> {
        let answer = self.call("info", json!({})).await?;
        let nodes = answer["nodes"]
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|n| proto::NodeInfo {
                        node: n["node"].as_str().unwrap_or_default().to_owned(),
                        connections: n["connections"].as_u64().unwrap_or(0),
                        subscriptions: n["subscriptions"].as_u64().unwrap_or(0),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Response::new(proto::InfoReply { nodes }))
    }

    async fn revoke(
        &self,
        request: Request<proto::RevokeRequest>,
    ) -> Result<Response<proto::CountReply>, Status> {
        let request = request.into_inner();
        let mut body = match request.target {
            Some(proto::revoke_request::Target::Jti(jti)) => json!({"jti": jti}),
            Some(proto::revoke_request::Target::User(user)) => json!({"user": user}),
            None => json!({}),
        };
        body["until"] = json!(request.until);
        let answer = self.call("revoke", body).await?;
        Ok(Response::new(count_reply(&answer, "disconnected")))
    }

    type SubscribeStream = BoxStream<proto::SubscribeEvent>;

    async fn subscribe(
        &self,
        request: Request<proto::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let request = request.into_inner();
        let app = &self.state.app;
        let mut channels = request.channels;
        channels.sort();
        channels.dedup();
        if channels.is_empty() || channels.len() > app.config.max_subscriptions {
            return Err(invalid(
                "too_many_subscriptions",
                format!("name 1-{} channels", app.config.max_subscriptions),
            ));
        }
        for name in &channels {
            check_channel(name)?;
        }
        let since = match request.since.trim() {
            "" => None,
            text => Some(
                text.parse::<Offset>()
                    .map_err(|e| invalid("bad_request", e))?,
            ),
        };
        let epoch = request.epoch.trim();
        if epoch.len() > MAX_EPOCH_BYTES {
            return Err(invalid(
                "bad_request",
                format!("`epoch` longer than {MAX_EPOCH_BYTES} bytes"),
            ));
        }
        let epochs: Vec<String> = (!epoch.is_empty())
            .then(|| epoch.to_owned())
            .into_iter()
            .collect();
        let (session, client) = StreamSession::open(app);
        let mut started = std::collections::VecDeque::with_capacity(channels.len());
        for name in &channels {
            let subscribed = session.subscribe(name, since, &epochs).await?;
            started.push_back(proto::SubscribeEvent {
                event: Some(proto::subscribe_event::Event::Subscribed(subscribed)),
            });
        }
        // Where each subscription starts first (as the `subscribed` frames of the client
        // protocol), then the messages: history recovered after `since`, then live ones.
        let stream = futures_util::stream::unfold(Some((session, started)), |open| async move {
            let (session, mut started) = open?;
            if let Some(event) = started.pop_front() {
                return Some((Ok(event), Some((session, started))));
            }
            match session.next().await {
                Ok(message) => {
                    let event = proto::SubscribeEvent {
                        event: Some(proto::subscribe_event::Event::Message(message)),
                    };
                    Some((Ok(event), Some((session, started))))
                }
                Err(Some(status)) => Some((Err(status), None)),
                Err(None) => None,
            }
        });
        let mut response = Response::new(Box::pin(stream) as Self::SubscribeStream);
        if let Ok(value) = client.parse() {
            response.metadata_mut().insert("chat-client", value);
        }
        Ok(response)
    }

    async fn publish_stream(
        &self,
        request: Request<Streaming<proto::PublishRequest>>,
    ) -> Result<Response<proto::PublishSummary>, Status> {
        let mut inbound = request.into_inner();
        let mut summary = proto::PublishSummary::default();
        while let Some(publish) = inbound.message().await? {
            if summary.results.len() >= MAX_STREAM_PUBLISHES {
                return Err(Status::resource_exhausted(format!(
                    "too_many_publishes: one stream carries at most {MAX_STREAM_PUBLISHES}; start another"
                )));
            }
            let channel = publish.channel.clone();
            let result = match self.publish_one(publish).await {
                Ok(offset) => {
                    summary.published += 1;
                    proto::channel_result::Result::Offset(offset)
                }
                Err(status) => {
                    summary.failed += 1;
                    proto::channel_result::Result::Error(error_of(&status))
                }
            };
            summary.results.push(proto::ChannelResult {
                channel,
                result: Some(result),
            });
        }
        Ok(Response::new(summary))
    }

    type SessionStream = BoxStream<proto::SessionEvent>;

    async fn session(
        &self,
        request: Request<Streaming<proto::SessionRequest>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let mut inbound = request.into_inner();
        let (session, client) = StreamSession::open(&self.state.app);
        let (acks, answered) = mpsc::channel::<proto::SessionEvent>(SESSION_ACKS);
        let api = GrpcApi {
            state: self.state.clone(),
        };
        let reader = session.clone();
        let max = self.state.app.config.max_subscriptions;
        // The caller's requests, one at a time; its answers wait (bounded) for the caller to
        // read them, which holds back reading further requests.
        tokio::spawn(async move {
            while let Ok(Some(request)) = inbound.message().await {
                let reference = request.r#ref;
                let outcome = match request.request {
                    Some(session_request::Request::Publish(publish)) => {
                        api.publish_one(publish).await.map(reply::Result::Offset)
                    }
                    Some(session_request::Request::Subscribe(channel)) => {
                        match check_channel(&channel) {
                            Err(status) => Err(status),
                            Ok(()) if reader.lock().len() >= max => Err(invalid(
                                "too_many_subscriptions",
                                "subscription limit reached",
                            )),
                            Ok(()) => reader
                                .subscribe(&channel, None, &[])
                                .await
                                .map(reply::Result::Subscribed),
                        }
                    }
                    Some(session_request::Request::Unsubscribe(channel)) => {
                        if reader.unsubscribe(&channel) {
                            Ok(reply::Result::Unsubscribed(true))
                        } else {
                            Err(invalid("bad_request", "not subscribed to this channel"))
                        }
                    }
                    None => Err(invalid("bad_request", "empty request")),
                };
                let result =
                    outcome.unwrap_or_else(|status| reply::Result::Error(error_of(&status)));
                let event = proto::SessionEvent {
                    event: Some(session_event::Event::Reply(proto::Reply {
                        r#ref: reference,
                        result: Some(result),
                    })),
                };
                if acks.send(event).await.is_err() {
                    break;
                }
            }
            // The caller closed its side (or went away): the session ends once its answers
            // are out.
            drop(acks);
        });
        let events = futures_util::stream::unfold(
            Some((session, answered, true)),
            |open| async move {
                let (session, mut answered, mut acks_open) = open?;
                loop {
                    tokio::select! {
                        biased;
                        ack = answered.recv(), if acks_open => match ack {
                            Some(event) => return Some((Ok(event), Some((session, answered, acks_open)))),
                            None => {
                                acks_open = false;
                                session.control().close(close::NORMAL, reasons::CLIENT_CLOSE);
                            }
                        },
                        next = session.next() => match next {
                            Ok(message) => {
                                let event = proto::SessionEvent {
                                    event: Some(session_event::Event::Message(message)),
                                };
                                return Some((Ok(event), Some((session, answered, acks_open))));
                            }
                            Err(Some(status)) => return Some((Err(status), None)),
                            Err(None) => return None,
                        },
                    }
                }
            },
        );
        let stream: Self::SessionStream = Box::pin(events);
        let mut response = Response::new(stream);
        if let Ok(value) = client.parse() {
            response.metadata_mut().insert("chat-client", value);
        }
        Ok(response)
    }
}

/// Serves gRPC on the sockets the API port's accept loop hands over, until `stop`.
pub async fn serve(
    state: Arc<ApiState>,
    mut sockets: mpsc::Receiver<Http2Socket>,
    timeouts: Timeouts,
    stop: CancellationToken,
) {
    let app = state.app.clone();
    let decode_limit = app.config.max_message_bytes + 256 * 1024;
    // A full `PublishStream` summary is the largest answer.
    let encode_limit = decode_limit.max(MAX_STREAM_PUBLISHES * SUMMARY_ENTRY_BYTES + 4096);
    let key_state = state.clone();
    let check_key = move |request: Request<()>| -> Result<Request<()>, Status> {
        let mut headers = axum::http::HeaderMap::new();
        if let Some(value) = request.metadata().get("authorization")
            && let Ok(value) = axum::http::HeaderValue::from_bytes(value.as_bytes())
        {
            headers.insert(axum::http::header::AUTHORIZATION, value);
        }
        methods::authorize(&key_state, &headers).map_err(|refused| {
            key_state.metrics.count("grpc", "unknown", refused.code);
            status_of(refused)
        })?;
        Ok(request)
    };
    let api = ServerApiServer::new(GrpcApi { state })
        .max_decoding_message_size(decode_limit)
        .max_encoding_message_size(encode_limit);
    let api = tonic::service::interceptor::InterceptedService::new(api, check_key);

    let (health, health_service) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .ok();
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .ok();
    // Health follows readiness: SERVING while /readyz is 200.
    let watched = app.clone();
    let health_stop = stop.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = health_stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let serving = not_ready_reason(&watched).is_none();
            for service in ["", "chatcluster.api.v1.ServerApi"] {
                let status = if serving {
                    tonic_health::ServingStatus::Serving
                } else {
                    tonic_health::ServingStatus::NotServing
                };
                health.set_service_status(service, status).await;
            }
        }
    });

    let mut routes = tonic::service::Routes::new(health_service).add_service(api);
    if let Some(reflection) = reflection {
        routes = routes.add_service(reflection);
    }
    if let Some(reflection) = reflection_alpha {
        routes = routes.add_service(reflection);
    }
    let router = routes.prepare().into_axum_router();
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let next = tokio::select! {
            next = sockets.recv() => next,
            _ = stop.cancelled() => None,
        };
        let Some(socket) = next else {
            break;
        };
        connections.spawn(h2::serve_connection(
            socket,
            router.clone(),
            timeouts,
            stop.clone(),
        ));
    }
    connections.close();
    connections.wait().await;
}
