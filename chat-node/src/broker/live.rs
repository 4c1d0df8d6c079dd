//! Which channels the live feed is subscribed to while a session with Redis is connected, and
//! the requests that change it.
//!
//! Sessions ask in order (a join when a channel gets a local subscriber, a leave when it lost
//! its last). One request at a time is in flight on the feed — on a single server Redis answers
//! the Pub/Sub connection in order anyway — and whatever queued up meanwhile goes out together
//! as the next request: consecutive joins as one batched `SUBSCRIBE`, consecutive leaves as one
//! `UNSUBSCRIBE`. A join for a channel Redis already confirmed is answered at once. The feed is
//! read all the while (see `serve` in [`super::redis`]), so a request waiting on Redis never
//! holds up the messages of the channels already subscribed.
//!
//! A request that Redis has not answered within the response timeout fails only the sessions
//! that waited on it (they get `unavailable` and may subscribe again); the session with Redis
//! goes on. Only when nothing at all arrived on the feed since the request was sent is the
//! connection presumed dead, and the broker reconnects. A late answer is harmless: the sessions
//! that gave up left again, and their leave is sent after the late request on the same
//! connection.
//!
//! On a Redis Cluster each channel of a request is answered on its own (its own `SSUBSCRIBE`,
//! to its own shard): a shard that is down fails only its channels' sessions, and never ends
//! the session with Redis (the shard probe decides about shards). A leave its shard could not
//! take is handed back, to be sent again once the shard answers.

use std::collections::{HashSet, VecDeque};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use redis::RedisError;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::BrokerError;
use super::link::FeedSink;
use super::redis::live_channel;
use crate::fanout::Hub;

/// A session's request to the live feed.
pub enum Request {
    /// A channel got a local subscriber; answered once the feed receives it.
    Join(String, oneshot::Sender<Result<(), BrokerError>>),
    /// A channel may have lost its last local subscriber (checked when the request is sent).
    Leave(String),
}

/// Why the session with Redis must end after a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Lost {
    /// Redis answered with a connection error.
    Failed,
    /// No answer, and nothing else arrived on the feed since the request was sent.
    Silent,
}

impl Lost {
    pub fn reason(&self) -> &'static str {
        match self {
            Lost::Failed => "subscribe request failed",
            Lost::Silent => "pub/sub connection silent",
        }
    }
}

struct InFlight {
    /// The outcome of each channel of `channels`.
    answer: BoxFuture<'static, Vec<Result<(), RedisError>>>,
    sent: Instant,
    join: bool,
    channels: Vec<String>,
    /// The sessions waiting on a join, each with its channel's index in `channels`.
    waiting: Vec<(usize, oneshot::Sender<Result<(), BrokerError>>)>,
}

/// The feed's subscriptions during one connected session.
pub struct Subscriptions {
    /// Channels Redis confirmed, with no unsubscribe sent since.
    confirmed: HashSet<String>,
    queued: VecDeque<Request>,
    in_flight: Option<InFlight>,
}

impl Subscriptions {
    /// Starts from the channels a resync subscribed.
    pub fn new(confirmed: HashSet<String>) -> Self {
        Subscriptions {
            confirmed,
            queued: VecDeque::new(),
            in_flight: None,
        }
    }

    /// Takes a session's request: a join of a channel already subscribed is answered at once
    /// (a leave queued before it will find the channel's new subscriber and be skipped), every
    /// other request is queued.
    pub fn push(&mut self, request: Request) {
        match request {
            Request::Join(channel, reply) if self.confirmed.contains(&channel) => {
                let _ = reply.send(Ok(()));
            }
            request => self.queued.push_back(request),
        }
    }

    /// Sends the next batch when no request is in flight: every consecutive join queued (as one
    /// request), or every consecutive leave whose channel has no local subscriber any more.
    pub fn send_next(&mut self, sink: &FeedSink, hub: &Hub) {
        while self.in_flight.is_none() {
            let Some(first) = self.queued.front() else {
                return;
            };
            let join = matches!(first, Request::Join(..));
            let mut channels = Vec::new();
            let mut waiting = Vec::new();
            while let Some(request) = self.queued.front() {
                if matches!(request, Request::Join(..)) != join {
                    break;
                }
                match self.queued.pop_front() {
                    Some(Request::Join(channel, reply)) => {
                        if self.confirmed.contains(&channel) {
                            let _ = reply.send(Ok(()));
                            continue;
                        }
                        let index = match channels.iter().position(|c| *c == channel) {
                            Some(index) => index,
                            None => {
                                channels.push(channel);
                                channels.len() - 1
                            }
                        };
                        waiting.push((index, reply));
                    }
                    Some(Request::Leave(channel)) => {
                        if !hub.has_subscribers(&channel) && !channels.contains(&channel) {
                            self.confirmed.remove(&channel);
                            channels.push(channel);
                        }
                    }
                    None => break,
                }
            }
            if channels.is_empty() {
                continue;
            }
            let sink = sink.clone();
            let names: Vec<String> = channels.iter().map(|c| live_channel(c)).collect();
            let answer = async move { sink.request_each(&names, join).await }.boxed();
            self.in_flight = Some(InFlight {
                answer,
                sent: Instant::now(),
                join,
                channels,
                waiting,
            });
        }
    }

    /// Redis dropped `channel`'s subscription. True when it was confirmed and no unsubscribe
    /// of ours was sent since (so the drop is Redis's own: the channel's cluster slot moved);
    /// the channel is then unconfirmed until [`Subscriptions::rejoined`].
    pub fn dropped(&mut self, channel: &str) -> bool {
        self.confirmed.remove(channel)
    }

    /// A channel Redis dropped is subscribed again: confirmed, or, when its last local
    /// subscriber left meanwhile, unsubscribed like any channel that lost it.
    pub fn rejoined(&mut self, channel: String, hub: &Hub) {
        if hub.has_subscribers(&channel) {
            self.confirmed.insert(channel);
        } else {
            self.queued.push_back(Request::Leave(channel));
        }
    }

    /// Whether Redis confirmed `channel` (and no unsubscribe was sent since).
    pub fn is_confirmed(&self, channel: &str) -> bool {
        self.confirmed.contains(channel)
    }

    /// The confirmed channels that `pick` selects.
    pub fn confirmed_where(&self, pick: impl Fn(&str) -> bool) -> Vec<String> {
        self.confirmed.iter().filter(|c| pick(c)).cloned().collect()
    }

    /// Waits for Redis's answer to the request in flight, one outcome per channel (forever when
    /// there is none); cancel-safe, for a `select!`.
    pub async fn answered(&mut self) -> Vec<Result<(), RedisError>> {
        match &mut self.in_flight {
            Some(in_flight) => (&mut in_flight.answer).await,
            None => std::future::pending().await,
        }
    }

    /// Settles the request in flight with its `answers` (one per channel): the sessions that
    /// waited on a join learn their channel's outcome. `last_heard` is when the feed last
    /// delivered a message, and `timed_out` is told of requests Redis let time out while the
    /// feed kept delivering. With `per_shard` (a cluster) no answer ends the session with
    /// Redis, and the channels whose leave failed for want of an answer are returned, to be
    /// left again later. Else `Err` says the session with Redis is lost.
    pub fn settle(
        &mut self,
        answers: Vec<Result<(), RedisError>>,
        last_heard: Instant,
        timed_out: impl FnOnce(),
        per_shard: bool,
    ) -> Result<Vec<String>, Lost> {
        let Some(done) = self.in_flight.take() else {
            return Ok(Vec::new());
        };
        let outcome = |i: usize| answers.get(i).map_or(Ok(()), |a| a.as_ref().map(|_| ()));
        if done.join {
            for (i, channel) in done.channels.iter().enumerate() {
                if outcome(i).is_ok() {
                    self.confirmed.insert(channel.clone());
                }
            }
        }
        for (i, reply) in done.waiting {
            let _ = reply.send(outcome(i).map_err(|_| BrokerError::Unavailable));
        }
        let no_answer =
            |e: &RedisError| e.is_timeout() || e.is_io_error() || e.is_connection_dropped();
        if per_shard {
            if answers
                .iter()
                .any(|a| a.as_ref().is_err_and(|e| e.is_timeout()))
            {
                timed_out();
            }
            if done.join {
                return Ok(Vec::new());
            }
            let failed = done
                .channels
                .into_iter()
                .zip(&answers)
                .filter(|(_, a)| a.as_ref().is_err_and(no_answer))
                .map(|(channel, _)| channel)
                .collect();
            return Ok(failed);
        }
        match answers.into_iter().find(Result::is_err).unwrap_or(Ok(())) {
            Ok(()) => Ok(Vec::new()),
            Err(e) if e.is_timeout() && last_heard < done.sent => Err(Lost::Silent),
            Err(e) if e.is_timeout() => {
                timed_out();
                Ok(Vec::new())
            }
            Err(e)
                if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() =>
            {
                Err(Lost::Failed)
            }
            // Redis refused the request: only the sessions that waited on it are told.
            Err(_) => Ok(Vec::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    fn io_error() -> RedisError {
        RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
    }

    fn timeout() -> RedisError {
        RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
    }

    /// `Subscriptions` with a request in flight for `channels`, one session waiting on each
    /// join; returns the waiters' receivers.
    fn in_flight(
        join: bool,
        channels: &[&str],
        sent: Instant,
    ) -> (
        Subscriptions,
        Vec<oneshot::Receiver<Result<(), BrokerError>>>,
    ) {
        let mut subscriptions = Subscriptions::new(HashSet::new());
        let mut waiting = Vec::new();
        let mut receivers = Vec::new();
        if join {
            for i in 0..channels.len() {
                let (tx, rx) = oneshot::channel();
                waiting.push((i, tx));
                receivers.push(rx);
            }
        }
        subscriptions.in_flight = Some(InFlight {
            answer: std::future::pending().boxed(),
            sent,
            join,
            channels: channels.iter().map(|c| c.to_string()).collect(),
            waiting,
        });
        (subscriptions, receivers)
    }

    #[test]
    fn on_a_cluster_a_failed_channel_fails_only_its_own_sessions() {
        let now = Instant::now();
        let (mut subs, mut waiters) = in_flight(true, &["a", "b", "c"], now);
        let told = Cell::new(false);
        let settled = subs.settle(
            vec![Ok(()), Err(io_error()), Err(timeout())],
            now,
            || told.set(true),
            true,
        );
        assert_eq!(settled, Ok(vec![]), "the session with Redis goes on");
        assert!(subs.is_confirmed("a"));
        assert!(!subs.is_confirmed("b") && !subs.is_confirmed("c"));
        assert!(matches!(waiters[0].try_recv(), Ok(Ok(()))));
        assert!(matches!(
            waiters[1].try_recv(),
            Ok(Err(BrokerError::Unavailable))
        ));
        assert!(matches!(
            waiters[2].try_recv(),
            Ok(Err(BrokerError::Unavailable))
        ));
        assert!(
            told.get(),
            "a timeout is counted, never taken for a silent feed"
        );
    }

    #[test]
    fn on_a_cluster_leaves_without_an_answer_are_handed_back() {
        let now = Instant::now();
        let (mut subs, _) = in_flight(false, &["a", "b", "c"], now);
        let settled = subs.settle(
            vec![Err(io_error()), Ok(()), Err(timeout())],
            now,
            || {},
            true,
        );
        assert_eq!(settled, Ok(vec!["a".to_owned(), "c".to_owned()]));
    }

    #[test]
    fn on_a_single_server_a_connection_error_or_a_silent_feed_ends_the_session() {
        let sent = Instant::now();
        let (mut subs, mut waiters) = in_flight(true, &["a", "b"], sent);
        let settled = subs.settle(vec![Ok(()), Err(io_error())], sent, || {}, false);
        assert_eq!(settled, Err(Lost::Failed));
        assert!(subs.is_confirmed("a"), "the batch that was answered counts");
        assert!(matches!(
            waiters[1].try_recv(),
            Ok(Err(BrokerError::Unavailable))
        ));

        let earlier = sent - std::time::Duration::from_secs(1);
        let (mut subs, _) = in_flight(true, &["a"], sent);
        let settled = subs.settle(vec![Err(timeout())], earlier, || {}, false);
        assert_eq!(
            settled,
            Err(Lost::Silent),
            "nothing heard since it was sent"
        );

        let later = sent + std::time::Duration::from_secs(1);
        let (mut subs, _) = in_flight(true, &["a"], sent);
        let told = Cell::new(false);
        let settled = subs.settle(vec![Err(timeout())], later, || told.set(true), false);
        assert_eq!(
            settled,
            Ok(vec![]),
            "the feed kept delivering: only this request failed"
        );
        assert!(told.get());
    }
}
