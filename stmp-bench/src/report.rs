//! The table: Markdown on stdout and in `<out>/results.md`, JSON in `<out>/results.json`.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::Settings;
use crate::connect::ConnectResult;
use crate::fanout::{FanoutResult, Throughput};
use crate::measure::Measured;
use crate::memory::MemoryResult;
use crate::systems::System;
use crate::target::TargetResult;
use crate::unary::{Point, UnaryResult};
use crate::units::{duration, rate, thousands};

/// Everything one run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// How it ran.
    pub settings: Settings,
    /// CPUs the machine has (server and load generator share them).
    pub cpus: usize,
    /// Unary rows.
    pub unary: Vec<UnaryResult>,
    /// Fan-out rows.
    pub fanout: Vec<FanoutResult>,
    /// Memory rows.
    pub memory: Vec<MemoryResult>,
    /// `--target` rows: the quick-start JoinRoom against a server already running.
    pub target: Vec<TargetResult>,
    /// Connection setup rows: connections opened, used once and closed per second.
    pub connect: Vec<ConnectResult>,
    /// Broadcasts per second one stmp node and a cluster of stmp nodes on NATS sustained
    /// (the cluster's fan-out rows are in `fanout`).
    pub throughput: Vec<Throughput>,
    /// The targets, met or missed.
    pub targets: Vec<Target>,
}

/// One of the targets.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    /// What the issue asks.
    pub target: String,
    /// What was measured.
    pub measured: String,
    /// Whether it was met (`None`: not measured in this run).
    pub met: Option<bool>,
}

/// The raw baseline a system's "vs raw" column compares with: the echo on its own transport.
fn raw_of(system: System) -> System {
    match system {
        System::StmpQuic => System::RawQuic,
        _ => System::RawTcp,
    }
}

/// The range of a median ratio, written after it: ` — 0.61–0.74× round by round` (`by`
/// names the unit); nothing without a range.
fn range_note(range: Option<(f64, f64)>, by: &str) -> String {
    range.map_or(String::new(), |(low, high)| {
        format!(
            " — {}–{} {by} by {by}",
            ratio(low).trim_end_matches('×'),
            ratio(high)
        )
    })
}

/// The range pass by pass of one fan-out row's time over another's (the same passes).
fn pass_ratios(mine: &[u64], theirs: &[u64]) -> Option<(f64, f64)> {
    if mine.len() < 2 || mine.len() != theirs.len() {
        return None;
    }
    crate::measure::ratio_range(
        mine.iter()
            .zip(theirs)
            .map(|(&m, &t)| m as f64 / t.max(1) as f64),
    )
}

fn ratio(x: f64) -> String {
    if x >= 10.0 {
        format!("{x:.1}×")
    } else {
        format!("{x:.2}×")
    }
}

impl Report {
    /// Puts the runs together and checks the targets.
    pub fn new(
        settings: Settings,
        unary: Vec<UnaryResult>,
        fanout: Vec<FanoutResult>,
        memory: Vec<MemoryResult>,
        target: Vec<TargetResult>,
    ) -> Report {
        let mut report = Report {
            settings,
            cpus: crate::child::machine_cpus(),
            unary,
            fanout,
            memory,
            target,
            connect: Vec::new(),
            throughput: Vec::new(),
            targets: Vec::new(),
        };
        report.targets = report.check_targets();
        report
    }

    /// Adds the throughput bursts (one node's, the cluster's).
    pub fn with_throughput(mut self, throughput: Vec<Throughput>) -> Report {
        self.throughput = throughput;
        self
    }

    /// Adds the connection setup rows.
    pub fn with_connect(mut self, connect: Vec<ConnectResult>) -> Report {
        self.connect = connect;
        self
    }

    fn unary(&self, system: System, payload: usize, point: Point) -> Option<&Measured> {
        self.unary
            .iter()
            .find(|r| r.system == system && r.payload == payload && r.point == point)
            .map(|r| &r.measured)
    }

    fn fanout(&self, system: &str, clients: usize) -> Option<&FanoutResult> {
        self.fanout
            .iter()
            .find(|r| r.system == system && r.clients == clients)
    }

    fn memory(&self, system: System) -> Option<&MemoryResult> {
        // The largest idle count measured.
        self.memory
            .iter()
            .filter(|r| r.system == system)
            .max_by_key(|r| r.connections)
    }

    fn check_targets(&self) -> Vec<Target> {
        let mut targets = Vec::new();
        let depth = self.settings.depth;
        let mut push = |target: String, measured: Option<(String, bool)>| {
            targets.push(Target {
                target,
                measured: measured
                    .as_ref()
                    .map_or("not measured".to_owned(), |(m, _)| m.clone()),
                met: measured.map(|(_, met)| met),
            });
        };
        // One system's requests/s over another's at one point: (shown, ratio).
        let throughput = |system: System, other: System, payload: usize, point: Point| {
            self.unary(system, payload, point)
                .zip(self.unary(other, payload, point))
                .map(|(s, o)| {
                    let x = s.rps / o.rps;
                    let shown = format!(
                        "{}{} ({} {} vs {} {} req/s)",
                        ratio(x),
                        range_note(s.round_ratios(o, |r| r.0), "round"),
                        system.label(),
                        rate(s.rps),
                        other.label(),
                        rate(o.rps)
                    );
                    (shown, x)
                })
        };
        let multiplexed = Point::Multiplexed;
        // What a baseline with nothing of stmp reaches against `other` at the same point: a
        // ratio stmp cannot pass on this host.
        let ceiling = |baseline: System, other: System, label: &str| {
            self.unary(baseline, 32, multiplexed)
                .zip(self.unary(other, 32, multiplexed))
                .map_or(String::new(), |(b, o)| {
                    format!(
                        "; {label} {} req/s = {} {}",
                        rate(b.rps),
                        ratio(b.rps / o.rps),
                        other.label()
                    )
                })
        };
        // The raw echo's own ratio to tonic moves with the host more than stmp's does: the
        // target is beyond it on some hosts.
        let raw_over_tonic = ceiling(System::RawTcp, System::Tonic, "raw tcp echo (pipelined)");
        // Whether the target was within reach of stmp's CPU per call in this run, and how much
        // of the CPUs the point used: a point short of them waits on wake-ups, not work.
        let cpu_limit = self
            .unary(System::StmpTcp, 32, multiplexed)
            .zip(self.unary(System::Tonic, 32, multiplexed))
            .and_then(|(s, t)| {
                let (busy, limit) = (s.cpus_busy()?, s.cpu_limit_rps(self.cpus)?);
                let tonic_busy = t
                    .cpus_busy()
                    .map_or(String::new(), |b| format!(" (tonic grpc {b:.2})"));
                Some(format!(
                    "; stmp tcp kept {busy:.2} of {} CPUs busy{tonic_busy}, and at its {} of CPU \
                     per call they allow at most {} req/s = {} tonic grpc",
                    self.cpus,
                    duration(s.cpu_ns_per_call?),
                    rate(limit),
                    ratio(limit / t.rps)
                ))
            })
            .unwrap_or_default();
        push(
            format!("{depth} in flight on 1 conn, 32 B: stmp tcp ≥ 10× tonic req/s"),
            throughput(System::StmpTcp, System::Tonic, 32, multiplexed)
                .map(|(m, x)| (format!("{m}{raw_over_tonic}{cpu_limit}"), x >= 10.0)),
        );
        push(
            format!("{depth} in flight on 1 conn, 32 B: stmp ws ≥ 0.7× stmp tcp req/s"),
            throughput(System::StmpWs, System::StmpTcp, 32, multiplexed)
                .map(|(m, x)| (m, x >= 0.7)),
        );
        push(
            format!("{depth} in flight on 1 conn, 1 KiB: stmp tcp ≥ 0.3× raw echo req/s"),
            throughput(System::StmpTcp, System::RawTcp, 1024, multiplexed)
                .map(|(m, x)| (m, x >= 0.3)),
        );
        push(
            format!("{depth} conns × 1, 32 B: stmp tcp+gzip ≥ 0.75× stmp tcp req/s"),
            throughput(System::StmpGzip, System::StmpTcp, 32, Point::Connections)
                .map(|(m, x)| (m, x >= 0.75)),
        );
        // quinn's own echo shows how much of the gap is QUIC through quinn: stmp quic cannot
        // go faster than it.
        let quinn_ceiling = ceiling(
            System::RawQuic,
            System::StmpTcp,
            "quinn's own echo (raw quic echo, pipelined)",
        );
        push(
            format!("{depth} in flight on 1 conn, 32 B: stmp quic ≥ 0.8× stmp tcp req/s"),
            throughput(System::StmpQuic, System::StmpTcp, 32, multiplexed)
                .map(|(m, x)| (format!("{m}{quinn_ceiling}"), x >= 0.8)),
        );
        let n = self.settings.fanout.iter().copied().max().unwrap_or(0);
        push(
            format!(
                "one event to {} clients: stmp tcp's last delivery ≤ 1.5× the raw baseline's",
                thousands(n)
            ),
            self.fanout("stmp tcp", n)
                .zip(self.fanout("raw tcp", n))
                .map(|(s, r)| {
                    let x = s.p50_ns as f64 / r.p50_ns as f64;
                    (
                        format!(
                            "{}{} (stmp {} vs raw {}; {} encoding(s))",
                            ratio(x),
                            range_note(pass_ratios(&s.pass_p50_ns, &r.pass_p50_ns), "pass"),
                            duration(s.p50_ns),
                            duration(r.p50_ns),
                            s.encodings
                        ),
                        x <= 1.5,
                    )
                }),
        );
        let single = |system| self.unary(system, 32, Point::Single);
        push(
            "1 in flight, 32 B: stmp tcp p50 ≤ 1.2× raw echo p50".to_owned(),
            single(System::StmpTcp)
                .zip(single(System::RawTcp))
                .map(|(s, r)| {
                    let x = s.p50_ns as f64 / r.p50_ns as f64;
                    (
                        format!(
                            "{}{} (stmp {} vs raw {})",
                            ratio(x),
                            range_note(s.round_ratios(r, |r| r.1 as f64), "round"),
                            duration(s.p50_ns),
                            duration(r.p50_ns)
                        ),
                        x <= 1.2,
                    )
                }),
        );
        for (system, limit) in [(System::StmpTcp, 8.0), (System::StmpWs, 12.0)] {
            push(
                format!(
                    "idle memory per connection: {} ≤ {limit} KiB",
                    system.label()
                ),
                self.memory(system).map(|m| {
                    (
                        format!(
                            "{:.1} KiB at {} connections",
                            m.per_connection_kib,
                            thousands(m.connections)
                        ),
                        m.per_connection_kib <= limit,
                    )
                }),
            );
        }
        targets
    }

    /// The Markdown: the results table, then the targets.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let mode = if self.settings.quick {
            "--quick (smoke test: figures are not meaningful)"
        } else {
            "full"
        };
        let mut spin = String::new();
        if self.settings.pin {
            let _ = write!(
                spin,
                "; 1-in-flight points: servers pinned to CPU {}, load generator to CPU {}",
                crate::child::SERVER_CPU,
                crate::child::LOAD_CPU
            );
        }
        if self.settings.spin {
            spin.push_str(
                "; idle CPUs kept awake by nice-19 spinners during the 1-in-flight points and the fan-out",
            );
        }
        if let Some(workers) = self.settings.load_workers {
            let _ = write!(spin, "; load generator on {workers} worker thread(s)");
        }
        if let Some(workers) = self.settings.server_workers {
            let _ = write!(spin, "; each server on {workers} worker thread(s)");
        }
        let _ = writeln!(
            md,
            "## stmp-bench ({mode}; {} CPUs shared by server and load generator; loopback{spin}; unary: median of {} rounds)\n",
            self.cpus, self.settings.rounds
        );
        md.push_str(
            "| benchmark | system | result | p50 | p99 | CPU/call | vs tonic | vs raw | notes |\n",
        );
        md.push_str("|---|---|---|---|---|---|---|---|---|\n");
        let depth = self.settings.depth;
        let mut payloads: Vec<usize> = self.unary.iter().map(|r| r.payload).collect();
        payloads.sort_unstable();
        payloads.dedup();
        for payload in payloads {
            for point in Point::ALL {
                for row in self
                    .unary
                    .iter()
                    .filter(|r| r.payload == payload && r.point == point)
                {
                    let m = &row.measured;
                    let versus = |other: System| {
                        if row.system == other || !(row.system.is_stmp() || other == System::RawTcp)
                        {
                            return "–".to_owned();
                        }
                        self.unary(other, payload, point)
                            .map_or("–".to_owned(), |o| {
                                format!(
                                    "{} req/s, p50 {}",
                                    ratio(m.rps / o.rps),
                                    ratio(m.p50_ns as f64 / o.p50_ns as f64)
                                )
                            })
                    };
                    let note = match (row.system, point) {
                        (System::RawTcp, Point::Multiplexed) => "pipelined, batched writes",
                        (System::RawQuic, Point::Multiplexed) => {
                            "quinn, TLS 1.3, one stream; pipelined, batched writes"
                        }
                        (System::RawQuic, _) => "quinn, TLS 1.3, one stream",
                        (System::StmpTls | System::StmpWss, _) => "TLS 1.3 (rustls, ring)",
                        (System::StmpGzip, _) => "gzip stream, sync flush per batch",
                        (System::StmpWsDeflate, _) => {
                            "permessage-deflate per message of 128 B or more"
                        }
                        (System::StmpQuic, _) => "TLS 1.3, one stream; vs raw: raw quic echo",
                        (System::Tonic, Point::Multiplexed) => "HTTP/2 streams on one channel",
                        (System::SocketIo, _) => "socket.io 5 over WebSocket, an ack per call",
                        _ => "",
                    };
                    // The peer of `stmp ws`: the same transport, and what a socket.io
                    // application would use for a call.
                    let note = match (row.system, self.unary(System::StmpWs, payload, point)) {
                        (System::SocketIo, Some(ws)) => format!(
                            "{note}; stmp ws made {} its req/s, at {} its p50",
                            ratio(ws.rps / m.rps),
                            ratio(ws.p50_ns as f64 / m.p50_ns as f64)
                        ),
                        _ => note.to_owned(),
                    };
                    let _ = writeln!(
                        md,
                        "| unary {payload} B, {} | {} | {} req/s | {} | {} | {} | {} | {} | {note} |",
                        point.label(depth),
                        row.system.label(),
                        rate(m.rps),
                        duration(m.p50_ns),
                        duration(m.p99_ns),
                        m.cpu_ns_per_call.map_or("–".to_owned(), duration),
                        versus(System::Tonic),
                        versus(raw_of(row.system)),
                    );
                }
            }
        }
        for row in &self.connect {
            let versus = |other: System| {
                if row.system == other || !row.system.is_stmp() {
                    return "–".to_owned();
                }
                self.connect
                    .iter()
                    .find(|o| o.system == other)
                    .map_or("–".to_owned(), |o| {
                        format!(
                            "{} conn/s, {} server CPU",
                            ratio(row.per_second / o.per_second),
                            ratio(row.server_cpu_ns as f64 / o.server_cpu_ns.max(1) as f64)
                        )
                    })
            };
            let versus_stmp_ws = self
                .connect
                .iter()
                .find(|ws| ws.system == System::StmpWs)
                .filter(|_| row.system == System::SocketIo)
                .map_or(String::new(), |ws| {
                    format!(
                        "; stmp ws made {} its conn/s, at {} its server CPU",
                        ratio(ws.per_second / row.per_second),
                        ratio(ws.server_cpu_ns as f64 / row.server_cpu_ns.max(1) as f64)
                    )
                });
            let _ = writeln!(
                md,
                "| connect, 1 call, close: {} conns, {} at a time | {} | {} conn/s | {} | {} | {} | {} | {} | server CPU {}/conn; client CPU {}/conn; p50, p99: connect to first answer{versus_stmp_ws} |",
                thousands(row.connections),
                row.at_once,
                row.system.label(),
                rate(row.per_second),
                duration(row.p50_ns),
                duration(row.p99_ns),
                duration(row.server_cpu_ns + row.client_cpu_ns),
                versus(System::Tonic),
                versus(raw_of(row.system)),
                duration(row.server_cpu_ns),
                duration(row.client_cpu_ns),
            );
        }
        for row in &self.fanout {
            let versus_raw = match (row.system.as_str(), self.fanout("raw tcp", row.clients)) {
                ("raw tcp", _) | (_, None) => "–".to_owned(),
                (_, Some(raw)) => format!(
                    "{} time, {} server CPU, {} client CPU",
                    ratio(row.p50_ns as f64 / raw.p50_ns as f64),
                    ratio(row.server_cpu_ns as f64 / raw.server_cpu_ns.max(1) as f64),
                    ratio(row.client_cpu_ns as f64 / raw.client_cpu_ns.max(1) as f64)
                ),
            };
            let versus_one_node = match (row.system.as_str(), self.fanout("stmp tcp", row.clients))
            {
                (crate::cluster::SYSTEM, Some(one)) => format!(
                    "; {} the time of one node",
                    ratio(row.p50_ns as f64 / one.p50_ns.max(1) as f64)
                ),
                _ => String::new(),
            };
            let versus_stmp_ws = match (row.system.as_str(), self.fanout("stmp ws", row.clients)) {
                (crate::fanout::SOCKETIO, Some(ws)) => format!(
                    "; stmp ws took {} its time, at {} its server CPU",
                    ratio(ws.p50_ns as f64 / row.p50_ns.max(1) as f64),
                    ratio(ws.server_cpu_ns as f64 / row.server_cpu_ns.max(1) as f64)
                ),
                _ => String::new(),
            };
            let passes = match row.pass_p50_ns.len() {
                0 | 1 => String::new(),
                n => format!(
                    "; the median of {n} passes ({})",
                    row.pass_p50_ns
                        .iter()
                        .map(|&ns| duration(ns))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            let _ = writeln!(
                md,
                "| fan-out to {} clients, {} B frame | {} | {} to last client | {} | {} (worst) | – | – | {versus_raw} | server CPU {}/event; client CPU {}/event; broadcast call {}; {} encoding(s); {} dropped; {} rounds{passes}{versus_one_node}{versus_stmp_ws} |",
                thousands(row.clients),
                row.frame_bytes,
                row.system,
                duration(row.p50_ns),
                duration(row.p50_ns),
                duration(row.max_ns),
                duration(row.server_cpu_ns),
                duration(row.client_cpu_ns),
                duration(row.call_ns),
                row.encodings,
                row.dropped,
                row.rounds,
            );
        }
        let one_node = self
            .throughput
            .iter()
            .find(|t| t.nodes == 1 && t.system == "stmp tcp");
        for t in &self.throughput {
            let versus_one_node = match one_node {
                Some(one) if t.nodes > 1 && one.clients == t.clients => format!(
                    "; {} one node's",
                    ratio(t.broadcasts_per_s / one.broadcasts_per_s.max(f64::MIN_POSITIVE))
                ),
                _ => String::new(),
            };
            let _ = writeln!(
                md,
                "| broadcasts to everyone, {} clients over {} node(s) | {} | {} broadcasts/s | – | – | – | – | – | {} deliveries/s; {} broadcasts in {}; {} missed{versus_one_node} |",
                thousands(t.clients),
                t.nodes,
                t.system,
                rate(t.broadcasts_per_s),
                rate(t.deliveries_per_s),
                thousands(t.broadcasts),
                duration(t.elapsed_ns),
                t.missed,
            );
        }
        for row in &self.memory {
            let tonic = self
                .memory
                .iter()
                .find(|r| r.system == System::Tonic && r.connections == row.connections);
            let versus_tonic = match tonic {
                Some(t) if row.system != System::Tonic => {
                    ratio(row.per_connection_kib / t.per_connection_kib.max(0.001))
                }
                _ => "–".to_owned(),
            };
            let versus_stmp_ws = self
                .memory
                .iter()
                .find(|r| r.system == System::StmpWs && r.connections == row.connections)
                .filter(|_| row.system == System::SocketIo)
                .map_or(String::new(), |ws| {
                    let x = ws.per_connection_kib / row.per_connection_kib.max(0.001);
                    format!("; stmp ws: {} its memory per connection", ratio(x))
                });
            let _ = writeln!(
                md,
                "| idle memory, {} conns | {} | {:.1} KiB/conn | – | – | – | {versus_tonic} | – | server RSS {:.1} → {:.1} MiB{versus_stmp_ws} |",
                thousands(row.connections),
                row.system.label(),
                row.per_connection_kib,
                row.baseline_kib as f64 / 1024.0,
                row.rss_kib as f64 / 1024.0,
            );
            if let Some(burst) = &row.after_burst {
                let _ = writeln!(
                    md,
                    "| heap after a burst, {} conns | {} | {:+.2} KiB/conn | – | – | – | – | – | {} calls at once on each, then quiet: heap in use {:.1} → {:.1} MiB, {} tasks left |",
                    thousands(row.connections),
                    row.system.label(),
                    burst.per_connection_kib,
                    crate::memory::BURST,
                    burst.heap_before_kib as f64 / 1024.0,
                    burst.heap_after_kib as f64 / 1024.0,
                    burst.tasks_left,
                );
            }
        }
        for row in &self.target {
            let m = &row.measured;
            let _ = writeln!(
                md,
                "| JoinRoom, {} | {} | {} req/s | {} | {} | – | – | – | --target: quick-start RoomService.JoinRoom |",
                row.point_label,
                row.url,
                rate(m.rps),
                duration(m.p50_ns),
                duration(m.p99_ns),
            );
        }
        if self.unary.is_empty() && self.fanout.is_empty() && self.memory.is_empty() {
            return md;
        }
        md.push_str("\n### Targets (issue 16)\n\n| target | measured | |\n|---|---|---|\n");
        for target in &self.targets {
            let verdict = match target.met {
                Some(true) => "met",
                Some(false) => "**missed**",
                None => "–",
            };
            let _ = writeln!(
                md,
                "| {} | {} | {verdict} |",
                target.target, target.measured
            );
        }
        md
    }

    /// Writes `results.md` and `results.json` into `dir`.
    pub fn write(&self, dir: &Path) -> crate::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("results.md"), self.markdown())?;
        std::fs::write(
            dir.join("results.json"),
            serde_json::to_string_pretty(self)?,
        )?;
        Ok(())
    }
}
