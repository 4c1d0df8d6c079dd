//! A WebSocket connection's socket, driven by its session's single task: frames the session
//! queued (in its [`SessionControl`]) are written in batches, one flush per batch, while the
//! session waits for the next client frame, a timer, or a broker round trip.
//!
//! One task per connection, no split halves and no channel between them: the reads and the
//! writes are polled from the same future, so a delivery costs one wake-up of this task (on the
//! thread that queued it, when it is free) and one `write()` for everything queued by then.
//!
//! Publishes are pipelined: the session hands each one to [`Socket::start_publish`] and goes
//! on reading; the broker round trips overlap, and their answers are queued in request order.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::ws::{Message as WsMessage, WebSocket};
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use futures_util::{SinkExt, StreamExt};
use tokio::time::Sleep;

use crate::broker::now_us;
use crate::fanout::{Outbound, SessionControl};
use crate::metrics::{Metrics, reasons};
use crate::protocol::close;
use crate::server::AppState;

/// Queued frames taken at a time: a slow consumer's queue fills (and it is closed with 4001)
/// while at most this many frames wait in the socket's hands.
const WRITE_BATCH: usize = 32;
/// Bytes taken at a time (past the first frame): what a connection holds outside its queue's
/// byte bound while the socket is full.
const WRITE_BATCH_BYTES: usize = 64 * 1024;
/// Publishes of one connection in flight at once; past this, its frames wait to be read.
const MAX_PUBLISHES_IN_FLIGHT: usize = 32;

/// A publish on its way through the broker; yields the client's answer (`ack` or `error`).
pub type PublishReply = BoxFuture<'static, Outbound>;

/// What the session must handle next.
pub enum Event {
    /// A frame from the client, its error, or `None` at the end of the stream.
    Frame(Option<Result<WsMessage, axum::Error>>),
    /// The session's timer fired.
    Timer,
    /// Someone asked the session to close.
    Closing,
    /// Writing to the socket failed: the connection is gone.
    WriteFailed,
}

/// The socket, the frames taken from the queue and not yet written, and the session's control.
pub struct Socket {
    ws: WebSocket,
    /// Taken from the session's queue, not yet handed to the WebSocket.
    taken: VecDeque<Outbound>,
    /// Frames handed to the WebSocket since the last flush.
    unflushed: bool,
    broken: bool,
    /// Publishes in flight, oldest first (allocated only while there are some).
    publishes: Option<Box<FuturesOrdered<PublishReply>>>,
    control: Arc<SessionControl>,
    app: Arc<AppState>,
}

impl Socket {
    pub fn new(ws: WebSocket, control: Arc<SessionControl>, app: Arc<AppState>) -> Self {
        Socket {
            ws,
            taken: VecDeque::new(),
            unflushed: false,
            broken: false,
            publishes: None,
            control,
            app,
        }
    }

    /// Writes queued frames until the client sends a frame, `timer` fires, the session must
    /// close, or writing fails.
    pub async fn next_event(&mut self, mut timer: Pin<&mut Sleep>) -> Event {
        loop {
            let control = self.control.clone();
            let mut woken = pin!(control.woken());
            if self.broken {
                return Event::WriteFailed;
            }
            if control.closing().is_some() {
                return Event::Closing;
            }
            let event = poll_fn(|cx| {
                self.poll_publishes(cx);
                if self.poll_write(cx).is_err() {
                    return Poll::Ready(Some(Event::WriteFailed));
                }
                if self.in_flight() < MAX_PUBLISHES_IN_FLIGHT
                    && let Poll::Ready(frame) = self.ws.poll_next_unpin(cx)
                {
                    return Poll::Ready(Some(Event::Frame(frame)));
                }
                if woken.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(None);
                }
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Event::Timer));
                }
                Poll::Pending
            })
            .await;
            if let Some(event) = event {
                return event;
            }
        }
    }

    /// Sends a publish on its way; its answer is queued once it and every earlier one are done.
    pub fn start_publish(&mut self, reply: PublishReply) {
        self.publishes
            .get_or_insert_with(Default::default)
            .push_back(reply);
    }

    fn in_flight(&self) -> usize {
        self.publishes.as_ref().map_or(0, |p| p.len())
    }

    /// Queues the answers of the publishes that are done, in request order.
    fn poll_publishes(&mut self, cx: &mut Context<'_>) {
        let Some(publishes) = &mut self.publishes else {
            return;
        };
        while let Poll::Ready(Some(reply)) = publishes.poll_next_unpin(cx) {
            if self.control.push(reply).is_err()
                && self
                    .control
                    .close(close::SLOW_CONSUMER, reasons::SLOW_CONSUMER)
            {
                self.app.metrics.slow_consumers.inc();
            }
        }
        if publishes.is_empty() {
            self.publishes = None;
        }
    }

    /// Waits until every publish in flight is answered, writing queued frames meanwhile.
    pub async fn finish_publishes(&mut self) {
        self.drive(|socket, _| match socket.publishes {
            None => Poll::Ready(()),
            Some(_) => Poll::Pending,
        })
        .await
    }

    /// Runs `work` (e.g. a broker round trip) to completion while writing queued frames, so
    /// deliveries to this connection do not wait for it. Client frames are not read meanwhile.
    pub async fn write_while<F: Future>(&mut self, work: F) -> F::Output {
        let mut work = pin!(work);
        self.drive(|_, cx| work.as_mut().poll(cx)).await
    }

    /// Polls `work` until it is ready, answering publishes and writing queued frames meanwhile.
    async fn drive<T>(
        &mut self,
        mut work: impl FnMut(&mut Self, &mut Context<'_>) -> Poll<T>,
    ) -> T {
        loop {
            let control = self.control.clone();
            let mut woken = pin!(control.woken());
            let output = poll_fn(|cx| {
                self.poll_publishes(cx);
                if let Poll::Ready(output) = work(self, cx) {
                    return Poll::Ready(Some(output));
                }
                if !self.broken && control.closing().is_none() {
                    if self.poll_write(cx).is_err() {
                        self.broken = true;
                    }
                    if woken.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(None);
                    }
                }
                Poll::Pending
            })
            .await;
            if let Some(output) = output {
                return output;
            }
        }
    }

    /// Hands queued frames to the WebSocket until the queue is empty (then flushes) or the
    /// socket is full (then its writability wakes us). `Err` when the connection is gone.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Result<(), axum::Error> {
        loop {
            if self.taken.is_empty() {
                self.control
                    .take(&mut self.taken, WRITE_BATCH, WRITE_BATCH_BYTES);
                if self.taken.is_empty() {
                    break;
                }
            }
            match self.ws.poll_ready_unpin(cx) {
                Poll::Ready(result) => result?,
                Poll::Pending => return Ok(()),
            }
            let Some(item) = self.taken.pop_front() else {
                break;
            };
            self.ws.start_send_unpin(to_ws(&item))?;
            self.unflushed = true;
            written(&self.app.metrics, &item);
        }
        if self.taken.capacity() > 0 {
            // Idle connections hold no queue memory.
            self.taken = VecDeque::new();
        }
        if self.unflushed {
            match self.ws.poll_flush_unpin(cx) {
                Poll::Ready(result) => {
                    self.unflushed = false;
                    result?
                }
                Poll::Pending => {}
            }
        }
        Ok(())
    }

    /// Sends a frame outside the queue (the close frame), waiting for room.
    pub async fn send(&mut self, message: WsMessage) -> Result<(), axum::Error> {
        self.ws.send(message).await
    }

    /// Flushes and closes the sending side.
    pub async fn close(&mut self) -> Result<(), axum::Error> {
        SinkExt::close(&mut self.ws).await
    }

    /// The next client frame (used after closing, to wait for the client's close reply).
    pub async fn next_frame(&mut self) -> Option<Result<WsMessage, axum::Error>> {
        self.ws.next().await
    }
}

fn to_ws(item: &Outbound) -> WsMessage {
    match item {
        Outbound::Frame(text) => WsMessage::Text(text.clone()),
        Outbound::Message(delivery) => WsMessage::Text(delivery.frame.clone()),
        Outbound::Ping => WsMessage::Ping(bytes::Bytes::new()),
    }
}

/// Counts a message handed to the socket and observes its delivery latency.
fn written(metrics: &Metrics, item: &Outbound) {
    if let Outbound::Message(delivery) = item {
        delivery.delivered.inc();
        if delivery.live {
            let latency_us = now_us().saturating_sub(delivery.ts_us);
            metrics.delivery_latency.observe(latency_us as f64 / 1e6);
        }
    }
}
