//! A subscription's history replay (`since`), in pages, paced by the client.
//!
//! Why pages: reading a channel's whole backlog at once (one `XRANGE` to the end) made every
//! subscriber with `since` hold its own copy of up to `history-size` × `max-message-bytes` and
//! blocked Redis for every other client while the copy was made. Now:
//!
//! 1. [`begin`] registers the subscription *pending* (live messages are buffered for it), makes
//!    sure the node receives the channel, and asks the broker only how many messages follow
//!    `since` (counted in short steps, never read; past `--max-replay` it is a gap). The
//!    caller queues `subscribed` with that count.
//! 2. [`Replay::run`] reads the history in pages of at most [`PAGE_BYTES`], and reads the next
//!    page only once the client has drained its send queue to a quarter of
//!    `--send-queue-bytes`; each message waits for room below half of it (the other half stays
//!    free for live traffic on the connection's other channels). Frames are shared with every
//!    other subscriber replaying the same messages ([`Hub::history_delivery`]).
//! 3. Once the promised messages are queued, [`Hub::go_live`] switches the subscription to the
//!    live feed and queues the buffered live messages after the last replayed offset. If the
//!    pending buffer overflowed meanwhile (a long replay of a busy channel), the replay reads on
//!    from history until it has caught up, then switches.
//!
//! A client that accepts nothing for `--send-timeout` while its replay waits is a slow consumer
//! (4001), as is one whose replay fell behind the history's trimming (messages it was promised
//! are gone): both should reconnect with `since`, and then get a gap.

use std::sync::Arc;

use tracing::debug;

use crate::broker::{BrokerError, HistoryStart};
use crate::fanout::{CatchUp, Hub, NoRoom, Outbound, Subscriber};
use crate::metrics::reasons;
use crate::offset::Offset;
use crate::protocol::{ServerFrame, close};
use crate::server::AppState;

/// Largest page read at once (estimated from the sizes of the messages read so far, starting
/// from `--max-message-bytes`), so a page in flight is a bounded transient.
pub const PAGE_BYTES: usize = 256 * 1024;
/// Most messages read at once.
const PAGE_MESSAGES: usize = 128;

/// Why a replay ended before its subscription went live.
#[derive(Debug)]
pub enum ReplayError {
    /// The session is closing anyway.
    Closing,
    /// The client accepted nothing for the send timeout.
    Stalled,
    /// Messages the replay still needed were trimmed from history meanwhile.
    Lost,
    /// The broker failed while reading a page.
    Broker(BrokerError),
}

impl From<NoRoom> for ReplayError {
    fn from(no_room: NoRoom) -> Self {
        match no_room {
            NoRoom::Closing => ReplayError::Closing,
            NoRoom::Stalled => ReplayError::Stalled,
        }
    }
}

impl From<BrokerError> for ReplayError {
    fn from(e: BrokerError) -> Self {
        ReplayError::Broker(e)
    }
}

/// A pending subscription whose history is still to be queued.
pub struct Replay {
    channel: String,
    subscriber: Subscriber,
    /// The last offset queued (or the starting point).
    cursor: Offset,
    /// Messages promised in `subscribed.recovered` and not queued yet.
    remaining: usize,
}

/// Subscribes `subscriber` to `channel` on this node, pending: joins the live feed, then asks
/// the broker where the replay starts. A `since` given with `epochs` (those its offsets came
/// from) is a gap when the channel's epoch is none of them (its offsets name messages of a
/// history that is gone), unless `since` is a message the current history still holds (the
/// client saw this history: it stayed subscribed while the old one was lost, and its epoch is
/// merely stale). No `epochs`: the broker's own checks only. On failure the subscription is
/// removed again.
pub async fn begin(
    app: &AppState,
    channel: &str,
    since: Option<Offset>,
    epochs: &[String],
    subscriber: &Subscriber,
) -> Result<(Replay, HistoryStart), BrokerError> {
    app.hub.add_pending(channel, subscriber.clone());
    if app.namespaces.of(channel).history.is_none() {
        // Nothing to replay and nothing to ask the broker (no offsets, no epoch): live only.
        return match app.broker.join(channel).await {
            Ok(()) => Ok((
                Replay {
                    channel: channel.to_owned(),
                    subscriber: subscriber.clone(),
                    cursor: Offset::ZERO,
                    remaining: 0,
                },
                HistoryStart::default(),
            )),
            Err(e) => {
                detach(app, channel, subscriber.id);
                Err(e)
            }
        };
    }
    let start = async {
        app.broker.join(channel).await?;
        app.broker
            .history_start(channel, since, app.config.max_replay)
            .await
    }
    .await;
    let start = match start {
        Ok(mut start)
            if since.is_some()
                && !start.since_kept
                && !epochs.is_empty()
                && !epochs.contains(&start.epoch) =>
        {
            start.gap = true;
            start.count = 0;
            start
        }
        Ok(start) => start,
        Err(e) => {
            detach(app, channel, subscriber.id);
            return Err(e);
        }
    };
    let replay = Replay {
        channel: channel.to_owned(),
        subscriber: subscriber.clone(),
        // With history to replay it starts after `since`, else after the newest offset.
        cursor: match since {
            Some(since) if start.count > 0 => since,
            _ => start.newest,
        },
        remaining: start.count,
    };
    Ok((replay, start))
}

/// The `subscribed` frame of a subscription begun with `start`: without offset and epoch in a
/// namespace without history.
pub fn subscribed<'a>(
    app: &AppState,
    channel: &'a str,
    start: &'a HistoryStart,
) -> ServerFrame<'a> {
    let kept = app.namespaces.of(channel).history.is_some();
    ServerFrame::Subscribed {
        channel,
        offset: kept.then_some(start.newest),
        recovered: start.count,
        gap: start.gap,
        epoch: kept.then_some(start.epoch.as_str()),
    }
}

/// Removes a subscription; tells the broker when it was the channel's last on this node.
pub fn detach(app: &AppState, channel: &str, subscriber_id: u64) {
    if app.hub.remove(channel, subscriber_id) {
        app.broker.leave(channel);
    }
}

impl Replay {
    /// The channel being replayed.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The subscriber it is replayed to.
    pub fn subscriber(&self) -> &Subscriber {
        &self.subscriber
    }

    /// Queues the history in pages as the client drains, then turns the subscription live.
    pub async fn run(mut self, app: &AppState) -> Result<(), ReplayError> {
        let hub: &Arc<Hub> = &app.hub;
        let control = self.subscriber.control.clone();
        let timeout = app.config.send_timeout;
        let replay_bytes = (control.max_bytes() / 2).max(1);
        let page_bytes = (replay_bytes / 2).clamp(1, PAGE_BYTES);
        let mut average = app.config.max_message_bytes.max(1);
        // Whether every message before the pending buffer (re)started is at or before the
        // cursor once the promised ones are queued: true from the start (the broker was asked
        // for the newest offset after the buffer started), false after the buffer overflowed,
        // until a page read after that came back short (it reached the end of the history).
        let mut synced = true;
        loop {
            if self.remaining == 0 && synced {
                match hub.go_live(&self.channel, self.subscriber.id, self.cursor) {
                    Ok(()) => return Ok(()),
                    Err(CatchUp) => synced = false,
                }
            }
            control.wait_below(replay_bytes / 2, timeout).await?;
            let max = (page_bytes / average).clamp(1, PAGE_MESSAGES);
            let page = app
                .broker
                .history_page(&self.channel, self.cursor, max)
                .await?;
            if page.trimmed {
                return Err(ReplayError::Lost);
            }
            let (read, mut bytes) = (page.messages.len(), 0);
            // Consumed one by one: a decoded message is freed once its frame is queued.
            for message in page.messages {
                let delivery = hub.history_delivery(&message);
                let size = delivery.frame.len();
                bytes += size;
                loop {
                    control.wait_for_share(size, timeout).await?;
                    // Fails only when live traffic of another channel took the room first.
                    if control.push(Outbound::Message(delivery.clone())).is_ok() {
                        break;
                    }
                }
                self.cursor = message.offset;
                self.remaining = self.remaining.saturating_sub(1);
                // Encoding a big page is real work: let other sessions run in between.
                tokio::task::yield_now().await;
            }
            if let Some(per_message) = bytes.checked_div(read) {
                average = per_message.max(1);
            }
            if read < max {
                if self.remaining > 0 {
                    // The history ended before the promised messages: they expired meanwhile.
                    return Err(ReplayError::Lost);
                }
                synced = true;
            }
        }
    }
}

/// Ends a replay that failed: the session closes (4001 for a slow or outrun client, 1011 when
/// the broker failed after `subscribed` was sent).
pub fn close_after(app: &AppState, subscriber: &Subscriber, error: &ReplayError, channel: &str) {
    let control = &subscriber.control;
    match error {
        ReplayError::Closing => {}
        ReplayError::Stalled | ReplayError::Lost => {
            debug!(details.channel = %channel, details.reason = ?error, "replay ended: slow consumer");
            if control.close(close::SLOW_CONSUMER, reasons::SLOW_CONSUMER) {
                app.metrics.slow_consumers.inc();
            }
        }
        ReplayError::Broker(e) => {
            debug!(details.channel = %channel, details.reason = %e, "replay failed");
            control.close(close::INTERNAL, reasons::INTERNAL);
        }
    }
}
