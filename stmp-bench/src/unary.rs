//! Unary request/response: every system, both payloads, three points.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;

use crate::child::ServerProcess;
use crate::measure::{Call, Latencies, Measured};
use crate::pb::echo_service_client::EchoServiceClient;
use crate::raw::{QuicStream, RawCall};
use crate::socketio::SocketIoCall;
use crate::systems::{Listening, System, stmp_client};
use crate::{ECHO, Echo, Result, Settings};

/// The payload sizes, in bytes, of the full run and of the targets.
pub const PAYLOADS: [usize; 2] = [32, 1024];

/// The largest payload `--payload` takes: well under tonic's default 4 MiB message limit.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// The most payload bytes the multiplexed point may have in flight on its one connection:
/// half of what an stmp server lets a connection have in flight (beyond that it refuses
/// calls with `TooManyRequests`). 64 calls of 256 KiB fit.
pub const MAX_IN_FLIGHT: usize = 16 << 20;

/// Where on the latency/throughput curve a measurement is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Point {
    /// One call in flight on one connection: latency.
    Single,
    /// `depth` calls in flight on one connection: multiplexing.
    Multiplexed,
    /// `depth` connections with one call in flight each: connection scaling.
    Connections,
}

impl Point {
    /// All three, in table order.
    pub const ALL: [Point; 3] = [Point::Single, Point::Multiplexed, Point::Connections];

    /// `1 conn × 1`, `1 conn × 64`, `64 conns × 1`.
    pub fn label(self, depth: usize) -> String {
        match self {
            Point::Single => "1 conn × 1 in flight".to_owned(),
            Point::Multiplexed => format!("1 conn × {depth} in flight"),
            Point::Connections => format!("{depth} conns × 1 in flight"),
        }
    }

    fn connections(self, depth: usize) -> usize {
        match self {
            Point::Connections => depth,
            _ => 1,
        }
    }

    fn in_flight_per_connection(self, depth: usize) -> usize {
        match self {
            Point::Multiplexed => depth,
            _ => 1,
        }
    }
}

/// One row of the unary table.
#[derive(Clone, Debug, Serialize)]
pub struct UnaryResult {
    /// The system.
    pub system: System,
    /// Payload bytes.
    pub payload: usize,
    /// The point.
    pub point: Point,
    /// Its label.
    pub point_label: String,
    /// The figures.
    pub measured: Measured,
}

/// An stmp client calling the echo method, with each of its payloads in turn.
pub struct StmpCall {
    client: stmp::Client,
    inputs: Turns<Echo>,
}

impl StmpCall {
    /// The first caller of a point, with payloads of `payload` bytes.
    pub fn new(client: stmp::Client, payload: usize) -> StmpCall {
        StmpCall::caller(client, payload, 0)
    }

    /// Caller number `caller` of a point, with payloads of `payload` bytes.
    pub fn caller(client: stmp::Client, payload: usize, caller: usize) -> StmpCall {
        StmpCall {
            client,
            inputs: Turns::new(payload, caller, |payload| Echo { payload }),
        }
    }
}

impl Call for StmpCall {
    async fn call(&mut self) -> Result<()> {
        let input = self.inputs.next();
        let output: Echo = self.client.call(&ECHO, input).await?;
        check(output.payload.len(), input.payload.len())
    }
}

/// A tonic client calling the echo service, with each of its payloads in turn.
pub struct TonicCall {
    client: EchoServiceClient<tonic::transport::Channel>,
    inputs: Turns<crate::pb::Echo>,
}

impl TonicCall {
    /// The first caller of a point, with payloads of `payload` bytes.
    pub fn new(client: EchoServiceClient<tonic::transport::Channel>, payload: usize) -> TonicCall {
        TonicCall::caller(client, payload, 0)
    }

    /// Caller number `caller` of a point, with payloads of `payload` bytes.
    pub fn caller(
        client: EchoServiceClient<tonic::transport::Channel>,
        payload: usize,
        caller: usize,
    ) -> TonicCall {
        TonicCall {
            client,
            inputs: Turns::new(payload, caller, |payload| crate::pb::Echo { payload }),
        }
    }
}

impl Call for TonicCall {
    async fn call(&mut self) -> Result<()> {
        let input = self.inputs.next();
        let sent = input.payload.len();
        let output = self.client.echo(input.clone()).await?.into_inner();
        check(output.payload.len(), sent)
    }
}

/// A caller's requests ([`crate::echo_payloads`]), taken in turn.
struct Turns<T> {
    inputs: Vec<T>,
    next: usize,
}

impl<T> Turns<T> {
    fn new(payload: usize, caller: usize, input: impl Fn(Vec<u8>) -> T) -> Self {
        Turns {
            inputs: crate::echo_payloads(payload, caller)
                .into_iter()
                .map(input)
                .collect(),
            next: 0,
        }
    }

    fn next(&mut self) -> &T {
        let turn = self.next;
        self.next = (turn + 1) % self.inputs.len();
        &self.inputs[turn]
    }
}

fn check(got: usize, sent: usize) -> Result<()> {
    if got == sent {
        Ok(())
    } else {
        Err(format!("echo of {sent} bytes came back with {got}").into())
    }
}

/// Runs `callers` for the warm-up and then the measured window; each measures the calls it
/// starts inside the window.
pub async fn drive<C: Call>(
    callers: Vec<C>,
    warmup: Duration,
    measure: Duration,
) -> Result<Measured> {
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + measure;
    let tasks: Vec<_> = callers
        .into_iter()
        .map(|mut caller| {
            tokio::spawn(async move {
                let mut latencies = Latencies::default();
                // One clock read per call: a call's end is the next one's start. The load
                // generator shares the CPUs with the server, and in a profile of stmp tcp at
                // 64 in flight the clock reads were 2.4 % of both processes' time.
                let mut began = Instant::now();
                while began < end {
                    caller.call().await?;
                    let ended = Instant::now();
                    if began >= measure_from {
                        latencies.record(ended - began);
                    }
                    began = ended;
                }
                Ok::<_, crate::Error>(latencies)
            })
        })
        .collect();
    let mut all = Vec::with_capacity(tasks.len());
    for task in tasks {
        all.push(task.await??);
    }
    let requests = all.iter().map(Latencies::count).sum();
    Ok(Measured::new(Latencies::histogram(all)?, requests, measure))
}

/// Connects `n` stmp clients of `system`, 64 at a time.
pub async fn stmp_clients(
    system: System,
    server: &Listening,
    n: usize,
    router: Option<stmp::Router>,
) -> Result<Vec<stmp::Client>> {
    futures_util::stream::iter(0..n)
        .map(|_| stmp_client(system, server, router.clone()))
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// Connects `n` tonic channels (one HTTP/2 connection each), 64 at a time.
pub async fn tonic_clients(
    server: &Listening,
    n: usize,
) -> Result<Vec<EchoServiceClient<tonic::transport::Channel>>> {
    futures_util::stream::iter(0..n)
        .map(|_| tonic_client(server))
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// Connects one tonic channel (one HTTP/2 connection, `TCP_NODELAY`).
pub async fn tonic_client(
    server: &Listening,
) -> Result<EchoServiceClient<tonic::transport::Channel>> {
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr("tcp")?))?
            .tcp_nodelay(true)
            .connect()
            .await?;
    Ok(EchoServiceClient::new(channel))
}

/// Measures one point of one system, and the CPU time its server and this process spent in
/// the measured window.
pub async fn run_point(
    system: System,
    server: &ServerProcess,
    payload: usize,
    point: Point,
    settings: &Settings,
) -> Result<Measured> {
    let (warmup, measure) = (settings.warmup, settings.measure);
    let cpu = tokio::spawn(cpu_in_window(server.pid(), warmup, measure));
    let measured = measure_point(system, &server.listening, payload, point, settings).await?;
    Ok(measured.with_cpu(cpu.await.ok().flatten()))
}

/// CPU time of the server process and of this one together, from `warmup` from now for
/// `measure`: the window [`drive`] measures in when it starts now too.
async fn cpu_in_window(server: u32, warmup: Duration, measure: Duration) -> Option<u64> {
    let start = tokio::time::Instant::now() + warmup;
    let both = || {
        let own = crate::child::cpu_ns(std::process::id()).ok()?;
        let server = crate::child::cpu_ns(server).ok()?;
        Some(own + server)
    };
    tokio::time::sleep_until(start).await;
    let before = both()?;
    tokio::time::sleep_until(start + measure).await;
    let after = both()?;
    after.checked_sub(before)
}

async fn measure_point(
    system: System,
    server: &Listening,
    payload: usize,
    point: Point,
    settings: &Settings,
) -> Result<Measured> {
    let conns = point.connections(settings.depth);
    let per_conn = point.in_flight_per_connection(settings.depth);
    let (warmup, measure) = (settings.warmup, settings.measure);
    match system {
        System::RawTcp if point == Point::Multiplexed => {
            crate::raw::pipelined(server.addr("tcp")?, payload, per_conn, warmup, measure).await
        }
        System::RawTcp => {
            let mut callers = Vec::with_capacity(conns);
            for _ in 0..conns {
                callers.push(RawCall::connect(server.addr("tcp")?, payload).await?);
            }
            drive(callers, warmup, measure).await
        }
        System::RawQuic if point == Point::Multiplexed => {
            let (reader, writer) = QuicStream::connect(server.addr("quic")?)
                .await?
                .into_split();
            crate::raw::pipelined_over(reader, writer, payload, per_conn, warmup, measure).await
        }
        System::RawQuic => {
            let mut callers = Vec::with_capacity(conns);
            for _ in 0..conns {
                let stream = QuicStream::connect(server.addr("quic")?).await?;
                callers.push(RawCall::over(stream, payload));
            }
            drive(callers, warmup, measure).await
        }
        System::Tonic => {
            let clients = tonic_clients(server, conns).await?;
            let callers = callers_on(&clients, per_conn, |client, caller| {
                TonicCall::caller(client.clone(), payload, caller)
            });
            drive(callers, warmup, measure).await
        }
        System::SocketIo => {
            let clients = crate::socketio::clients(server.addr("ws")?, conns, None).await?;
            let callers = callers_on(&clients, per_conn, |client, caller| {
                SocketIoCall::caller(client.clone(), payload, caller)
            });
            drive(callers, warmup, measure).await
        }
        stmp => {
            let clients = stmp_clients(stmp, server, conns, None).await?;
            let callers = callers_on(&clients, per_conn, |client, caller| {
                StmpCall::caller(client.clone(), payload, caller)
            });
            let measured = drive(callers, warmup, measure).await;
            futures_util::future::join_all(clients.iter().map(stmp::Client::close)).await;
            measured
        }
    }
}

/// `per_conn` callers on each of `clients`, numbered across them all (each caller number has
/// payloads of its own).
fn callers_on<Client, C>(
    clients: &[Client],
    per_conn: usize,
    caller: impl Fn(&Client, usize) -> C,
) -> Vec<C> {
    clients
        .iter()
        .flat_map(|client| std::iter::repeat_n(client, per_conn))
        .enumerate()
        .map(|(number, client)| caller(client, number))
        .collect()
}

/// Spinners for the time `point` runs, if the settings want them: the latency point gets them,
/// the throughput points do not (see [`crate::child::Spinners`]).
pub fn spinners_for(settings: &Settings, point: Point) -> Option<crate::child::Spinners> {
    (settings.spin && point == Point::Single).then(crate::child::Spinners::start)
}

/// The points of the systems. One server process per kind (the stmp transports share one),
/// all up at once, so that each point can be measured in rounds that take the systems in
/// turn: a burst of noise from the rest of the machine then hits one round of one system, and
/// the median of the rounds leaves it out.
pub async fn run(
    settings: &Settings,
    systems: &[System],
    points: &[Point],
    payloads: &[usize],
) -> Result<Vec<UnaryResult>> {
    let mut servers: Vec<ServerProcess> = Vec::new();
    for &system in systems {
        if !servers.iter().any(|s| s.kind() == system.server()) {
            servers.push(ServerProcess::spawn(system.server()).await?);
        }
    }
    let server_of = |system: System| {
        servers
            .iter()
            .find(|s| s.kind() == system.server())
            .expect("a server per kind")
    };
    let mut results = Vec::new();
    let all: Vec<&ServerProcess> = servers.iter().collect();
    for &payload in payloads {
        for &point in points {
            let pinned = settings.pin && point == Point::Single;
            let _awake = spinners_for(settings, point);
            if pinned && !crate::child::pin_for_latency(&all, true) {
                eprintln!("stmp-bench: cannot pin (taskset); the 1-in-flight point runs unpinned");
            }
            let mut rounds: Vec<Vec<Measured>> = vec![Vec::new(); systems.len()];
            for _ in 0..settings.rounds {
                for (i, &system) in systems.iter().enumerate() {
                    let measured = run_point(system, server_of(system), payload, point, settings)
                        .await
                        .map_err(|e| {
                            format!(
                                "{} {payload} B {}: {e}",
                                system.label(),
                                point.label(settings.depth)
                            )
                        })?;
                    rounds[i].push(measured);
                }
            }
            if pinned {
                crate::child::pin_for_latency(&all, false);
            }
            for (&system, rounds) in systems.iter().zip(rounds) {
                let measured = Measured::median(rounds);
                eprintln!(
                    "  {:<15} {:>5} B  {:<22} {:>10.0} req/s  p50 {:>9}  p99 {:>9}  CPU/call {:>9}",
                    system.label(),
                    payload,
                    point.label(settings.depth),
                    measured.rps,
                    crate::units::duration(measured.p50_ns),
                    crate::units::duration(measured.p99_ns),
                    measured
                        .cpu_ns_per_call
                        .map_or("–".to_owned(), crate::units::duration),
                );
                results.push(UnaryResult {
                    system,
                    payload,
                    point,
                    point_label: point.label(settings.depth),
                    measured,
                });
            }
        }
    }
    for server in servers {
        server.stop().await;
    }
    Ok(results)
}
