//! The Markdown report of a suite run: the machine, the two result tables (with the kernel's
//! floor measured in the same run beside the fan-out steps) and the ratios against the targets
//! of issue 2 (docs/benchmarks.md quotes it).

use std::fmt::Write;

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

fn ratios(out: &mut String, r: &SuiteResult) {
    let _ = writeln!(out, "### Ratios against the targets\n");
    let _ = writeln!(out, "| target | chat-node | reference | ratio | verdict |");
    let _ = writeln!(out, "|---|---|---|---|---|");
    let bound = r.p99_bound_ms;

    // 1. CPU per delivery at the highest rate both sustain.
    let both = steps_of(r, Design::ChatNode)
        .filter(|s| sustained(s, bound))
        .filter_map(|c| {
            step_at(r, Design::Reference, c.rate)
                .filter(|x| sustained(x, bound))
                .map(|x| (c, x))
        })
        .max_by_key(|(c, _)| c.rate);
    if let Some((c, x)) = both {
        let ratio = x.server_cpu_us_per_delivery / c.server_cpu_us_per_delivery;
        let _ = writeln!(
            out,
            "| ≥ 5× less server CPU per delivery (at {} msg/s, the highest rate both sustain) | {:.2} µs | {:.2} µs | {:.1}× | {} |",
            c.rate,
            c.server_cpu_us_per_delivery,
            x.server_cpu_us_per_delivery,
            ratio,
            verdict(ratio >= 5.0)
        );
    } else {
        let _ = writeln!(
            out,
            "| ≥ 5× less server CPU per delivery | – | – | no rate both sustain | NOT measured |"
        );
    }

    // 2. p99 at 3,000 msg/s.
    match (
        step_at(r, Design::ChatNode, 3000),
        step_at(r, Design::Reference, 3000),
    ) {
        (Some(c), Some(x)) => {
            let ratio = x.latency.p99_ms / c.latency.p99_ms;
            let _ = writeln!(
                out,
                "| p99 at 3,000 msg/s ≤ ¼ of the reference's | {:.2} ms | {:.2} ms | {:.1}× lower | {} |",
                c.latency.p99_ms,
                x.latency.p99_ms,
                ratio,
                verdict(ratio >= 4.0 && c.clean())
            );
        }
        _ => {
            let _ = writeln!(
                out,
                "| p99 at 3,000 msg/s ≤ ¼ of the reference's | – | – | 3,000 msg/s not measured for both | NOT measured |"
            );
        }
    }

    // 3. Resident memory per idle connection.
    if let (Some(c), Some(x)) = (idle_of(r, Design::ChatNode), idle_of(r, Design::Reference)) {
        let ratio = x.rss_per_connection_bytes / c.rss_per_connection_bytes;
        let _ = writeln!(
            out,
            "| ≤ ½ the reference's resident memory per idle connection | {:.2} KiB | {:.2} KiB | {:.1}× less | {} |",
            c.rss_per_connection_bytes / 1024.0,
            x.rss_per_connection_bytes / 1024.0,
            ratio,
            verdict(ratio >= 2.0)
        );
    }

    // 4. Highest rate with p99 under the bound.
    if r.fanout.is_empty() {
        return;
    }
    let c = highest_sustained(r, Design::ChatNode);
    let x = highest_sustained(r, Design::Reference);
    let rate = |s: Option<&StepResult>| s.map_or(0, |s| s.rate);
    let ratio = rate(c) as f64 / rate(x).max(1) as f64;
    let _ = writeln!(
        out,
        "| highest rate with p99 < {bound:.0} ms ≥ 3× the reference's | {} msg/s | {} msg/s | {:.1}× | {} |",
        rate(c),
        rate(x),
        ratio,
        verdict(ratio >= 3.0)
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
