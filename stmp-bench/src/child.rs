//! The server process: `stmp-bench serve <kind>`, started by the load process, which reads its
//! addresses from its stdout, talks to it over its stdin, and reads its CPU time and resident
//! memory from `/proc`.
//!
//! The protocol is lines: the server prints `LISTEN <name> <addr>` for each listener and then
//! `READY`; after that it answers each command line on its stdin with one line. It exits when
//! its stdin closes, so it never outlives the load process; the load process also kills it
//! (on drop too, so an error path cannot leak it).

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::Result;
use crate::systems::{CERT_ENV, KEY_ENV, Listening, SERVER_WORKERS_ENV, ServerKind, bench_cert};

/// The CPU of the servers while a latency point runs pinned (see [`pin_for_latency`]).
pub const SERVER_CPU: usize = 0;
/// The CPU of the load generator while a latency point runs pinned.
pub const LOAD_CPU: usize = 1;

/// The CPUs this process could use when it first asked (before any pinning).
pub fn machine_cpus() -> usize {
    static CPUS: OnceLock<usize> = OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Sets the CPUs every thread of process `pid` may run on (`taskset -a -p -c`); false when
/// that fails (no `taskset`, say).
pub fn set_affinity(pid: u32, cpus: &str) -> bool {
    std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Pins the servers to [`SERVER_CPU`] and this load generator to [`LOAD_CPU`] (`pin`), or lets
/// them all run anywhere again. Returns whether it could.
///
/// Why, for the 1-in-flight points only: on the 2-vCPU VMs here a ping-pong between two
/// processes costs ~15 µs when the scheduler happens to put both on one vCPU and ~50 µs when
/// they are on two (a cross-vCPU wake-up), and which one a process gets is chance that sticks
/// for a while — unpinned, the 1-in-flight figures of two systems in one run differed fourfold
/// for no reason of theirs. Pinned, every system pays the same cross-CPU round trip. The
/// throughput points run unpinned: both processes share both CPUs, as the issue asks.
pub fn pin_for_latency(servers: &[&ServerProcess], pin: bool) -> bool {
    let cpus = machine_cpus();
    if cpus < 2 {
        return false;
    }
    let all = format!("0-{}", cpus - 1);
    let (server_cpus, load_cpus) = match pin {
        true => (SERVER_CPU.to_string(), LOAD_CPU.to_string()),
        false => (all.clone(), all),
    };
    let mut ok = set_affinity(std::process::id(), &load_cpus);
    for server in servers {
        ok &= set_affinity(server.pid(), &server_cpus);
    }
    ok
}

/// A command (and its arguments) to run the server process under, for profiling.
pub const WRAPPER_ENV: &str = "STMP_BENCH_SERVER_WRAPPER";

/// A multi-thread runtime of `workers` worker threads (tokio's default, one per CPU, for
/// `None`): the load generator's and each server process's.
pub fn runtime(workers: Option<usize>) -> Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = workers {
        if workers == 0 {
            return Err("a runtime needs at least one worker thread".into());
        }
        builder.worker_threads(workers);
    }
    Ok(builder.enable_all().build()?)
}

/// The worker threads of every server process started from here on (`--server-workers`).
static SERVER_WORKERS: OnceLock<usize> = OnceLock::new();

/// Runs every server process this suite starts on `workers` runtime threads; set once, before
/// the first starts.
pub fn set_server_workers(workers: usize) {
    let _ = SERVER_WORKERS.set(workers);
}

/// A running server process.
pub struct ServerProcess {
    kind: ServerKind,
    child: Child,
    pid: u32,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    /// Its listeners.
    pub listening: Listening,
}

impl ServerProcess {
    /// Starts `stmp-bench serve <kind>` and waits until it listens.
    pub async fn spawn(kind: ServerKind) -> Result<ServerProcess> {
        ServerProcess::spawn_with_env(kind, &[]).await
    }

    /// [`spawn`](Self::spawn), with these environment variables set for the server.
    pub async fn spawn_with_env(kind: ServerKind, env: &[(&str, String)]) -> Result<ServerProcess> {
        let exe = std::env::current_exe()?;
        // For profiling: `STMP_BENCH_SERVER_WRAPPER="valgrind --tool=massif"` runs the server
        // under that command (which must exec the program in place, keeping its pid).
        let wrapper = std::env::var(WRAPPER_ENV).unwrap_or_default();
        let mut wrapper = wrapper.split_whitespace();
        let mut command = match wrapper.next() {
            Some(program) => {
                let mut command = Command::new(program);
                command.args(wrapper).arg(exe);
                command
            }
            None => Command::new(exe),
        };
        if let Some(workers) = SERVER_WORKERS.get() {
            command.env(SERVER_WORKERS_ENV, workers.to_string());
        }
        command
            .arg("serve")
            .arg(kind.arg())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .envs(env.iter().map(|(key, value)| (key, value)));
        if matches!(kind, ServerKind::Stmp | ServerKind::RawEcho) {
            let cert = bench_cert();
            command
                .env(CERT_ENV, &cert.cert_pem)
                .env(KEY_ENV, &cert.key_pem);
        }
        let mut child = command.spawn()?;
        let pid = child.id().ok_or("the server process exited at once")?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
        let mut server = ServerProcess {
            kind,
            child,
            pid,
            stdin,
            stdout,
            listening: Listening::default(),
        };
        loop {
            let line = server.read_line(Duration::from_secs(30)).await?;
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["READY"] => break,
                ["LISTEN", name, addr] => {
                    let addr: SocketAddr = addr.parse()?;
                    server.listening.insert(name.to_string(), addr);
                }
                _ => return Err(format!("unexpected line from the server: {line}").into()),
            }
        }
        Ok(server)
    }

    /// What it serves.
    pub fn kind(&self) -> ServerKind {
        self.kind
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends one command line and returns the answer's words after its first one.
    pub async fn command(&mut self, command: &str) -> Result<Vec<String>> {
        self.send(command).await?;
        self.answer().await
    }

    /// Sends one command line without waiting for its answer (see [`answer`](Self::answer)):
    /// several servers can then work on theirs at once.
    pub async fn send(&mut self, command: &str) -> Result<()> {
        self.stdin.write_all(command.as_bytes()).await?;
        self.stdin.write_all(b"\n").await?;
        self.stdin.flush().await?;
        Ok(())
    }

    /// The answer to the command sent last: its words after the first.
    pub async fn answer(&mut self) -> Result<Vec<String>> {
        let line = self.read_line(Duration::from_secs(60)).await?;
        let mut words = line.split_whitespace().map(str::to_owned);
        match words.next().as_deref() {
            Some("ERROR") | None => Err(format!("server: {line}").into()),
            Some(_) => Ok(words.collect()),
        }
    }

    /// The number of connections the server holds.
    pub async fn connections(&mut self) -> Result<usize> {
        let words = self.command("count").await?;
        Ok(words.first().ok_or("no count")?.parse()?)
    }

    /// The tasks alive on the server's runtime (an stmp server's).
    pub async fn tasks(&mut self) -> Result<usize> {
        let words = self.command("tasks").await?;
        Ok(words.first().ok_or("no task count")?.parse()?)
    }

    /// Bytes of heap the server's allocator has handed out and not been given back (an stmp
    /// server's, built with glibc).
    pub async fn heap_bytes(&mut self) -> Result<u64> {
        let words = self.command("heap").await?;
        Ok(words.first().ok_or("no heap figure")?.parse()?)
    }

    /// Waits until the server holds `n` connections.
    pub async fn wait_for_connections(&mut self, n: usize) -> Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let now = self.connections().await?;
            if now == n {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!("the server holds {now} connections, not {n}").into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn read_line(&mut self, timeout: Duration) -> Result<String> {
        match tokio::time::timeout(timeout, self.stdout.next_line()).await {
            Ok(Ok(Some(line))) => Ok(line),
            Ok(Ok(None)) => Err(format!("the {:?} server process ended", self.kind).into()),
            Ok(Err(error)) => Err(error.into()),
            Err(_) => Err(format!("the {:?} server process is not answering", self.kind).into()),
        }
    }

    /// User plus system CPU time the server has used so far.
    pub fn cpu_time(&self) -> Result<Duration> {
        cpu_time(self.pid)
    }

    /// The server's resident memory, in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        rss_kib(self.pid)
    }

    /// Ends the server: closes its stdin (it exits by itself), kills it if it has not within
    /// a moment, and reaps it.
    pub async fn stop(self) {
        let ServerProcess {
            mut child, stdin, ..
        } = self;
        drop(stdin);
        // A profiler wrapping the server needs time to write its data.
        let grace = match std::env::var_os(WRAPPER_ENV) {
            Some(_) => Duration::from_secs(120),
            None => Duration::from_millis(500),
        };
        if tokio::time::timeout(grace, child.wait()).await.is_err() {
            let _ = child.kill().await;
        }
    }
}

/// utime + stime of a process, from `/proc/<pid>/stat` (clock ticks, so 10 ms granularity
/// where `CLK_TCK` is 100: measure many events and divide).
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name is in parentheses and may hold spaces: fields are counted after it.
    let rest = &stat[stat.rfind(')').ok_or("bad /proc stat")? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is fields[0]; utime is field 14, stime field 15.
    let utime: u64 = fields.get(11).ok_or("bad /proc stat")?.parse()?;
    let stime: u64 = fields.get(12).ok_or("bad /proc stat")?.parse()?;
    let ticks = utime + stime;
    Ok(Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64))
}

/// CPU time of a process to the nanosecond: the sum over its threads of the run time in
/// `/proc/<pid>/task/<tid>/schedstat`. Threads that ended are missing from it, so it suits a
/// window in which a process keeps its threads (a tokio runtime's workers); [`cpu_time`]
/// counts every thread but ticks at 10 ms.
pub fn cpu_ns(pid: u32) -> Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = task?.path().join("schedstat");
        // A thread may end between the listing and the read: it no longer counts.
        let Ok(stat) = std::fs::read_to_string(path) else {
            continue;
        };
        let ran: u64 = stat
            .split_whitespace()
            .next()
            .ok_or("bad schedstat")?
            .parse()?;
        total += ran;
    }
    Ok(total)
}

/// `VmRSS` of a process, in KiB, from `/proc/<pid>/status`.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .ok_or("no VmRSS in /proc status")?;
    let kib = line
        .split_whitespace()
        .nth(1)
        .ok_or("bad VmRSS line")?
        .parse()?;
    Ok(kib)
}

/// `CLK_TCK` (from `getconf`, 100 if that fails).
fn clock_ticks() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .filter(|&ticks| ticks > 0)
            .unwrap_or(100)
    })
}

/// Raises the open-file limit to the hard limit; returns the soft limit now in force.
pub fn raise_nofile_limit() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024)
}

/// Low-priority busy loops that keep idle CPUs from halting while a latency point or the
/// fan-out runs.
///
/// On a VM whose idle vCPUs wake slowly (the firecracker VMs here: a ping-pong point's p99
/// jumps to ~1.5 ms and its requests/s drop tenfold once the host is busy), every blocking
/// round trip pays the host's wake-up. One `nice -n 19` spinner per CPU keeps the vCPUs
/// running; at nice 19 a spinner gets ~1.5 % of a CPU next to a runnable benchmark thread.
/// Each spinner is `stmp-bench spin`, which exits when its stdin closes; they are killed when
/// this is dropped.
///
/// Only the 1-in-flight point ([`crate::unary::spinners_for`]) and the fan-out, whose rounds
/// leave the CPUs idle between events, get them. Where the CPUs are busy anyway they keep nothing awake,
/// and they cost: whenever the scheduler gives a spinner its turn, a woken benchmark thread on
/// that CPU waits for the spinner's time slice to end. With them, stmp tcp's p99 at 64 in
/// flight on one connection was 2.2–4.5 ms; without, 0.5–0.7 ms, and the round-by-round spread
/// of the ratios narrowed (see the README).
pub struct Spinners {
    children: Vec<std::process::Child>,
}

impl Spinners {
    /// Starts one spinner per CPU (none if `nice` cannot be run).
    pub fn start() -> Spinners {
        let cpus = machine_cpus();
        let mut children = Vec::new();
        let Ok(exe) = std::env::current_exe() else {
            return Spinners { children };
        };
        for _ in 0..cpus {
            let spawned = std::process::Command::new("nice")
                .args(["-n", "19"])
                .arg(&exe)
                .arg("spin")
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn();
            match spawned {
                Ok(child) => children.push(child),
                Err(error) => {
                    eprintln!("stmp-bench: no spinners ({error}); latency points may suffer");
                    break;
                }
            }
        }
        Spinners { children }
    }
}

impl Drop for Spinners {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `stmp-bench spin`: spins until stdin closes.
pub fn spin() {
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = done.clone();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        watcher.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    while !done.load(std::sync::atomic::Ordering::Relaxed) {
        std::hint::spin_loop();
    }
}
