//! Load generator and benchmark driver for chat-node (see docs/benchmarks.md).
//!
//! `chat-loadgen suite` runs the whole benchmark: it starts its own `redis-server`s,
//! `chat-node`s, Node.js reference servers and Centrifugo nodes on free loopback ports, runs
//! the idle, handshake-burst, drain and fan-out scenarios against every design, measures the kernel's floor per
//! delivery (bench/floor) at each rate, and writes `results.json` and `results.md`.

pub mod burst;
pub mod centrifugo;
pub mod client;
pub mod drain;
pub mod fanout;
pub mod floor;
pub mod idle;
pub mod procstat;
pub mod report;
pub mod servers;
pub mod suite;
