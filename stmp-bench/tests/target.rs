//! `--target ADDR`: the suite loads a server it did not start — here the quick-start server,
//! in this process — with the quick-start JoinRoom, over TCP and over WebSocket. No timing
//! thresholds: only that every point ran, with calls the server answered as the quick start
//! does.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use quick_start::{Rooms, WS_PATH};
use tokio::process::Command;

/// Debug builds and a busy machine: generous, but bounded.
const LIMIT: Duration = Duration::from_secs(120);

async fn bench(out: &Path, args: &[&str]) -> Output {
    let _ = std::fs::remove_dir_all(out);
    let child = Command::new(env!("CARGO_BIN_EXE_stmp-bench"))
        .args(["--quick", "--no-spin", "--no-pin", "--out"])
        .arg(out)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("stmp-bench starts");
    tokio::time::timeout(LIMIT, child.wait_with_output())
        .await
        .expect("stmp-bench --target finished in time")
        .expect("stmp-bench ran")
}

fn out_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name)
}

fn target_rows(out: &Path) -> Vec<serde_json::Value> {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).expect("json"))
            .expect("results.json parses");
    assert_eq!(json["unary"].as_array().map(Vec::len), Some(0), "{json}");
    json["target"].as_array().expect("target rows").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_the_quick_start_server_over_tcp_and_websocket() {
    let server = quick_start::server(Rooms::new());
    let tcp = server.listen_tcp("127.0.0.1:0").await.unwrap();
    let ws = server.listen_ws("127.0.0.1:0", WS_PATH).await.unwrap();

    // TCP, every point; a bare host:port means TCP.
    let out = out_dir("stmp-bench-target-tcp");
    let output = bench(&out, &["--target", &tcp.to_string()]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let rows = target_rows(&out);
    let points = [
        "1 conn × 1 in flight",
        "1 conn × 64 in flight",
        "64 conns × 1 in flight",
    ];
    assert_eq!(rows.len(), points.len(), "{rows:?}");
    for (row, point) in rows.iter().zip(points) {
        assert_eq!(row["url"], format!("tcp://{tcp}"));
        assert_eq!(row["point_label"], point);
        for key in ["requests", "rps", "p50_ns", "p99_ns"] {
            let value = row["measured"][key].as_f64().unwrap_or(0.0);
            assert!(value > 0.0, "{key} not > 0 in {row}");
        }
        let line = format!("| JoinRoom, {point} | tcp://{tcp} | ");
        assert!(stdout.contains(&line), "no row {line:?} in\n{stdout}");
    }

    // WebSocket, one point, by URL.
    let url = format!("ws://{ws}{WS_PATH}");
    let out = out_dir("stmp-bench-target-ws");
    let output = bench(&out, &["--target", &url, "--point", "multiplexed"]).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rows = target_rows(&out);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["url"], url);
    assert!(rows[0]["measured"]["requests"].as_u64().unwrap_or(0) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_join_room_fails_the_run_with_a_clear_error() {
    let server = stmp::Server::builder().build();
    let tcp = server.listen_tcp("127.0.0.1:0").await.unwrap();
    let out = out_dir("stmp-bench-target-none");
    let output = bench(&out, &["--target", &tcp.to_string(), "--point", "single"]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("tcp://{tcp} JoinRoom 1 conn × 1 in flight")),
        "{stderr}"
    );
}
