//! `--target ADDR`: the unary points against a server that is already running — any STMP 1.0
//! server with the quick-start `RoomService` (stmp-go's, another implementation's, ours) — so
//! implementations can be compared under the same load.
//!
//! The call is `RoomService.JoinRoom`, as the quick-start client makes it. Every connection
//! joins a room of its own (`stmp-bench-<n>`) again and again: the first join creates the
//! room, every later one is a plain request/response that changes nothing and tells nobody,
//! so the load stays one call per call however long it runs.

use serde::Serialize;
use stmp::Method;

use crate::measure::{Call, Measured};
use crate::unary::{Point, drive, spinners_for};
use crate::{Result, Settings};

/// The quick start's `JoinRoom`: the action both sides derive from this name.
pub const JOIN_ROOM: Method = Method::new(
    "stmp.examples.quick_start.RoomService.JoinRoom",
    "stmp.examples.quick_start.JoinRoomInput",
    "stmp.examples.quick_start.RoomModel",
);

/// The quick start's `JoinRoomInput`, field for field.
#[derive(Clone, PartialEq, prost::Message, Serialize, serde::Deserialize)]
pub struct JoinRoomInput {
    /// The room to join.
    #[prost(string, tag = "1")]
    pub name: String,
}

/// The quick start's `RoomModel`, field for field.
#[derive(Clone, PartialEq, prost::Message, Serialize, serde::Deserialize)]
pub struct RoomModel {
    /// The room's name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Its users.
    #[prost(string, repeated, tag = "2")]
    pub users: Vec<String>,
}

/// One row of the target table.
#[derive(Clone, Debug, Serialize)]
pub struct TargetResult {
    /// The URL the load went to.
    pub url: String,
    /// The point.
    pub point: Point,
    /// Its label.
    pub point_label: String,
    /// The figures.
    pub measured: Measured,
}

/// The URL of `addr`: as given when it has a scheme (`tcp://`, `ws://…/quick_start`,
/// `quic://`…), TCP otherwise.
pub fn url(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("tcp://{addr}")
    }
}

/// A caller joining its room on one connection.
#[derive(Clone)]
pub struct JoinRoomCall {
    client: stmp::Client,
    input: JoinRoomInput,
}

impl Call for JoinRoomCall {
    async fn call(&mut self) -> Result<()> {
        let room: RoomModel = self.client.call(&JOIN_ROOM, &self.input).await?;
        if room.name != self.input.name || room.users.is_empty() {
            return Err(format!(
                "JoinRoom({:?}) answered room {:?} with {} users: not the quick-start service",
                self.input.name,
                room.name,
                room.users.len()
            )
            .into());
        }
        Ok(())
    }
}

async fn connect(url: &str) -> Result<stmp::Client> {
    stmp::Client::builder()
        .no_reconnect()
        .connect(url)
        .await
        .map_err(|status| format!("cannot connect to {url}: {status}").into())
}

/// Measures one point against the server at `url`.
pub async fn run_point(url: &str, point: Point, settings: &Settings) -> Result<Measured> {
    let (conns, per_conn) = match point {
        Point::Single => (1, 1),
        Point::Multiplexed => (1, settings.depth),
        Point::Connections => (settings.depth, 1),
    };
    let mut clients = Vec::with_capacity(conns);
    for _ in 0..conns {
        clients.push(connect(url).await?);
    }
    let callers = clients
        .iter()
        .enumerate()
        .flat_map(|(n, client)| {
            std::iter::repeat_n(
                JoinRoomCall {
                    client: client.clone(),
                    input: JoinRoomInput {
                        name: format!("stmp-bench-{n}"),
                    },
                },
                per_conn,
            )
        })
        .collect();
    let measured = drive(callers, settings.warmup, settings.measure).await;
    futures_util::future::join_all(clients.iter().map(stmp::Client::close)).await;
    measured
}

/// The three points against `addr`, each the median of `settings.rounds` rounds.
pub async fn run(addr: &str, settings: &Settings, points: &[Point]) -> Result<Vec<TargetResult>> {
    let url = url(addr);
    let mut results = Vec::new();
    for &point in points {
        let _awake = spinners_for(settings, point);
        let mut rounds = Vec::with_capacity(settings.rounds);
        for _ in 0..settings.rounds {
            let measured = run_point(&url, point, settings)
                .await
                .map_err(|e| format!("{url} JoinRoom {}: {e}", point.label(settings.depth)))?;
            rounds.push(measured);
        }
        let measured = Measured::median(rounds);
        eprintln!(
            "  {url} JoinRoom {:<22} {:>10.0} req/s  p50 {:>9}  p99 {:>9}",
            point.label(settings.depth),
            measured.rps,
            crate::units::duration(measured.p50_ns),
            crate::units::duration(measured.p99_ns),
        );
        results.push(TargetResult {
            url: url.clone(),
            point,
            point_label: point.label(settings.depth),
            measured,
        });
    }
    Ok(results)
}
