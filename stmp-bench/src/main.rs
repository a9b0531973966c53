//! `stmp-bench [--quick] [--out DIR] [--only unary|connect|fanout|cluster|memory]...`: runs the suite and
//! prints the table (also written to DIR/results.md and DIR/results.json; DIR defaults to
//! `target/bench-results`, inside the ignored target directory).
//!
//! `stmp-bench serve <kind>` is the server process the suite starts for itself.

use std::path::PathBuf;
use std::process::ExitCode;

use stmp_bench::report::Report;
use stmp_bench::systems::{ServerKind, System};
use stmp_bench::unary::Point;
use stmp_bench::{Result, Settings, child, cluster, connect, fanout, memory, target, unary};

const PAYLOAD_SIZES: &str = "--payload needs a size in bytes, from 1 to 1048576";

const USAGE: &str = "usage: stmp-bench [--quick] [--out DIR] [--only unary|connect|fanout|cluster|memory]...
                  [--system LABEL]... [--point single|multiplexed|connections]... [--payload BYTES]...
                  [--no-spin] [--no-pin] [--load-workers N] [--server-workers N]
                  [--target ADDR] [--fanout-passes N] [--depth N] [--connects N]
       stmp-bench serve stmp|tonic|raw-echo|raw-fanout|stmp-nats

--system and --point narrow the unary part (for profiling): LABEL as in the table
(\"stmp tcp\", \"tonic grpc\", ...). --system narrows the connect part too.

--target ADDR loads a server that is already running (any STMP 1.0 server with the quick-start
RoomService) with JoinRoom calls at the unary points (or those of --point): ADDR is a URL
(tcp://host:port, ws://host:port/quick_start, ...) or host:port for TCP. Alone it runs only that;
with --only it runs those parts too.

--payload BYTES runs the unary points at that size (1 to 1048576) instead of 32 and 1024; the
targets are for those two. Above 262144 the multiplexed point puts more than 16 MiB in flight
on one connection: pick the other points, or a smaller --depth.

--fanout-passes N runs the fan-out comparison N times (3 in the full run, 1 with --quick); each
row reports its median pass.

--connects N sets the connections each system opens, uses once and closes in each round of
the connect part (2000 in the full run, 100 with --quick).

--load-workers N and --server-workers N set the worker threads of the load generator's runtime
and of each server process's runtime (tokio's default otherwise: one per CPU).

--depth N sets the calls in flight on one connection at the multiplexed points, the
connections of the connections point, and the connections under way at once in the connect
part (64 otherwise; the issue's targets are set at 64).";

struct Args {
    settings: Settings,
    out: PathBuf,
    only: Vec<String>,
    systems: Vec<System>,
    points: Vec<Point>,
    payloads: Vec<usize>,
    target: Option<String>,
}

fn parse(args: &[String]) -> Result<Args> {
    let mut parsed = Args {
        settings: Settings::full(),
        out: PathBuf::from("target/bench-results"),
        only: Vec::new(),
        systems: Vec::new(),
        points: Vec::new(),
        payloads: Vec::new(),
        target: None,
    };
    // Applied after the loop, so that `--quick` anywhere does not undo them.
    let (mut passes_asked, mut depth_asked, mut connects_asked) = (None, None, None);
    let (mut load_workers, mut server_workers) = (None, None);
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => {
                let (spin, pin) = (parsed.settings.spin, parsed.settings.pin);
                parsed.settings = Settings::quick();
                parsed.settings.spin = spin;
                parsed.settings.pin = pin;
            }
            "--no-spin" => parsed.settings.spin = false,
            "--no-pin" => parsed.settings.pin = false,
            "--out" => parsed.out = args.next().ok_or("--out needs a directory")?.into(),
            "--only" => {
                let part = args
                    .next()
                    .ok_or("--only needs unary, connect, fanout, cluster or memory")?;
                if !["unary", "connect", "fanout", "cluster", "memory"].contains(&part.as_str()) {
                    return Err(format!("unknown part {part:?}").into());
                }
                parsed.only.push(part.clone());
            }
            "--system" => {
                let label = args.next().ok_or("--system needs a system")?;
                let system = System::ALL
                    .into_iter()
                    .find(|s| s.label() == label)
                    .ok_or_else(|| format!("unknown system {label:?}"))?;
                parsed.systems.push(system);
            }
            "--point" => {
                let point = match args.next().map(String::as_str) {
                    Some("single") => Point::Single,
                    Some("multiplexed") => Point::Multiplexed,
                    Some("connections") => Point::Connections,
                    _ => return Err("--point needs single, multiplexed or connections".into()),
                };
                parsed.points.push(point);
            }
            "--payload" => {
                let payload = args
                    .next()
                    .and_then(|bytes| bytes.parse::<usize>().ok())
                    .filter(|bytes| (1..=unary::MAX_PAYLOAD).contains(bytes))
                    .ok_or(PAYLOAD_SIZES)?;
                parsed.payloads.push(payload);
            }
            "--fanout-passes" => {
                let passes = args.next().ok_or("--fanout-passes needs a number")?;
                passes_asked = Some(
                    passes
                        .parse::<usize>()
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or("--fanout-passes needs a number above 0")?,
                );
            }
            "--depth" => depth_asked = Some(above_zero(args.next(), "--depth needs a number")?),
            "--connects" => {
                connects_asked = Some(above_zero(args.next(), "--connects needs a number")?);
            }
            "--load-workers" => {
                load_workers = Some(above_zero(
                    args.next(),
                    "--load-workers needs a number of threads",
                )?);
            }
            "--server-workers" => {
                server_workers = Some(above_zero(
                    args.next(),
                    "--server-workers needs a number of threads",
                )?);
            }
            "--target" => {
                parsed.target = Some(args.next().ok_or("--target needs an address")?.clone());
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}").into()),
        }
    }
    if let Some(passes) = passes_asked {
        parsed.settings.fanout_passes = passes;
    }
    parsed.settings.load_workers = load_workers;
    parsed.settings.server_workers = server_workers;
    if let Some(depth) = depth_asked {
        parsed.settings.depth = depth;
    }
    if let Some(connects) = connects_asked {
        parsed.settings.connects = connects;
    }
    let multiplexed = parsed.points.is_empty() || parsed.points.contains(&Point::Multiplexed);
    let depth = parsed.settings.depth;
    if let Some(payload) = parsed
        .payloads
        .iter()
        .find(|&&payload| multiplexed && payload * depth > unary::MAX_IN_FLIGHT)
    {
        return Err(format!(
            "--payload {payload} with {depth} calls in flight on one connection puts more than \
             {} MiB in flight: pick --point single or connections, or a smaller --depth",
            unary::MAX_IN_FLIGHT >> 20
        )
        .into());
    }
    Ok(parsed)
}

/// The count after an option: a number above 0, or the error `needs` followed by "above 0".
fn above_zero(arg: Option<&String>, needs: &str) -> Result<usize> {
    arg.and_then(|n| n.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{needs} above 0").into())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match args.first().map(String::as_str) {
        Some("spin") => {
            child::spin();
            Ok(())
        }
        Some("serve") => match args.get(1).and_then(|kind| ServerKind::parse(kind)) {
            Some(kind) => stmp_bench::serve::main(kind),
            None => Err(USAGE.into()),
        },
        _ => parse(&args).and_then(run),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("stmp-bench: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    let settings = args.settings;
    // Counted now, before the latency points pin this process to one CPU.
    let _ = child::machine_cpus();
    let asked = |part: &str| {
        if args.only.is_empty() {
            args.target.is_none()
        } else {
            args.only.iter().any(|p| p == part)
        }
    };
    // Checked before minutes of other parts run: the cluster part needs `nats-server`. Asked
    // for by name it is an error; as part of the full run it is skipped, and said so.
    let cluster_runs = asked("cluster")
        && match cluster::nats_server_runs() {
            Ok(()) => true,
            Err(error) if !args.only.is_empty() => return Err(error),
            Err(error) => {
                eprintln!("skipping the cluster part: {error}");
                false
            }
        };
    let wanted = |part: &str| match part {
        "cluster" => cluster_runs,
        _ => asked(part),
    };
    // Fan-out, cluster and memory hold thousands of connections at once; the rest a few dozen.
    let fanout = if wanted("fanout") || wanted("cluster") {
        &settings.fanout[..]
    } else {
        &[]
    };
    let idle = if wanted("memory") {
        &settings.idle[..]
    } else {
        &[]
    };
    let needed = fanout.iter().chain(idle).copied().max().unwrap_or(0) as u64 + 512;
    let limit = child::raise_nofile_limit();
    if limit < needed {
        return Err(format!(
            "the open-file limit is {limit}, the run needs about {needed}: raise it (ulimit -n {needed})"
        )
        .into());
    }
    if settings.spin {
        eprintln!(
            "nice-19 spinners keep the CPUs awake during the 1-in-flight points and the fan-out (--no-spin: never)"
        );
    }
    if let Some(workers) = settings.server_workers {
        child::set_server_workers(workers);
    }
    let runtime = child::runtime(settings.load_workers)?;
    runtime.block_on(async {
        let mut unary_results = Vec::new();
        let mut fanout_results = Vec::new();
        let mut memory_results = Vec::new();
        let mut target_results = Vec::new();
        let points = match args.points.is_empty() {
            true => Point::ALL.to_vec(),
            false => args.points.clone(),
        };
        if let Some(target) = &args.target {
            eprintln!("quick-start JoinRoom against {target}:");
            target_results = target::run(target, &settings, &points).await?;
        }
        if wanted("unary") {
            eprintln!("unary request/response:");
            let systems = match args.systems.is_empty() {
                true => System::unary(),
                false => args.systems.clone(),
            };
            let payloads = match args.payloads.is_empty() {
                true => unary::PAYLOADS.to_vec(),
                false => args.payloads.clone(),
            };
            unary_results = unary::run(&settings, &systems, &points, &payloads).await?;
        }
        let mut connect_results = Vec::new();
        if wanted("connect") {
            eprintln!(
                "connection setup ({} connections, {} at a time):",
                settings.connects, settings.depth
            );
            let systems: Vec<System> = args
                .systems
                .iter()
                .copied()
                .filter(|system| connect::SYSTEMS.contains(system))
                .collect();
            if systems.is_empty() && !args.systems.is_empty() {
                eprintln!("  (none of the systems asked for is in the connect part)");
            } else {
                connect_results = connect::run(&settings, &systems).await?;
            }
        }
        let mut throughput = Vec::new();
        // The fan-out's rounds leave the CPUs idle between events, as a latency point does.
        let awake = settings.spin.then(child::Spinners::start);
        if wanted("fanout") {
            eprintln!("broadcast fan-out:");
            let (rows, single) = fanout::run(&settings).await?;
            fanout_results = rows;
            throughput.push(single);
        }
        if wanted("cluster") {
            eprintln!("cluster fan-out ({} stmp nodes on NATS):", cluster::NODES);
            let (rows, cluster) = cluster::run(&settings).await?;
            fanout_results.extend(rows);
            throughput.push(cluster);
        }
        drop(awake);
        if wanted("memory") {
            eprintln!("idle memory:");
            memory_results = memory::run(&settings).await?;
        }
        let report = Report::new(
            settings.clone(),
            unary_results,
            fanout_results,
            memory_results,
            target_results,
        )
        .with_throughput(throughput)
        .with_connect(connect_results);
        println!("{}", report.markdown());
        report.write(&args.out)?;
        eprintln!(
            "written to {} and {}",
            args.out.join("results.md").display(),
            args.out.join("results.json").display()
        );
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(args: &[&str]) -> Result<Args> {
        parse(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
    }

    /// Each of `wrong` is refused with an error that says `message`.
    fn refused(wrong: &[&[&str]], message: &str) {
        for args in wrong {
            let error = parsed(args).err().expect("refused").to_string();
            assert!(error.contains(message), "{args:?}: {error}");
        }
    }

    #[test]
    fn payloads_narrow_the_unary_part_to_the_sizes_asked_for() {
        let args = parsed(&["--payload", "1024", "--point", "multiplexed"]).expect("valid");
        assert_eq!(args.payloads, [1024]);
        assert_eq!(args.points, [Point::Multiplexed]);
        let args = parsed(&["--payload", "65536", "--payload", "1"]).expect("valid");
        assert_eq!(args.payloads, [65536, 1]);
        assert!(
            parsed(&[]).expect("valid").payloads.is_empty(),
            "both by default"
        );
        refused(
            &[
                &["--payload", "0"],
                &["--payload", "1048577"],
                &["--payload", "many"],
                &["--payload"],
            ],
            PAYLOAD_SIZES,
        );
    }

    #[test]
    fn a_payload_too_large_for_64_in_flight_on_one_connection_needs_the_other_points() {
        refused(
            &[
                &["--payload", "1048576"],
                &["--payload", "1048576", "--point", "multiplexed"],
                &[
                    "--payload",
                    "524288",
                    "--point",
                    "single",
                    "--point",
                    "multiplexed",
                ],
            ],
            "pick --point single or connections",
        );
        for right in [
            &[
                "--payload",
                "1048576",
                "--point",
                "single",
                "--point",
                "connections",
            ][..],
            &["--payload", "1048576", "--depth", "16"],
            &["--payload", "262144"],
        ] {
            parsed(right).expect("valid");
        }
    }

    #[test]
    fn connects_are_kept_whatever_the_order_of_quick() {
        assert_eq!(parsed(&[]).expect("valid").settings.connects, 2_000);
        assert_eq!(parsed(&["--quick"]).expect("valid").settings.connects, 100);
        let args = parsed(&["--connects", "5000", "--quick", "--only", "connect"]).expect("valid");
        assert_eq!(args.settings.connects, 5_000);
        assert_eq!(args.only, ["connect"]);
        refused(
            &[&["--connects", "0"], &["--connects", "x"], &["--connects"]],
            "--connects needs a number above 0",
        );
    }

    #[test]
    fn a_depth_is_kept_whatever_the_order_of_quick() {
        assert_eq!(parsed(&[]).expect("valid").settings.depth, 64);
        let args = parsed(&["--depth", "16", "--quick"]).expect("valid");
        assert_eq!(args.settings.depth, 16);
        assert!(args.settings.quick);
        refused(
            &[&["--depth", "0"], &["--depth", "many"], &["--depth"]],
            "--depth needs a number above 0",
        );
    }

    #[test]
    fn worker_counts_are_kept_whatever_the_order_of_quick() {
        let args =
            parsed(&["--load-workers", "1", "--server-workers", "3", "--quick"]).expect("valid");
        assert_eq!(args.settings.load_workers, Some(1));
        assert_eq!(args.settings.server_workers, Some(3));
        assert!(args.settings.quick);
        let default = parsed(&[]).expect("valid").settings;
        assert_eq!((default.load_workers, default.server_workers), (None, None));
        refused(
            &[
                &["--load-workers", "0"],
                &["--load-workers", "two"],
                &["--server-workers"],
            ],
            "needs a number of threads above 0",
        );
    }
}
