//! The whole benchmark in one run: the idle, handshake-burst and drain scenarios on each design,
//! then the fan-out
//! scenario on every design at once (two nodes + one Redis each), stepping the rate up and
//! taking the designs in turn at each step so that all see the same machine load; before each
//! rate, the kernel's floor per delivery at that rate (see [`crate::floor`]).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::burst::{self, BurstConfig, BurstResult};
use crate::drain::{self, DrainConfig, DrainResult};
use crate::fanout::{FanoutConfig, Session, StepResult};
use crate::floor::{self, Floor, FloorConfig};
use crate::idle::{self, IdleConfig, IdleResult};
use crate::procstat::{self, Watched};
use crate::servers::{ChatServer, Design, Programs, Redis};

/// Settings of a suite run.
#[derive(Debug, Clone)]
pub struct SuiteConfig {
    pub programs: Programs,
    pub out_dir: PathBuf,
    /// `None` = let chat-node derive its limit from RLIMIT_NOFILE; the reference gets the same.
    pub max_connections: Option<u64>,
    /// The designs to measure (all four, normally).
    pub designs: Vec<Design>,
    pub idle: Option<IdleConfig>,
    pub burst: Option<BurstConfig>,
    pub drain: Option<DrainConfig>,
    pub fanout: Option<FanoutPlan>,
    /// The floor measurement before each fan-out rate (None: not measured).
    pub floor: Option<FloorConfig>,
}

/// The fan-out scenario's steps and when to stop stepping a design.
#[derive(Debug, Clone)]
pub struct FanoutPlan {
    pub config: FanoutConfig,
    pub nodes: usize,
    pub rates: Vec<u64>,
    /// The latency bound of "the highest rate with p99 under …".
    pub p99_bound_ms: f64,
    /// Rates up to this one are always measured (unless a step did not drain).
    pub always_up_to: u64,
}

/// Where and under which load the run happened.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    pub kernel: String,
    pub nofile_hard: u64,
    pub loadavg_start: f64,
    pub loadavg_end: f64,
    pub started_unix: u64,
}

/// Everything one run measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SuiteResult {
    pub machine: Machine,
    pub p99_bound_ms: f64,
    pub idle: Vec<(Design, IdleResult)>,
    #[serde(default)]
    pub burst: Vec<(Design, BurstResult)>,
    #[serde(default)]
    pub drain: Vec<(Design, DrainResult)>,
    pub fanout: Vec<(Design, StepResult)>,
    /// The kernel's floor per delivery at each fan-out rate, measured in this run.
    #[serde(default)]
    pub floor: Vec<Floor>,
}

impl SuiteResult {
    /// Strict checks for the smoke test: each idle run without problems and every fan-out
    /// step clean (all delivered, none lost, duplicated or reordered). (passed, failed).
    pub fn check_counts(&self) -> (usize, usize) {
        let idle_ok = self
            .idle
            .iter()
            .filter(|(_, r)| r.problems().is_empty())
            .count();
        let burst_ok = self
            .burst
            .iter()
            .filter(|(_, r)| r.problems().is_empty())
            .count();
        let drain_ok = self
            .drain
            .iter()
            .filter(|(_, r)| r.problems().is_empty())
            .count();
        let steps_ok = self.fanout.iter().filter(|(_, s)| s.clean()).count();
        let passed = idle_ok + burst_ok + drain_ok + steps_ok;
        (
            passed,
            self.idle.len() + self.burst.len() + self.drain.len() + self.fanout.len() - passed,
        )
    }

    /// Correctness problems (not performance): idle limits not enforced exactly, or a
    /// fan-out step that delivered everything in time but lost, duplicated or reordered.
    /// With `strict`, a step that did not deliver everything in time is a problem too.
    pub fn problems(&self, strict: bool) -> Vec<String> {
        let mut p = Vec::new();
        for (d, r) in &self.idle {
            for problem in r.problems() {
                p.push(format!("idle {}: {problem}", d.short()));
            }
        }
        for (d, r) in &self.burst {
            for problem in r.problems() {
                p.push(format!("burst {}: {problem}", d.short()));
            }
        }
        for (d, r) in &self.drain {
            for problem in r.problems() {
                p.push(format!("drain {}: {problem}", d.short()));
            }
        }
        for (d, s) in &self.fanout {
            // Overload is not a fault: a late ack (publish unanswered after the drain time)
            // makes its deliveries "unexpected", and an undrained step counts as lost what
            // was merely late.
            let late = s.publish_errors.get("unanswered").copied().unwrap_or(0);
            let other_errors = s.publish_errors.len() > usize::from(late > 0);
            let faulty = s.duplicated + s.reordered + s.disconnected > 0
                || (s.lost > 0 && s.drained)
                || (s.unexpected > 0 && late == 0)
                || other_errors;
            if faulty || (strict && !s.clean()) {
                p.push(format!(
                    "fan-out {} at {} msg/s: lost {} duplicated {} reordered {} unexpected {} disconnected {} publish errors {:?} all delivered in time {}",
                    d.short(), s.rate, s.lost, s.duplicated, s.reordered, s.unexpected, s.disconnected, s.publish_errors, s.drained
                ));
            }
        }
        p
    }
}

fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Machine {
        cpu_model,
        cores,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        nofile_hard: rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .maximum
            .unwrap_or(u64::MAX),
        loadavg_start: procstat::loadavg_1m(),
        loadavg_end: 0.0,
        started_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    }
}

/// Runs the suite, printing progress to stderr.
pub async fn run(cfg: &SuiteConfig) -> anyhow::Result<SuiteResult> {
    std::fs::create_dir_all(&cfg.out_dir)?;
    let mut result = SuiteResult {
        machine: machine(),
        p99_bound_ms: cfg.fanout.as_ref().map_or(0.0, |f| f.p99_bound_ms),
        ..Default::default()
    };
    let mut limit = cfg.max_connections;
    if let Some(idle_cfg) = &cfg.idle {
        for &design in cfg.designs.iter().filter(|d| d.has_idle_run()) {
            let r = run_idle(cfg, design, idle_cfg, &mut limit).await?;
            eprintln!(
                "idle {}: limit {} accepted {} refused(503) {}/{} failed {:?} rss/conn {:.0} B handshake cpu/conn {:.1} us",
                design.short(),
                r.limit,
                r.accepted,
                r.extra_refused_503,
                r.extra_attempted,
                r.failed,
                r.rss_per_connection_bytes,
                r.handshake_cpu_us_per_connection
            );
            result.idle.push((design, r));
        }
    }
    if let Some(burst_cfg) = &cfg.burst {
        for &design in cfg.designs.iter().filter(|d| d.has_idle_run()) {
            let r = run_burst(cfg, design, burst_cfg, &mut limit).await?;
            eprintln!(
                "burst {}: {} connections at {:.0}/s: accepted {} in {:.2} s, connect p50 {:.1} p99 {:.1} max {:.1} ms, {} over 1 s; kernel: {} listen overflows, {} drops, {} SYN retransmits; server {:.1} us/connection",
                design.short(),
                r.connections,
                r.rate,
                r.accepted,
                r.seconds,
                r.connect_p50_ms,
                r.connect_p99_ms,
                r.connect_max_ms,
                r.over_1s,
                r.kernel.listen_overflows,
                r.kernel.listen_drops,
                r.kernel.syn_retrans,
                r.server_cpu_us_per_connection,
            );
            result.burst.push((design, r));
        }
    }
    if let Some(drain_cfg) = &cfg.drain {
        for &design in cfg.designs.iter().filter(|d| d.has_idle_run()) {
            let r = run_drain(cfg, design, drain_cfg).await?;
            eprintln!(
                "drain {}: {} of {} clients moved; closes {:.0}–{:.0} ms after SIGTERM, all moved at {:.0} ms; reconnect p50 {:.1} p99 {:.1} max {:.1} ms, peak {:.0} reconnects/s; kernel: {} listen overflows, {} SYN retransmits; other node {:.1} us/reconnect; failed {:?}",
                design.short(),
                r.moved,
                r.accepted,
                r.first_close_ms,
                r.last_close_ms,
                r.all_moved_ms,
                r.reconnect_p50_ms,
                r.reconnect_p99_ms,
                r.reconnect_max_ms,
                r.peak_reconnects_per_s,
                r.kernel.listen_overflows,
                r.kernel.syn_retrans,
                r.target_cpu_us_per_reconnect,
                r.failed,
            );
            result.drain.push((design, r));
        }
    }
    if let Some(plan) = &cfg.fanout {
        (result.fanout, result.floor) = run_fanout(cfg, plan).await?;
    }
    result.machine.loadavg_end = procstat::loadavg_1m();
    Ok(result)
}

/// Starts a Redis and one `design` server for scenario `name`, runs `scenario` against it with
/// the connection limit, then stops both. chat-node derives its limit from RLIMIT_NOFILE the
/// first time (read from its /metrics); the others, and later scenarios, are given the same one.
async fn with_one_server<T>(
    cfg: &SuiteConfig,
    design: Design,
    name: &str,
    limit: &mut Option<u64>,
    scenario: impl AsyncFnOnce(&ChatServer, u64) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let redis = Redis::start(
        &cfg.programs.redis_server,
        &format!("redis-{name}-{}", design.short()),
        &cfg.out_dir,
    )
    .await?;
    let server = ChatServer::start(
        design,
        &cfg.programs,
        &redis.url(),
        &format!("{name}-{}", design.short()),
        *limit,
        &cfg.out_dir,
    )
    .await?;
    let n = match *limit {
        Some(n) => n,
        None => {
            let n = server.max_connections().await?;
            *limit = Some(n);
            n
        }
    };
    let r = scenario(&server, n).await;
    server.proc.stop().await;
    redis.proc.stop().await;
    r
}

async fn run_idle(
    cfg: &SuiteConfig,
    design: Design,
    idle_cfg: &IdleConfig,
    limit: &mut Option<u64>,
) -> anyhow::Result<IdleResult> {
    with_one_server(cfg, design, "idle", limit, async |server, n| {
        let idle_cfg = IdleConfig {
            limit: n,
            ..idle_cfg.clone()
        };
        idle::run(&server.endpoint, server.pid(), &idle_cfg).await
    })
    .await
}

async fn run_burst(
    cfg: &SuiteConfig,
    design: Design,
    burst_cfg: &BurstConfig,
    limit: &mut Option<u64>,
) -> anyhow::Result<BurstResult> {
    with_one_server(cfg, design, "burst", limit, async |server, n| {
        burst::run(&server.endpoint, server.pid(), n, burst_cfg).await
    })
    .await
}

async fn run_drain(
    cfg: &SuiteConfig,
    design: Design,
    drain_cfg: &DrainConfig,
) -> anyhow::Result<DrainResult> {
    let redis = Redis::start(
        &cfg.programs.redis_server,
        &format!("redis-drain-{}", design.short()),
        &cfg.out_dir,
    )
    .await?;
    let mut nodes = Vec::new();
    for i in 0..2 {
        nodes.push(
            ChatServer::start(
                design,
                &cfg.programs,
                &redis.url(),
                &format!("drain-{}-{i}", design.short()),
                None,
                &cfg.out_dir,
            )
            .await?,
        );
    }
    let (old, target) = (&nodes[0], &nodes[1]);
    let r = drain::run(
        &old.endpoint,
        old.pid(),
        &target.endpoint,
        target.pid(),
        drain_cfg,
    )
    .await;
    for n in nodes {
        n.proc.stop().await;
    }
    redis.proc.stop().await;
    r
}

/// One design's servers and connections during the fan-out scenario.
struct Target {
    design: Design,
    redis: Redis,
    servers: Vec<ChatServer>,
    session: Session,
    watched: Watched,
}

impl Target {
    async fn start(cfg: &SuiteConfig, plan: &FanoutPlan, design: Design) -> anyhow::Result<Target> {
        let redis = Redis::start(
            &cfg.programs.redis_server,
            &format!("redis-fanout-{}", design.short()),
            &cfg.out_dir,
        )
        .await?;
        let mut servers = Vec::new();
        for i in 0..plan.nodes {
            servers.push(
                ChatServer::start(
                    design,
                    &cfg.programs,
                    &redis.url(),
                    &format!("fanout-{}-{i}", design.short()),
                    None,
                    &cfg.out_dir,
                )
                .await?,
            );
        }
        let endpoints: Vec<_> = servers.iter().map(|s| s.endpoint.clone()).collect();
        let session = Session::connect(&endpoints, plan.config.clone()).await?;
        if matches!(design, Design::Centrifugo | Design::CentrifugoHistory) {
            // History on exactly where it should be, as the server itself reports it.
            let want = if design == Design::CentrifugoHistory {
                session.subscriber_count
            } else {
                0
            };
            anyhow::ensure!(
                session.recoverable_subscriptions == want,
                "{}: {} of {} subscriptions recoverable, expected {want}",
                design.short(),
                session.recoverable_subscriptions,
                session.subscriber_count
            );
        }
        let watched = Watched {
            servers: servers.iter().map(ChatServer::pid).collect(),
            redis: Some(redis.proc.pid()),
        };
        Ok(Target {
            design,
            redis,
            servers,
            session,
            watched,
        })
    }

    async fn stop(self) {
        self.session.close().await;
        for s in self.servers {
            s.proc.stop().await;
        }
        self.redis.proc.stop().await;
    }
}

async fn run_fanout(
    cfg: &SuiteConfig,
    plan: &FanoutPlan,
) -> anyhow::Result<(Vec<(Design, StepResult)>, Vec<Floor>)> {
    let mut targets = Vec::new();
    for &design in &cfg.designs {
        targets.push(Some(Target::start(cfg, plan, design).await?));
    }
    let mut steps = Vec::new();
    let mut floors = Vec::new();
    for &rate in &plan.rates {
        if targets.iter().all(Option::is_none) {
            break;
        }
        if let Some(floor_cfg) = &cfg.floor {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let writes_per_s = rate * plan.config.subscribers_per_channel as u64;
            let f = floor::measure(floor_cfg, rate, writes_per_s).await?;
            eprintln!(
                "floor {:>6} msg/s: {} writes/s over {} loopback connections: {:.2} us of kernel CPU per write",
                rate, writes_per_s, floor_cfg.conns, f.system_us_per_write
            );
            floors.push(f);
        }
        for slot in targets.iter_mut() {
            let Some(target) = slot.as_mut() else {
                continue;
            };
            // Let the previous step's work (the other design's included) finish.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let step = target.session.step(rate, &target.watched).await?;
            eprintln!(
                "fan-out {:9} {:>6} msg/s: achieved {:>8.0} deliveries/s {:>8.0} p50 {:>7.2} p99 {:>7.2} p99.9 {:>7.2} max {:>7.2} ms lost {} dup {} reord {} drained {} server {:.2} us/delivery (kernel {:.2}; {:.2} cores) loadgen {:.2} us/delivery ({:.2} cores) machine {:.2} cores",
                target.design.short(),
                rate,
                step.achieved_rate,
                step.deliveries_per_s,
                step.latency.p50_ms,
                step.latency.p99_ms,
                step.latency.p999_ms,
                step.latency.max_ms,
                step.lost,
                step.duplicated,
                step.reordered,
                step.drained,
                step.server_cpu_us_per_delivery,
                step.server_system_us_per_delivery,
                step.server_cores,
                step.loadgen_cpu_us_per_delivery,
                step.loadgen_cores,
                step.machine_busy_cores,
            );
            let over = !step.drained
                || !step.clean()
                || (step.latency.p99_ms >= plan.p99_bound_ms && rate >= plan.always_up_to);
            steps.push((target.design, step));
            if over && let Some(t) = slot.take() {
                eprintln!("fan-out {}: stopping after {rate} msg/s", t.design.short());
                t.stop().await;
            }
        }
    }
    for t in targets.into_iter().flatten() {
        t.stop().await;
    }
    Ok((steps, floors))
}
