//! A `nats-server` child process on loopback, for tests and benchmarks: one node or a routed
//! cluster, on ports the OS picks, restartable on the same ports, killed when dropped.
//!
//! It runs the `nats-server` binary named by the `NATS_SERVER` environment variable, or found
//! on `PATH` or in `/usr/sbin` (Debian: `apt-get install nats-server`).
//!
//! ```no_run
//! use stmp_nats::nats_server::NatsServer;
//!
//! let mut nats = NatsServer::start().unwrap();
//! println!("NATS on {}", nats.url());
//! nats.restart().unwrap(); // same port: clients reconnect by themselves
//! ```

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a server may take to listen (or its routes to connect) before it counts as
/// failed.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// The pause between two readiness polls.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// One `nats-server` process listening on 127.0.0.1.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    ports: Ports,
    /// Other nodes' route URLs (a cluster member).
    routes: Vec<String>,
    cluster_name: Option<String>,
    dir: PathBuf,
    /// Whether JetStream is on, with its file store in `dir` (kept across restarts).
    jetstream: bool,
}

/// The ports a server listens on; 0 until the OS has picked them.
#[derive(Clone, Copy, Debug, Default)]
struct Ports {
    client: u16,
    cluster: Option<u16>,
    monitoring: u16,
}

impl NatsServer {
    /// Starts a single node on OS-picked ports and waits until it accepts clients.
    pub fn start() -> io::Result<NatsServer> {
        NatsServer::spawn(None, Vec::new())
    }

    /// Starts a single node with JetStream (`-js`), its file store in a scratch directory
    /// that survives [`restart`](Self::restart) (and is removed on drop).
    pub fn start_jetstream() -> io::Result<NatsServer> {
        let mut server = NatsServer {
            child: None,
            ports: Ports::default(),
            routes: Vec::new(),
            cluster_name: None,
            dir: scratch_dir()?,
            jetstream: true,
        };
        server.launch()?;
        Ok(server)
    }

    fn spawn(cluster_name: Option<String>, routes: Vec<String>) -> io::Result<NatsServer> {
        let mut server = NatsServer {
            jetstream: false,
            child: None,
            ports: Ports {
                cluster: cluster_name.as_ref().map(|_| 0),
                ..Ports::default()
            },
            routes,
            cluster_name,
            dir: scratch_dir()?,
        };
        server.launch()?;
        Ok(server)
    }

    /// The URL clients connect to: `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.ports.client)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.ports.client
    }

    /// Whether the process is running (between [`stop`](Self::stop) and
    /// [`restart`](Self::restart) it is not).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the process (SIGKILL: a crash, not a clean shutdown) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the process if it runs and starts it again on the same ports (clients, routes,
    /// monitoring), waiting until it accepts clients.
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop();
        self.launch()
    }

    /// The number of routes to other cluster nodes the server has now, from its monitoring
    /// endpoint.
    pub fn routes(&self) -> io::Result<usize> {
        let body = self.monitor("/routez")?;
        json_number(&body, "num_routes")
            .map(|n| n as usize)
            .ok_or_else(|| io::Error::other(format!("no num_routes in /routez: {body}")))
    }

    /// The JSON body of a monitoring endpoint (`/varz`, `/connz?subs=1`, `/routez`, …).
    pub fn monitor(&self, path: &str) -> io::Result<String> {
        let response = http_get(self.ports.monitoring, path)?;
        match response.split_once("\r\n\r\n") {
            Some((head, body)) if head.split(' ').nth(1) == Some("200") => Ok(body.to_owned()),
            _ => Err(io::Error::other(format!("{path}: {response}"))),
        }
    }

    fn launch(&mut self) -> io::Result<()> {
        let ports_dir = self.dir.join("ports");
        let _ = std::fs::remove_dir_all(&ports_dir);
        std::fs::create_dir_all(&ports_dir)?;
        let port_arg = |port: u16| {
            if port == 0 {
                "-1".to_string()
            } else {
                port.to_string()
            }
        };
        let binary = std::env::var_os("NATS_SERVER").unwrap_or_else(default_binary);
        let mut command = Command::new(binary);
        command
            .args(["-a", "127.0.0.1", "-p", &port_arg(self.ports.client)])
            .args(["-m", &port_arg(self.ports.monitoring)])
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .arg("--log")
            .arg(self.dir.join("nats-server.log"));
        if self.jetstream {
            command
                .arg("-js")
                .arg("--store_dir")
                .arg(self.dir.join("jetstream"));
        }
        if let (Some(name), Some(cluster)) = (&self.cluster_name, self.ports.cluster) {
            command
                .args(["--cluster_name", name])
                .arg("--cluster")
                .arg(format!("nats://127.0.0.1:{}", port_arg(cluster)));
            if !self.routes.is_empty() {
                command.arg("--routes").arg(self.routes.join(","));
            }
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot run nats-server: {e}")))?;
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        // The server writes its ports file once every listener is up.
        let ports = loop {
            if let Some(ports) = read_ports_file(&ports_dir)? {
                break ports;
            }
            self.check_alive()?;
            wait_or_time_out(deadline, "nats-server did not write its ports file")?;
        };
        self.ports = ports;
        // And a client that connects gets the INFO line.
        loop {
            if greets(self.ports.client) {
                return Ok(());
            }
            self.check_alive()?;
            wait_or_time_out(deadline, "nats-server does not greet clients")?;
        }
    }

    fn check_alive(&mut self) -> io::Result<()> {
        let exited = match &mut self.child {
            Some(child) => child.try_wait()?,
            None => return Err(io::Error::other("nats-server is stopped")),
        };
        match exited {
            None => Ok(()),
            Some(status) => {
                self.child = None;
                let log =
                    std::fs::read_to_string(self.dir.join("nats-server.log")).unwrap_or_default();
                Err(io::Error::other(format!(
                    "nats-server exited with {status}: {log}"
                )))
            }
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A cluster of `nats-server` nodes routed to each other on 127.0.0.1.
///
/// ```no_run
/// use stmp_nats::nats_server::NatsCluster;
///
/// let cluster = NatsCluster::start(3).unwrap();
/// let urls: Vec<String> = cluster.nodes().iter().map(|node| node.url()).collect();
/// ```
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `size` nodes (the first seeds the others' routes) and waits until every node
    /// has a route to every other.
    pub fn start(size: usize) -> io::Result<NatsCluster> {
        let name = format!("stmp-test-{}", fastrand::u64(..));
        let seed = NatsServer::spawn(Some(name.clone()), Vec::new())?;
        let seed_route = format!(
            "nats://127.0.0.1:{}",
            seed.ports
                .cluster
                .expect("a cluster node has a cluster port")
        );
        let mut nodes = vec![seed];
        for _ in 1..size {
            nodes.push(NatsServer::spawn(
                Some(name.clone()),
                vec![seed_route.clone()],
            )?);
        }
        // The seed routes back to whoever joined it: restarted alone, it needs the others.
        let others: Vec<String> = nodes[1..]
            .iter()
            .filter_map(|node| node.ports.cluster)
            .map(|port| format!("nats://127.0.0.1:{port}"))
            .collect();
        nodes[0].routes = others;
        let cluster = NatsCluster { nodes };
        cluster.wait_routed()?;
        Ok(cluster)
    }

    /// The nodes.
    pub fn nodes(&self) -> &[NatsServer] {
        &self.nodes
    }

    /// A node, to stop or restart.
    pub fn node_mut(&mut self, index: usize) -> &mut NatsServer {
        &mut self.nodes[index]
    }

    /// Waits until every running node has a route to every other running node.
    pub fn wait_routed(&self) -> io::Result<()> {
        let running: Vec<&NatsServer> = self.nodes.iter().filter(|n| n.is_running()).collect();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let mut routed = true;
            for node in &running {
                routed &= node.routes()? >= running.len() - 1;
            }
            if routed {
                return Ok(());
            }
            wait_or_time_out(deadline, "the NATS cluster's routes did not connect")?;
        }
    }
}

/// `nats-server` from `PATH`, or where Debian installs it (`/usr/sbin`, which a user's `PATH`
/// may lack).
fn default_binary() -> std::ffi::OsString {
    let debian = Path::new("/usr/sbin/nats-server");
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| dir.join("nats-server").is_file())
    });
    if !on_path && debian.is_file() {
        debian.into()
    } else {
        "nats-server".into()
    }
}

fn wait_or_time_out(deadline: Instant, what: &str) -> io::Result<()> {
    if Instant::now() >= deadline {
        return Err(io::Error::new(io::ErrorKind::TimedOut, what.to_string()));
    }
    std::thread::sleep(POLL_INTERVAL);
    Ok(())
}

fn scratch_dir() -> io::Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "stmp-nats-server-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The ports from `nats-server_<pid>.ports`: `{"nats":["nats://127.0.0.1:P"],
/// "cluster":["nats://127.0.0.1:Q"],"monitoring":["http://127.0.0.1:R"]}`.
fn read_ports_file(dir: &Path) -> io::Result<Option<Ports>> {
    let Some(entry) = std::fs::read_dir(dir)?.next() else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(entry?.path())?;
    let port_of = |key: &str| -> Option<u16> {
        let start = text.find(&format!("\"{key}\":[\""))? + key.len() + 5;
        let url = &text[start..];
        let url = &url[..url.find('"')?];
        url.rsplit(':').next()?.trim_end_matches('/').parse().ok()
    };
    match (port_of("nats"), port_of("monitoring")) {
        (Some(client), Some(monitoring)) => Ok(Some(Ports {
            client,
            cluster: port_of("cluster"),
            monitoring,
        })),
        // Written but not complete yet.
        _ => Ok(None),
    }
}

fn greets(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut first = [0u8; 4];
    stream.read_exact(&mut first).is_ok() && &first == b"INFO"
}

fn http_get(port: u16, path: &str) -> io::Result<String> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        // HTTP/1.0: the body is never chunked, it ends when the server closes.
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// The number after `"key":` in a JSON text.
fn json_number(text: &str, key: &str) -> Option<u64> {
    let rest = &text[text.find(&format!("\"{key}\""))? + key.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_files_and_routez_parse() {
        let dir = scratch_dir().unwrap();
        std::fs::write(
            dir.join("nats-server_1.ports"),
            r#"{"nats":["nats://127.0.0.1:4222"],"monitoring":["http://127.0.0.1:8222"],"cluster":["nats://127.0.0.1:6222"]}"#,
        )
        .unwrap();
        let ports = read_ports_file(&dir).unwrap().unwrap();
        assert_eq!(
            (ports.client, ports.cluster, ports.monitoring),
            (4222, Some(6222), 8222)
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            json_number(r#"{"a":1, "num_routes": 2,"#, "num_routes"),
            Some(2)
        );
        assert_eq!(json_number(r#"{"num_routes":"x"}"#, "num_routes"), None);
    }
}
