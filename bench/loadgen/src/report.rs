//! The Markdown report of a suite run: the machine, the result tables (with the kernel's floor
//! measured in the same run beside the fan-out steps) and the designs side by side against the
//! targets of issue 15 (docs/benchmarks.md quotes it).

use std::fmt::Write;

use crate::burst::BurstResult;
use crate::fanout::StepResult;
use crate::floor::Floor;
use crate::idle::IdleResult;
use crate::servers::Design;
use crate::suite::SuiteResult;

fn idle_of(r: &SuiteResult, d: Design) -> Option<&IdleResult> {
    r.idle.iter().find(|(x, _)| *x == d).map(|(_, i)| i)
}

fn steps_of(r: &SuiteResult, d: Design) -> impl Iterator<Item = &StepResult> {
    r.fanout
        .iter()
        .filter(move |(x, _)| *x == d)
        .map(|(_, s)| s)
}

fn step_at(r: &SuiteResult, d: Design, rate: u64) -> Option<&StepResult> {
    steps_of(r, d).find(|s| s.rate == rate)
}

/// A step that kept up: every message delivered, none lost, and p99 under the bound.
fn sustained(s: &StepResult, bound_ms: f64) -> bool {
    s.clean() && s.latency.p99_ms < bound_ms
}

/// The highest rate with p99 under the bound (and nothing lost), if any.
pub fn highest_sustained(r: &SuiteResult, d: Design) -> Option<&StepResult> {
    steps_of(r, d)
        .filter(|s| sustained(s, r.p99_bound_ms))
        .max_by_key(|s| s.rate)
}

fn floor_at(r: &SuiteResult, rate: u64) -> Option<&Floor> {
    r.floor.iter().find(|f| f.rate == rate)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

/// Renders the whole report.
pub fn markdown(r: &SuiteResult) -> String {
    let mut out = String::new();
    let m = &r.machine;
    let _ = writeln!(
        out,
        "Machine: {} cores ({}), Linux {}, hard RLIMIT_NOFILE {}; 1-min loadavg {:.2} at start, {:.2} at end.\n",
        m.cores, m.cpu_model, m.kernel, m.nofile_hard, m.loadavg_start, m.loadavg_end
    );
    idle_table(&mut out, r);
    burst_table(&mut out, r);
    drain_table(&mut out, r);
    fanout_table(&mut out, r);
    ratios(&mut out, r);
    out
}

fn idle_table(out: &mut String, r: &SuiteResult) {
    if r.idle.is_empty() {
        return;
    }
    let _ = writeln!(out, "### Idle connections\n");
    let _ = writeln!(
        out,
        "| server | limit | accepted | past the limit: 503 / tried | other failures | dropped while idle | alive after | RSS before → full | RSS per connection | handshake CPU per connection | fill time | load generator CPU |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (d, i) in &r.idle {
        let failures: u64 = i.failed.values().sum::<u64>() + i.extra_failed.values().sum::<u64>();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} / {} | {} | {} | {} | {:.1} → {:.1} MiB | {:.2} KiB | {:.0} µs | {:.1} s | {:.1} s |",
            d.label(),
            i.limit,
            i.accepted,
            i.extra_refused_503,
            i.extra_attempted,
            failures,
            i.closed_by_server,
            if i.alive_after && i.accepts_after_close {
                "yes"
            } else {
                "NO"
            },
            i.rss_before_kib as f64 / 1024.0,
            i.rss_full_kib as f64 / 1024.0,
            i.rss_per_connection_bytes / 1024.0,
            i.handshake_cpu_us_per_connection,
            i.fill_seconds,
            i.loadgen_cpu_s,
        );
    }
    let _ = writeln!(out);
}

fn burst_of(r: &SuiteResult, d: Design) -> Option<&BurstResult> {
    let d = if d == Design::CentrifugoHistory {
        Design::Centrifugo
    } else {
        d
    };
    r.burst.iter().find(|(x, _)| *x == d).map(|(_, b)| b)
}

fn burst_table(out: &mut String, r: &SuiteResult) {
    let Some((_, first)) = r.burst.first() else {
        return;
    };
    let _ = writeln!(
        out,
        "### Handshake burst ({} connections started at {:.0}/s, held)
",
        first.connections, first.rate
    );
    let _ = writeln!(
        out,
        "Connect time: from the TCP connect to a usable session (WebSocket handshake; Centrifugo's connect reply too). Kernel counters: this machine's `ListenOverflows` / `ListenDrops` / `TCPSynRetrans` over the burst.\n"
    );
    let _ = writeln!(
        out,
        "| server | accepted / started | 503 | other failures | time | connect p50 | p99 | max | over 1 s | listen overflows / drops | SYN retransmits | server CPU per connection | load generator CPU |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (d, b) in &r.burst {
        let _ = writeln!(
            out,
            "| {} | {} / {} | {} | {} | {:.2} s | {:.1} ms | {:.1} ms | {:.1} ms | {} | {} / {} | {} | {:.0} µs | {:.1} s |",
            d.label(),
            b.accepted,
            b.connections,
            b.refused_503,
            b.failed.values().sum::<u64>(),
            b.seconds,
            b.connect_p50_ms,
            b.connect_p99_ms,
            b.connect_max_ms,
            b.over_1s,
            b.kernel.listen_overflows,
            b.kernel.listen_drops,
            b.kernel.syn_retrans,
            b.server_cpu_us_per_connection,
            b.loadgen_cpu_s,
        );
    }
    let _ = writeln!(out);
}

fn drain_table(out: &mut String, r: &SuiteResult) {
    let Some((_, first)) = r.drain.first() else {
        return;
    };
    let _ = writeln!(
        out,
        "### Drain and reconnect ({} clients on one of two nodes; SIGTERM; each client reconnects to the other node at once)\n",
        first.connections
    );
    let _ = writeln!(
        out,
        "Reconnect: from a client's close to a usable session on the other node. Kernel counters: the whole machine over the move.\n"
    );
    let _ = writeln!(
        out,
        "| server | moved / connected | closes after SIGTERM | all moved after | reconnect p50 | p99 | max | peak reconnects/s | listen overflows | SYN retransmits | other node CPU per reconnect |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|");
    for (d, x) in &r.drain {
        let _ = writeln!(
            out,
            "| {} | {} / {} | {:.0} – {:.0} ms | {:.0} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.0} | {} | {} | {:.0} µs |",
            d.label(),
            x.moved,
            x.accepted,
            x.first_close_ms,
            x.last_close_ms,
            x.all_moved_ms,
            x.reconnect_p50_ms,
            x.reconnect_p99_ms,
            x.reconnect_max_ms,
            x.peak_reconnects_per_s,
            x.kernel.listen_overflows,
            x.kernel.syn_retrans,
            x.target_cpu_us_per_reconnect,
        );
    }
    let _ = writeln!(out);
}

fn fanout_table(out: &mut String, r: &SuiteResult) {
    if r.fanout.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "### Fan-out (100 channels × 10 subscribers over 2 nodes, 10 publishers)\n"
    );
    if !r.floor.is_empty() {
        let _ = writeln!(
            out,
            "The floor: bench/floor/write_floor.py run just before each rate's steps, writing 150-byte frames round-robin to as many loopback connections as the step has subscribers, at the step's deliveries per second; its kernel CPU per write.\n"
        );
    }
    let _ = writeln!(
        out,
        "| server | rate msg/s | achieved | deliveries/s | p50 ms | p99 ms | p99.9 ms | max ms | lost | dup | reordered | all delivered | server CPU µs/delivery (of it kernel) | floor µs/write | server ÷ floor | server cores | Redis cores | loadgen CPU µs/delivery | loadgen cores | machine busy cores |"
    );
    let _ = writeln!(
        out,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for (d, s) in &r.fanout {
        let floor = floor_at(r, s.rate).map(|f| f.system_us_per_write);
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} | {:.2} ({:.2}) | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            d.short(),
            s.rate,
            s.achieved_rate,
            s.deliveries_per_s,
            s.latency.p50_ms,
            s.latency.p99_ms,
            s.latency.p999_ms,
            s.latency.max_ms,
            s.lost,
            s.duplicated,
            s.reordered,
            if s.drained { "yes" } else { "no" },
            s.server_cpu_us_per_delivery,
            s.server_system_us_per_delivery,
            floor.map_or("–".to_owned(), |f| format!("{f:.2}")),
            floor
                .filter(|f| *f > 0.0)
                .map_or("–".to_owned(), |f| format!(
                    "{:.1}×",
                    s.server_cpu_us_per_delivery / f
                )),
            s.server_cores,
            s.redis_cores,
            s.loadgen_cpu_us_per_delivery,
            s.loadgen_cores,
            s.machine_busy_cores,
        );
    }
    let _ = writeln!(out);
}

/// The designs of the side-by-side table, in column order.
const COLUMNS: [Design; 4] = [
    Design::ChatNode,
    Design::Reference,
    Design::Centrifugo,
    Design::CentrifugoHistory,
];

fn row(out: &mut String, what: &str, cells: [String; 4], floor: &str, verdict: &str) {
    let _ = writeln!(
        out,
        "| {what} | {} | {} | {} | {} | {floor} | {verdict} |",
        cells[0], cells[1], cells[2], cells[3]
    );
}

fn cells(f: impl Fn(Design) -> Option<String>) -> [String; 4] {
    COLUMNS.map(|d| f(d).unwrap_or_else(|| "–".to_owned()))
}

/// `a / b` when both exist and b is not 0.
fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn ratios(out: &mut String, r: &SuiteResult) {
    let bound = r.p99_bound_ms;
    let _ = writeln!(out, "### Side by side, against the targets of issue 15\n");
    let _ = writeln!(
        out,
        "| | chat-node | reference | Centrifugo | Centrifugo, history on | floor | target for chat-node: verdict |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");

    // Server CPU per delivery at 3,000 msg/s = 30,000 deliveries/s, against the floor.
    let cpu = |d: Design| {
        step_at(r, d, 3000)
            .filter(|s| s.deliveries > 0)
            .map(|s| s.server_cpu_us_per_delivery)
    };
    let floor3000 = floor_at(r, 3000).map(|f| f.system_us_per_write);
    let centrifugo_min = [Design::Centrifugo, Design::CentrifugoHistory]
        .into_iter()
        .filter_map(cpu)
        .reduce(f64::min);
    let c = cpu(Design::ChatNode);
    let ok = ratio(c, floor3000).is_some_and(|x| x <= 2.0)
        && ratio(c, centrifugo_min).is_some_and(|x| x <= 0.5);
    row(
        out,
        "server CPU per delivery at 3,000 msg/s (30,000 deliveries/s)",
        cells(|d| {
            let v = cpu(d)?;
            Some(match ratio(Some(v), floor3000) {
                Some(x) => format!("{v:.2} µs ({x:.1}× the floor)"),
                None => format!("{v:.2} µs"),
            })
        }),
        &floor3000.map_or("–".to_owned(), |f| format!("{f:.2} µs")),
        &format!(
            "≤ 2× the floor and ≤ ½ of Centrifugo's: {}",
            if c.is_some() && floor3000.is_some() && centrifugo_min.is_some() {
                verdict(ok)
            } else {
                "NOT measured"
            }
        ),
    );

    // p99 at the rate where the reference first exceeds the bound.
    let first_over = steps_of(r, Design::Reference)
        .filter(|s| !sustained(s, bound))
        .min_by_key(|s| s.rate)
        .map(|s| s.rate);
    match first_over {
        Some(rate) => {
            let p99 = |d: Design| step_at(r, d, rate).map(|s| s.latency.p99_ms);
            let c = p99(Design::ChatNode);
            let ok = ratio(c, p99(Design::Reference)).is_some_and(|x| x <= 0.25)
                && [Design::Centrifugo, Design::CentrifugoHistory]
                    .into_iter()
                    .filter_map(p99)
                    .all(|x| c.is_some_and(|c| c <= x));
            row(
                out,
                &format!("p99 at {rate} msg/s, where the reference first exceeds {bound:.0} ms"),
                cells(|d| p99(d).map(|v| format!("{v:.2} ms"))),
                "",
                &format!(
                    "≤ ¼ of the reference's and ≤ Centrifugo's: {}",
                    if c.is_some() {
                        verdict(ok)
                    } else {
                        "NOT measured"
                    }
                ),
            );
        }
        None if steps_of(r, Design::Reference).next().is_some() => row(
            out,
            &format!("p99 where the reference first exceeds {bound:.0} ms"),
            cells(|_| None),
            "",
            "the reference stayed under the bound at every rate tried: NOT measured",
        ),
        None => {}
    }

    // Resident memory per idle connection.
    if !r.idle.is_empty() {
        let mem = |d: Design| {
            let d = if d == Design::CentrifugoHistory {
                Design::Centrifugo
            } else {
                d
            };
            idle_of(r, d).map(|i| i.rss_per_connection_bytes / 1024.0)
        };
        let c = mem(Design::ChatNode);
        let ok = ratio(c, mem(Design::Centrifugo)).is_some_and(|x| x <= 0.25)
            && ratio(c, mem(Design::Reference)).is_some_and(|x| x <= 0.5);
        row(
            out,
            "resident memory per idle connection (Centrifugo's is one run: history does not touch idle connections)",
            cells(|d| mem(d).map(|v| format!("{v:.2} KiB"))),
            "",
            &format!(
                "≤ ¼ of Centrifugo's and ≤ ½ of the reference's: {}",
                verdict(ok)
            ),
        );
    }

    // Connect time in a handshake burst.
    if let Some(chat) = burst_of(r, Design::ChatNode) {
        let ok = chat.connect_p99_ms <= 100.0 && chat.accepted == chat.connections;
        row(
            out,
            &format!(
                "p99 connect time, {} connections started at {:.0}/s",
                chat.connections, chat.rate
            ),
            cells(|d| burst_of(r, d).map(|b| format!("{:.1} ms", b.connect_p99_ms))),
            "",
            &format!("≤ 100 ms, every connection accepted: {}", verdict(ok)),
        );
    }

    if r.fanout.is_empty() {
        return;
    }
    // Highest rate with p99 under the bound.
    let top = |d: Design| highest_sustained(r, d).map(|s| s.rate);
    let measured = |d: Design| steps_of(r, d).next().is_some();
    let c = top(Design::ChatNode).unwrap_or(0);
    let ok = [Design::Centrifugo, Design::CentrifugoHistory]
        .into_iter()
        .filter(|d| measured(*d))
        .all(|d| c >= top(d).unwrap_or(0));
    row(
        out,
        &format!("highest rate with p99 < {bound:.0} ms (and nothing lost)"),
        cells(|d| measured(d).then(|| format!("{} msg/s", top(d).unwrap_or(0)))),
        "",
        &format!("≥ Centrifugo's, or the machine's cap: {}", verdict(ok)),
    );

    // Correctness, every step.
    let faults = |d: Design| {
        measured(d).then(|| {
            steps_of(r, d)
                .map(|s| s.lost + s.duplicated + s.reordered)
                .sum::<u64>()
        })
    };
    let ok = COLUMNS.into_iter().filter_map(faults).all(|n| n == 0);
    row(
        out,
        "lost + duplicated + reordered, all steps",
        cells(|d| faults(d).map(|n| n.to_string())),
        "",
        &format!("0 for every design: {}", verdict(ok)),
    );
    let _ = writeln!(out);

    // Which limit was hit: at chat-node's first step past its highest sustained rate.
    let first_over = steps_of(r, Design::ChatNode)
        .filter(|s| !sustained(s, bound))
        .min_by_key(|s| s.rate);
    match first_over {
        Some(s) => {
            let _ = writeln!(
                out,
                "At {} msg/s, chat-node's first step over the bound, the machine was {:.2} of {} cores busy: chat-node {:.2} cores, its Redis {:.2}, the load generator {:.2} ({:.2} µs per delivery).",
                s.rate,
                s.machine_busy_cores,
                r.machine.cores,
                s.server_cores,
                s.redis_cores,
                s.loadgen_cores,
                s.loadgen_cpu_us_per_delivery
            );
        }
        None if steps_of(r, Design::ChatNode).next().is_some() => {
            let _ = writeln!(out, "chat-node stayed under the bound at every rate tried.");
        }
        None => {}
    }
}
