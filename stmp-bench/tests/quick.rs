//! Smoke test: `stmp-bench --quick` runs to the end (server processes and all), and its table
//! has every row with figures above zero. No thresholds: figures from a shared CI machine mean
//! nothing.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Debug builds and a busy machine: generous, but bounded.
const LIMIT: Duration = Duration::from_secs(300);

#[test]
fn quick_run_has_every_row() {
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("stmp-bench-quick");
    let _ = std::fs::remove_dir_all(&out);
    let mut child = Command::new(env!("CARGO_BIN_EXE_stmp-bench"))
        .arg("--quick")
        // Two passes of the fan-out, so that the passes' median and range are exercised.
        .args(["--fanout-passes", "2"])
        .arg("--out")
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("stmp-bench starts");
    let began = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if began.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("stmp-bench --quick took more than {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = std::io::read_to_string(child.stdout.take().expect("stdout")).expect("utf-8");
    assert!(
        status.success(),
        "stmp-bench --quick failed: {status}\n{stdout}"
    );

    let markdown = std::fs::read_to_string(out.join("results.md")).expect("results.md");
    assert_eq!(
        markdown.trim(),
        stdout.trim(),
        "stdout and results.md differ"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).expect("json"))
            .expect("results.json parses");

    // Unary: 11 systems × 2 payloads × 3 points, each row with positive figures.
    let systems = [
        "stmp tcp",
        "stmp tls",
        "stmp ws",
        "stmp wss",
        "stmp tcp+gzip",
        "stmp ws+deflate",
        "stmp quic",
        "tonic grpc",
        "socketioxide",
        "raw tcp echo",
        "raw quic echo",
    ];
    let points = [
        "1 conn × 1 in flight",
        "1 conn × 64 in flight",
        "64 conns × 1 in flight",
    ];
    for payload in [32, 1024] {
        for point in points {
            for system in systems {
                let row = format!("| unary {payload} B, {point} | {system} | ");
                assert!(markdown.contains(&row), "no row {row:?} in\n{markdown}");
            }
        }
    }
    let unary = json["unary"].as_array().expect("unary rows");
    assert_eq!(unary.len(), systems.len() * 2 * points.len());
    for row in unary {
        let m = &row["measured"];
        for key in ["requests", "rps", "p50_ns", "p99_ns", "cpu_ns_per_call"] {
            assert!(
                m[key].as_f64().unwrap_or(0.0) > 0.0,
                "{key} not > 0 in {row}"
            );
        }
    }

    // Fan-out: stmp over TCP and WebSocket, stmp's server to raw readers, and the raw baseline.
    for system in [
        "stmp tcp",
        "stmp ws",
        "socketioxide",
        "stmp tcp to raw readers",
        "raw tcp",
    ] {
        let cell = format!("| {system} |");
        assert!(
            markdown
                .lines()
                .any(|l| l.starts_with("| fan-out to 200 clients,") && l.contains(&cell)),
            "no fan-out row for {system} in\n{markdown}"
        );
        let found = json["fanout"]
            .as_array()
            .expect("fan-out rows")
            .iter()
            .find(|r| r["system"] == system)
            .unwrap_or_else(|| panic!("no fan-out row for {system}"));
        for key in ["p50_ns", "max_ns", "call_ns", "frame_bytes"] {
            assert!(
                found[key].as_f64().unwrap_or(0.0) > 0.0,
                "{key} not > 0 in {found}"
            );
        }
        assert_eq!(found["dropped"], 0, "events dropped: {found}");
        assert_eq!(found["encodings"], 1, "{found}");
        let passes = found["pass_p50_ns"].as_array().expect("each pass's time");
        assert_eq!(passes.len(), 2, "{found}");
        assert!(
            passes.contains(&found["p50_ns"]),
            "the row is one of its passes: {found}"
        );
    }
    assert!(
        markdown.contains("its req/s, at")
            && markdown.contains("; stmp ws took ")
            && markdown.contains("its conn/s, at")
            && markdown.contains("its memory per connection"),
        "socketioxide's rows are not compared with stmp ws's in\n{markdown}"
    );
    assert!(
        markdown.contains("the median of 2 passes (") && markdown.contains("pass by pass"),
        "no passes in\n{markdown}"
    );

    // Cluster: the fan-out through three nodes on NATS, and what the cluster sustains.
    let cluster = json["fanout"]
        .as_array()
        .expect("fan-out rows")
        .iter()
        .find(|r| r["system"] == "stmp tcp, 3 nodes on NATS")
        .unwrap_or_else(|| panic!("no cluster fan-out row in {json}"));
    assert_eq!(cluster["clients"], 200, "{cluster}");
    assert!(cluster["p50_ns"].as_f64().unwrap_or(0.0) > 0.0, "{cluster}");
    assert_eq!(cluster["dropped"], 0, "events dropped: {cluster}");
    // What one node and the cluster sustain, side by side.
    for (system, nodes) in [("stmp tcp", 1), ("stmp tcp, 3 nodes on NATS", 3)] {
        let throughput = json["throughput"]
            .as_array()
            .expect("throughput rows")
            .iter()
            .find(|t| t["system"] == system)
            .unwrap_or_else(|| panic!("no throughput row for {system} in {json}"));
        assert_eq!(throughput["nodes"], nodes, "{throughput}");
        assert_eq!(throughput["clients"], 200, "{throughput}");
        assert!(
            throughput["broadcasts_per_s"].as_f64().unwrap_or(0.0) > 0.0,
            "{throughput}"
        );
        assert_eq!(throughput["missed"], 0, "{throughput}");
        let row =
            format!("| broadcasts to everyone, 200 clients over {nodes} node(s) | {system} |");
        assert!(markdown.contains(&row), "no row {row:?} in\n{markdown}");
    }
    assert!(
        markdown.contains("the time of one node |") && markdown.contains("one node's |"),
        "no ratio to one node in\n{markdown}"
    );

    // Connection setup: every transport's handshake, tonic's and the raw echoes', each row
    // with every figure above zero.
    let connect_systems = [
        "stmp tcp",
        "stmp tls",
        "stmp ws",
        "stmp wss",
        "stmp tcp+gzip",
        "stmp quic",
        "tonic grpc",
        "socketioxide",
        "raw tcp echo",
        "raw quic echo",
    ];
    for system in connect_systems {
        let row = format!("| connect, 1 call, close: 100 conns, 64 at a time | {system} | ");
        assert!(markdown.contains(&row), "no row {row:?} in\n{markdown}");
    }
    let connect = json["connect"].as_array().expect("connect rows");
    assert_eq!(connect.len(), connect_systems.len(), "{connect:?}");
    for row in connect {
        assert_eq!(row["connections"], 100, "{row}");
        for key in [
            "per_second",
            "p50_ns",
            "p99_ns",
            "server_cpu_ns",
            "client_cpu_ns",
        ] {
            assert!(
                row[key].as_f64().unwrap_or(0.0) > 0.0,
                "{key} not > 0 in {row}"
            );
        }
    }
    assert!(
        markdown.contains("| stmp tcp | ") && markdown.contains(" conn/s, "),
        "no connection ratios in\n{markdown}"
    );

    // Memory: stmp tcp, tls, ws, wss, tcp+gzip, ws+deflate, quic, tonic, socketioxide.
    for system in [
        "stmp tcp",
        "stmp tls",
        "stmp ws",
        "stmp wss",
        "stmp tcp+gzip",
        "stmp ws+deflate",
        "stmp quic",
        "tonic grpc",
        "socketioxide",
    ] {
        let row = format!("| idle memory, 200 conns | {system} | ");
        assert!(markdown.contains(&row), "no row {row:?} in\n{markdown}");
    }
    for row in json["memory"].as_array().expect("memory rows") {
        assert!(
            row["per_connection_kib"].as_f64().unwrap_or(0.0) > 0.0,
            "{row}"
        );
    }
    assert_eq!(json["memory"].as_array().map(Vec::len), Some(9));
    // What a burst leaves behind: measured for stmp's rows, not for the peers'.
    for row in json["memory"].as_array().expect("memory rows") {
        let burst = &row["after_burst"];
        match row["system"].as_str() {
            Some("Tonic" | "SocketIo") => assert!(burst.is_null(), "{row}"),
            _ => {
                assert!(burst["heap_before_kib"].as_u64().unwrap_or(0) > 0, "{row}");
                assert!(burst["tasks_left"].is_i64(), "{row}");
            }
        }
    }
    assert!(markdown.contains("| heap after a burst, 200 conns | stmp tcp | "));

    // Targets: issue 16's eight, idle memory in two rows (tcp, ws), each measured.
    let targets = json["targets"].as_array().expect("targets");
    assert_eq!(targets.len(), 9, "{targets:?}");
    for target in targets {
        assert!(target["met"].is_boolean(), "target not measured: {target}");
    }
    assert!(markdown.contains("### Targets (issue 16)"));
    // The two targets against another system say what a baseline without stmp reaches there.
    for (system, ceiling) in [
        ("stmp quic", "quinn's own echo (raw quic echo, pipelined) "),
        ("10× tonic", "raw tcp echo (pipelined) "),
    ] {
        let target = targets
            .iter()
            .find(|t| t["target"].as_str().is_some_and(|t| t.contains(system)))
            .unwrap_or_else(|| panic!("the {system} target"));
        assert!(
            target["measured"]
                .as_str()
                .is_some_and(|m| m.contains(ceiling) && m.contains(" req/s = ")),
            "the {system} target does not give its baseline's ratio: {target}"
        );
    }
}
