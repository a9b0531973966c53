//! The stmp benchmark suite: stmp against tonic and the raw-TCP limit, side by side in one run.
//!
//! The `stmp-bench` binary is both sides: run plainly it is the load generator, which starts
//! itself again as `stmp-bench serve <kind>` for each server (a separate process, on loopback,
//! port 0), drives it, reads its CPU time and resident memory from `/proc`, and kills it at the
//! end. See the crate's README for how to run it and how to read the table.
//!
//! - [`unary`]: request/response at three points (1 in flight on 1 connection, 64 in flight
//!   on 1 connection, 64 connections × 1) for every [`System`].
//! - [`fanout`]: one event to N connected clients, against a raw tokio fan-out.
//! - [`cluster`]: the same through three stmp nodes on NATS, and the broadcasts per second
//!   such a cluster sustains.
//! - [`memory`]: the server's resident memory per idle connection.
//! - [`target`]: `--target ADDR`, the quick-start `JoinRoom` against a running server.
//! - [`report`]: the Markdown table and the JSON.
//! - [`in_process`]: server and client in one process, for the benches of `benches/`.
//!
//! The modules form layers with no cycles: [`measure`], [`units`] and [`systems`] at the
//! bottom, with [`in_process`]; [`child`] (the server process) and [`serve`] (its side) above them; [`raw`], then
//! [`unary`], [`target`], [`fanout`] and [`memory`], then [`cluster`]; [`report`] on top.

pub mod child;
pub mod cluster;
pub mod connect;
pub mod fanout;
pub mod in_process;
pub mod measure;
pub mod memory;
pub mod raw;
pub mod report;
pub mod serve;
pub mod socketio;
pub mod systems;
pub mod target;
pub mod unary;
pub mod units;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use stmp::Method;
use stmp::wire::{Header, Notify, Packet};

pub use systems::System;

/// The tonic echo service, generated from `proto/echo.proto` by build.rs (protox, no protoc).
pub mod pb {
    tonic::include_proto!("stmp.bench");
}

/// The request and response of every unary point: the same bytes for every system.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize, serde::Deserialize)]
pub struct Echo {
    /// Opaque bytes, echoed back.
    #[prost(bytes = "vec", tag = "1")]
    pub payload: Vec<u8>,
}

/// How many different payloads each caller of a unary point takes turns with: the 64 callers
/// of a point then send 512 different messages in turn, more than a gzip stream's 32 KiB
/// window holds at 1 KiB each, so no call finds its own payload there to copy.
pub const PAYLOADS_PER_CALLER: usize = 8;

/// Echo payload number `variant` of `len` bytes: chat messages as JSON, from a small
/// vocabulary picked by a fixed pseudo-random sequence, so every run sends the same bytes.
/// Text like this is what the compressed rows (gzip, permessage-deflate) meet in use: a
/// repeated byte would compress to almost nothing, and one payload sent over and over would
/// let a compressing stream copy each call from the last.
pub fn echo_payload(len: usize, variant: usize) -> Vec<u8> {
    const WORDS: [&str; 24] = [
        "hello", "room", "lobby", "see", "you", "at", "the", "meeting", "tomorrow", "ok", "thanks",
        "who", "is", "joining", "today", "game", "starts", "soon", "ready", "for", "deploy",
        "review", "please", "done",
    ];
    // Never 0, which xorshift would keep.
    let mut state: u32 = (0x2545_F491 ^ (variant as u32).wrapping_mul(0x9E37_79B9)) | 1;
    let mut next = |below: usize| {
        // xorshift32: the same sequence on every machine.
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state as usize % below
    };
    let mut text = String::with_capacity(len + 128);
    // Message ids from a random start, so that even 32 B payloads differ.
    let mut id = 100_000_000 + next(900_000_000);
    while text.len() < len {
        id += 1 + next(7);
        text.push_str(&format!(
            "{{\"id\":{id},\"room\":\"room-{}\",\"user\":\"user{}\",\"text\":\"",
            next(8),
            next(500)
        ));
        for word in 0..3 + next(9) {
            if word > 0 {
                text.push(' ');
            }
            text.push_str(WORDS[next(WORDS.len())]);
        }
        text.push_str("\"},");
    }
    let mut bytes = text.into_bytes();
    bytes.truncate(len);
    bytes
}

/// The payloads caller number `caller` of a unary point takes turns with.
pub fn echo_payloads(len: usize, caller: usize) -> Vec<Vec<u8>> {
    (0..PAYLOADS_PER_CALLER)
        .map(|turn| echo_payload(len, caller * PAYLOADS_PER_CALLER + turn))
        .collect()
}

/// The event of the fan-out benchmark.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize, serde::Deserialize)]
pub struct Event {
    /// The round it belongs to. Fixed-width, so that every event of a run (every seq but 0,
    /// which proto3 leaves out) has the same length and layout on the wire: the raw readers
    /// split frames by that length and find the seq at its offset.
    #[prost(fixed64, tag = "1")]
    pub seq: u64,
    /// Opaque bytes.
    #[prost(bytes = "vec", tag = "2")]
    pub payload: Vec<u8>,
}

/// The echo method, the same name as the tonic service's.
pub const ECHO: Method = Method::new(
    "stmp.bench.EchoService.Echo",
    "stmp.bench.Echo",
    "stmp.bench.Echo",
);

/// The event broadcast in the fan-out benchmark.
pub const EVENT: Method = Method::new(
    "stmp.bench.Events.Tick",
    "stmp.bench.Event",
    "stmp.bench.Event",
);

/// The payload size of the fan-out event.
pub const EVENT_PAYLOAD: usize = 32;

/// The fan-out event of round `seq`; every seq a run uses is above 0 (see [`Event::seq`]).
pub fn event(seq: u64) -> Event {
    Event {
        seq,
        payload: vec![0xA5; EVENT_PAYLOAD],
    }
}

/// `event` as the notify of [`EVENT`] that stmp sends.
fn notify_packet(event: &Event) -> Packet {
    Packet::Notify(Notify {
        action: EVENT.wire_action(),
        header: Header::new(),
        payload: Bytes::from(prost::Message::encode_to_vec(event)),
    })
}

/// The exact bytes stmp writes on a TCP stream for `event` as a notify of [`EVENT`]: what the
/// raw fan-out baseline writes to each socket.
pub fn notify_frame(event: &Event) -> Bytes {
    let packet = notify_packet(event);
    let mut out = BytesMut::with_capacity(packet.encoded_stream_len());
    packet.encode_stream(&mut out);
    out.freeze()
}

/// The length of every fan-out event's frame on a TCP stream (any seq but 0).
pub fn event_frame_len() -> usize {
    notify_frame(&event(1)).len()
}

/// The bytes of every fan-out event on a WebSocket connection (any seq but 0): one binary
/// message from the server, so a two-byte frame header (short and unmasked) and the packet
/// in its message form.
pub fn event_message_len() -> usize {
    let mut message = BytesMut::new();
    notify_packet(&event(1)).encode_message(&mut message);
    2 + message.len()
}

/// The seq of the event whose frame is `frame` ([`event_frame_len`] bytes): the readers that
/// do not decode stmp find it where the fixed-width field sits, so they count the round's
/// events as stmp's listeners do, by seq.
pub fn event_seq_in(frame: &[u8]) -> u64 {
    // The event is the frame's tail: the seq's tag byte, then its 8 bytes, then the payload
    // field (tag, length, payload).
    let seq = frame.len().checked_sub(2 + EVENT_PAYLOAD).and_then(|end| {
        let bytes = frame.get(end.checked_sub(8)?..end)?;
        <[u8; 8]>::try_from(bytes).ok()
    });
    // Seq 0 is never a round's: a frame too short to hold one counts for nothing.
    u64::from_le_bytes(seq.unwrap_or_default())
}

/// Wall-clock time in nanoseconds since the epoch: comparable between the load process and
/// the server process (both on this machine).
pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// How long each part of the suite runs.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Settings {
    /// `--quick`: tiny durations and N, for CI's smoke test.
    pub quick: bool,
    /// Warm-up of each unary point, not measured.
    pub warmup: Duration,
    /// Measured time of each unary point, per round.
    pub measure: Duration,
    /// Rounds of each unary point; the systems take turns, and the median round counts.
    pub rounds: usize,
    /// Fan-out sizes.
    pub fanout: Vec<usize>,
    /// Broadcast rounds at each fan-out size (the median is reported).
    pub fanout_rounds: usize,
    /// Passes of the whole fan-out comparison (stmp, raw readers, raw): each row reports its
    /// median pass, and the target its ratio pass by pass, as one pass is not enough to tell
    /// the systems apart on a noisy machine.
    pub fanout_passes: usize,
    /// Idle connection counts of the memory benchmark.
    pub idle: Vec<usize>,
    /// Connections each system opens, uses once and closes in each round of the connection
    /// setup part ([`Settings::depth`] of them at a time).
    pub connects: usize,
    /// In-flight depth of the "64 in flight" points.
    pub depth: usize,
    /// Keep idle CPUs from halting with nice-19 spinners (see [`child::Spinners`]).
    pub spin: bool,
    /// Pin the servers to one CPU and the load generator to another for the 1-in-flight
    /// points (see [`child::pin_for_latency`]).
    pub pin: bool,
    /// Worker threads of the load generator's runtime (`--load-workers`); `None`: tokio's
    /// default, one per CPU.
    pub load_workers: Option<usize>,
    /// Worker threads of each server process's runtime (`--server-workers`); `None`: one per
    /// CPU.
    pub server_workers: Option<usize>,
}

impl Settings {
    /// The full run: a few minutes on two cores.
    pub fn full() -> Settings {
        Settings {
            quick: false,
            warmup: Duration::from_millis(200),
            measure: Duration::from_millis(700),
            rounds: 3,
            fanout: vec![1_000, 10_000],
            fanout_rounds: 30,
            fanout_passes: 3,
            idle: vec![1_000, 10_000],
            connects: 2_000,
            depth: 64,
            spin: true,
            pin: true,
            load_workers: None,
            server_workers: None,
        }
    }

    /// `--quick`: well under a minute, debug or release.
    pub fn quick() -> Settings {
        Settings {
            quick: true,
            warmup: Duration::from_millis(100),
            measure: Duration::from_millis(300),
            rounds: 1,
            fanout: vec![200],
            fanout_rounds: 5,
            fanout_passes: 1,
            idle: vec![200],
            connects: 100,
            depth: 64,
            spin: true,
            pin: true,
            load_workers: None,
            server_workers: None,
        }
    }
}

/// Errors of the load generator: a message is enough.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// A result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn echo_payloads_are_different_texts_of_the_length_asked_that_compress_like_text() {
        for len in [0, 1, 32, 1024, 4096] {
            let payload = echo_payload(len, 3);
            assert_eq!(payload.len(), len);
            assert!(payload.is_ascii());
            assert_eq!(
                payload,
                echo_payload(len, 3),
                "the same bytes on every call"
            );
        }
        let turns: std::collections::HashSet<Vec<u8>> = (0..64)
            .flat_map(|caller| echo_payloads(32, caller))
            .collect();
        assert_eq!(
            turns.len(),
            64 * PAYLOADS_PER_CALLER,
            "every payload differs"
        );
        let payload = echo_payload(1024, 0);
        let mut deflater =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        deflater.write_all(&payload).unwrap();
        let deflated = deflater.finish().unwrap().len();
        // Chat JSON shrinks two to three times without a window; one repeated byte would
        // shrink a hundred.
        assert!(
            (1024 / 6..1024 / 2).contains(&deflated),
            "1 KiB deflated to {deflated} B"
        );
    }
}
