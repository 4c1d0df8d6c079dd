//! chat-node: the lean WebSocket server of a ChatCluster. The contract (endpoints, flags,
//! protocol v1, close codes, metrics) is described in `docs/protocol.md`; the design in
//! `docs/chat-node.md`.
#![forbid(unsafe_code)]

pub mod accept;
pub mod admin;
pub mod assets;
pub mod auth;
pub mod broker;
pub mod channel;
pub mod config;
pub mod fanout;
pub mod handshake;
pub mod history;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod namespaces;
pub mod offset;
pub mod origin;
pub mod per_user;
pub mod poll;
pub mod presence;
pub mod protocol;
pub mod publish;
pub mod queue;
pub mod rates;
pub mod replay;
pub mod request_cycle;
pub mod server;
pub mod server_api;
pub mod session;
pub mod socket;
pub mod sse;
pub mod telemetry;

pub use config::Config;
pub use server::{ServeError, run, run_with_api};
