//! `chat-loadgen`: see the crate docs and docs/benchmarks.md.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use chat_loadgen::burst::BurstConfig;
use chat_loadgen::centrifugo;
use chat_loadgen::client::{Endpoint, Proto};
use chat_loadgen::drain::{self, DrainConfig, DrainWorkerConfig};
use chat_loadgen::fanout::FanoutConfig;
use chat_loadgen::floor::FloorConfig;
use chat_loadgen::idle::{self, IdleConfig, WorkerConfig};
use chat_loadgen::report;
use chat_loadgen::servers::{Design, Programs};
use chat_loadgen::suite::{self, FanoutPlan, SuiteConfig};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "Load generator and benchmark driver for chat-node")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the whole benchmark against chat-node, the Node.js reference server and Centrifugo.
    Suite(Box<SuiteArgs>),
    /// Internal: one process of the idle scenario (started by `suite`).
    #[command(hide = true)]
    IdleWorker(WorkerArgs),
    /// Internal: one process of the drain scenario (started by `suite`).
    #[command(hide = true)]
    DrainWorker(DrainWorkerArgs),
}

#[derive(Args)]
struct SuiteArgs {
    /// The chat-node binary.
    #[arg(
        long,
        env = "BENCH_CHAT_NODE",
        default_value = "target/release/chat-node"
    )]
    chat_node: PathBuf,
    /// The reference server's script.
    #[arg(
        long,
        env = "BENCH_REFERENCE",
        default_value = "bench/reference-node/server.js"
    )]
    reference: PathBuf,
    /// The Node.js binary.
    #[arg(long, env = "BENCH_NODE", default_value = "node")]
    node: PathBuf,
    #[arg(long, env = "BENCH_REDIS_SERVER", default_value = "redis-server")]
    redis_server: PathBuf,
    /// The Centrifugo binary (bench/prepare.sh builds v6.9.1 into ~/.cache/chatcluster).
    #[arg(long, env = "BENCH_CENTRIFUGO", default_value = "centrifugo")]
    centrifugo: PathBuf,
    /// The kernel-floor script, run before each fan-out rate.
    #[arg(
        long,
        env = "BENCH_FLOOR",
        default_value = "bench/floor/write_floor.py"
    )]
    floor: PathBuf,
    #[arg(long, env = "BENCH_PYTHON", default_value = "python3")]
    python: PathBuf,
    /// Skip the floor measurement.
    #[arg(long)]
    no_floor: bool,
    /// Measuring time of the floor at each rate, seconds.
    #[arg(long, default_value_t = 3.0)]
    floor_seconds: f64,
    /// Results, server logs.
    #[arg(long, env = "BENCH_OUT", default_value = "bench/results")]
    out: PathBuf,
    /// Connection limit for every server in the idle scenario (default: chat-node derives it
    /// from RLIMIT_NOFILE and the others get the same number).
    #[arg(long, env = "BENCH_MAX_CONNECTIONS")]
    max_connections: Option<u64>,
    /// Which designs to measure.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "chat-node,reference,centrifugo,centrifugo-history"
    )]
    designs: Vec<Design>,
    /// Skip the idle scenario.
    #[arg(long)]
    no_idle: bool,
    /// Connections tried past the limit (each must be refused with 503).
    #[arg(long, default_value_t = 1000)]
    idle_extra: u64,
    /// Load processes holding the idle connections.
    #[arg(long, default_value_t = 4)]
    idle_processes: usize,
    /// Handshakes in flight per load process.
    #[arg(long, default_value_t = 64)]
    idle_concurrency: usize,
    /// Wait after filling before reading the servers' memory.
    #[arg(long, default_value = "3", value_parser = secs)]
    idle_settle: Duration,
    /// Skip the handshake-burst scenario.
    #[arg(long)]
    no_burst: bool,
    /// Connections of the handshake burst (capped by the connection limit).
    #[arg(long, default_value_t = 10_000)]
    burst_connections: u64,
    /// Connections started per second in the burst, across its load processes.
    #[arg(long, default_value_t = 10_000.0)]
    burst_rate: f64,
    /// Load processes of the burst.
    #[arg(long, default_value_t = 2)]
    burst_processes: usize,
    /// Skip the drain-and-reconnect scenario.
    #[arg(long)]
    no_drain: bool,
    /// Clients on the node that the drain scenario stops.
    #[arg(long, default_value_t = 5_000)]
    drain_connections: u64,
    /// Load processes of the drain scenario.
    #[arg(long, default_value_t = 2)]
    drain_processes: usize,
    /// Skip the fan-out scenario.
    #[arg(long)]
    no_fanout: bool,
    /// Total publish rates to step through, messages/s.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "500,1000,2000,3000,4000,6000,8000,10000,12000,16000,20000"
    )]
    rates: Vec<u64>,
    #[arg(long, default_value_t = 100)]
    channels: usize,
    #[arg(long, default_value_t = 10)]
    subscribers_per_channel: usize,
    #[arg(long, default_value_t = 10)]
    publishers: usize,
    #[arg(long, default_value_t = 2)]
    nodes: usize,
    /// Padding in each message's data, bytes.
    #[arg(long, default_value_t = 64)]
    payload_bytes: usize,
    /// Publishing time of each step, seconds.
    #[arg(long, default_value = "10", value_parser = secs)]
    step: Duration,
    /// How long to wait for a step's deliveries after publishing, seconds.
    #[arg(long, default_value = "10", value_parser = secs)]
    drain_timeout: Duration,
    /// The latency bound of "highest rate with p99 under …", milliseconds.
    #[arg(long, default_value_t = 50.0)]
    p99_bound_ms: f64,
    /// Rates up to this one are measured even when p99 is over the bound.
    #[arg(long, default_value_t = 3000)]
    always_up_to: u64,
    /// Exit non-zero on a correctness problem (idle limit not exact, a lost, duplicated or
    /// reordered message); used by the smoke test.
    #[arg(long)]
    check: bool,
}

fn secs(s: &str) -> Result<Duration, String> {
    s.parse::<f64>()
        .map(Duration::from_secs_f64)
        .map_err(|e| format!("seconds: {e}"))
}

#[derive(Args)]
struct WorkerArgs {
    #[arg(long)]
    addr: SocketAddr,
    #[arg(long, default_value = "/ws")]
    path: String,
    #[arg(long)]
    connections: u64,
    #[arg(long, value_delimiter = ',')]
    sources: Vec<Ipv4Addr>,
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Connections started per second, evenly spaced (0: as fast as --concurrency allows).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Centrifugo's token key (the server speaks Centrifugo's protocol when set).
    #[arg(
        long,
        env = "BENCH_CENTRIFUGO_SECRET",
        default_value = "",
        hide_env_values = true
    )]
    centrifugo_secret: String,
}

#[derive(Args)]
struct DrainWorkerArgs {
    #[command(flatten)]
    worker: WorkerArgs,
    /// The node the clients move to when theirs closes them.
    #[arg(long)]
    fallback: SocketAddr,
    /// Seconds to wait for every client to move.
    #[arg(long, value_parser = secs)]
    move_timeout: Duration,
}

impl WorkerArgs {
    fn endpoint(&self) -> Endpoint {
        Endpoint {
            addr: self.addr,
            path: self.path.clone(),
            proto: if self.centrifugo_secret.is_empty() {
                Proto::ChatV1
            } else {
                Proto::Centrifugo(centrifugo::Auth::new(&self.centrifugo_secret))
            },
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::IdleWorker(a) => {
            idle::worker(WorkerConfig {
                endpoint: a.endpoint(),
                connections: a.connections,
                sources: a.sources,
                concurrency: a.concurrency,
                rate: a.rate,
            })
            .await
        }
        Cmd::DrainWorker(a) => {
            drain::worker(DrainWorkerConfig {
                endpoint: a.worker.endpoint(),
                fallback: a.fallback,
                connections: a.worker.connections,
                sources: a.worker.sources,
                concurrency: a.worker.concurrency,
                move_timeout: a.move_timeout,
            })
            .await
        }
        Cmd::Suite(a) => run_suite(*a).await,
    }
}

async fn run_suite(a: SuiteArgs) -> anyhow::Result<()> {
    let cfg = SuiteConfig {
        programs: Programs {
            chat_node: a.chat_node,
            node: a.node,
            reference_script: a.reference,
            redis_server: a.redis_server,
            centrifugo: a.centrifugo,
            // Made up per run: only this run's load generator signs tokens with it.
            centrifugo_secret: format!(
                "bench-{:x}-{:x}",
                std::process::id(),
                chat_loadgen::client::now_micros()
            ),
        },
        out_dir: a.out.clone(),
        max_connections: a.max_connections,
        designs: a.designs,
        idle: (!a.no_idle).then(|| IdleConfig {
            limit: 0,
            extra: a.idle_extra,
            processes: a.idle_processes,
            first_source: 2,
            concurrency: a.idle_concurrency,
            settle: a.idle_settle,
            fill_timeout: Duration::from_secs(300),
        }),
        burst: (!a.no_burst).then(|| BurstConfig {
            connections: a.burst_connections,
            rate: a.burst_rate,
            processes: a.burst_processes,
            first_source: 40,
            fill_timeout: Duration::from_secs(300),
        }),
        drain: (!a.no_drain).then(|| DrainConfig {
            connections: a.drain_connections,
            processes: a.drain_processes,
            first_source: 50,
            concurrency: a.idle_concurrency,
            fill_timeout: Duration::from_secs(300),
            move_timeout: Duration::from_secs(60),
        }),
        fanout: (!a.no_fanout).then(|| FanoutPlan {
            config: FanoutConfig {
                channels: a.channels,
                subscribers_per_channel: a.subscribers_per_channel,
                publishers: a.publishers,
                payload_bytes: a.payload_bytes,
                step: a.step,
                drain_timeout: a.drain_timeout,
                channel_prefix: "bench:c-".to_owned(),
            },
            nodes: a.nodes,
            rates: a.rates,
            p99_bound_ms: a.p99_bound_ms,
            always_up_to: a.always_up_to,
        }),
        floor: (!a.no_floor && !a.no_fanout).then(|| FloorConfig {
            python: a.python,
            script: a.floor,
            conns: a.channels * a.subscribers_per_channel,
            seconds: a.floor_seconds,
        }),
    };
    let result = suite::run(&cfg).await?;
    let md = report::markdown(&result);
    std::fs::write(
        a.out.join("results.json"),
        serde_json::to_string_pretty(&result)?,
    )
    .context("failed to write results.json")?;
    std::fs::write(a.out.join("results.md"), &md).context("failed to write results.md")?;
    println!("{md}");
    let problems = result.problems(a.check);
    for p in &problems {
        eprintln!("problem: {p}");
    }
    if a.check {
        let (passed, failed) = result.check_counts();
        eprintln!("bench-smoke: {passed} passed, {failed} failed");
    }
    if a.check && !problems.is_empty() {
        anyhow::bail!("{} correctness problem(s)", problems.len());
    }
    Ok(())
}
