//! What the server API asks of every node (`disconnect`, `unsubscribe`, `revoke`), and how one
//! node carries it out on its own sessions. The same [`Command`] travels between nodes on the
//! control channel (see [`super::cluster`]); the embedded broker applies it locally only.

use axum::extract::ws::Utf8Bytes;
use serde::{Deserialize, Serialize};

use super::revocations::{Revocation, now_secs};
use crate::fanout::Outbound;
use crate::metrics::reasons;
use crate::presence::{self, Entry};
use crate::protocol::{ServerFrame, close};
use crate::replay::detach;
use crate::server::AppState;

/// One command for every node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Close the sessions of a user, or the one with a client id, with `code`.
    Disconnect {
        user: Option<String>,
        client: Option<String>,
        code: u16,
    },
    /// Unsubscribe every session of `user` from `channel`.
    Unsubscribe { user: String, channel: String },
    /// Remember the revocation and close the live sessions it covers with 1008.
    Revoke { revocation: Revocation },
}

/// Carries out `command` on this node's sessions; returns how many sessions it touched.
pub fn apply(app: &AppState, command: &Command) -> u64 {
    match command {
        Command::Disconnect { user, client, code } => {
            // Client ids are 32 hex digits; anything else names no session.
            let client = client
                .as_deref()
                .and_then(|c| u128::from_str_radix(c, 16).ok());
            let found = app.sessions.find(|tag| {
                (user.is_some() && tag.user.as_deref() == user.as_deref())
                    || client.is_some_and(|c| c != 0 && tag.client == c)
            });
            let mut closed = 0;
            for control in found {
                if control.close(*code, reasons::DISCONNECTED) {
                    closed += 1;
                }
            }
            closed
        }
        Command::Unsubscribe { user, channel } => {
            let found = app
                .sessions
                .find(|tag| tag.user.as_deref() == Some(user.as_str()));
            let mut removed = 0;
            for control in found {
                if !app.hub.is_subscribed(channel, control.id()) {
                    continue;
                }
                detach(app, channel, control.id());
                removed += 1;
                // WebSocket clients are told (SSE streams as an `unsubscribed` event) and leave
                // the channel's presence (with a `leave` where it has them); a long-poll has no
                // client id, no presence entry and no frame for it.
                if control.tag().client != 0 {
                    presence::leave(app, channel, || Entry::of_session(control.tag()));
                    let frame = ServerFrame::Unsubscribed { channel }.to_json();
                    if control
                        .push(Outbound::Frame(Utf8Bytes::from(frame)))
                        .is_err()
                    {
                        control.close(close::SLOW_CONSUMER, reasons::SLOW_CONSUMER);
                    }
                }
            }
            removed
        }
        Command::Revoke { revocation } => {
            // A full set here (another node accepted it) still closes the live sessions.
            let _ = app.revocations.insert(revocation, now_secs());
            let found = app.sessions.find(|tag| revocation.covers_session(tag));
            let mut closed = 0;
            for control in found {
                if control.close(close::POLICY, reasons::TOKEN_REVOKED) {
                    closed += 1;
                }
            }
            closed
        }
    }
}
