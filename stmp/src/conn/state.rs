//! The decisions of one connection, without I/O: what a packet from the peer asks for, when
//! the heartbeat pings or gives up, how the close handshake runs, and which requests get a
//! handler slot and a share of the in-flight budgets.
//!
//! Shaped like quinn-proto's `Connection`: the engine feeds it events (`handle_*`) and
//! commands (`close`, `pause_reading`), each with the current time, and carries out the
//! [`Action`] it returns; it asks [`ConnState::heartbeat_at`] and
//! [`ConnState::close_deadline`] when to call back with [`ConnState::handle_timeout`]. Time is passed in, never read, so the heartbeat and the close
//! handshake are tested on virtual time without sockets or a runtime.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::drain::Drain;
use bytes::Bytes;

use super::budget::{ConnBytes, HeldBytes, InFlight, NoRoom, Reservation};
use super::engine::EngineConfig;
use crate::stats::Counters;
use crate::wire::{Header, Notify, Packet, Request, Response};
use crate::{Code, Status};

/// What the engine does next.
#[derive(Debug)]
pub(crate) enum Action {
    /// Nothing.
    Idle,
    /// Queue this answer (Pong, a refused request); while the send queue has no room for it,
    /// stop reading ([`ConnState::pause_reading`]) rather than drop it.
    Reply(Packet),
    /// Send this control packet (Ping, Close) even through a full send queue: it costs no room.
    Signal(Packet),
    /// Run the request's handler; what it holds is given back when the handler has answered.
    Handle(Request, Held),
    /// Hand the notify to the listeners; its bytes are held until they are done with it.
    Deliver(Notify, Held),
    /// Hand the response to the call that waits for it.
    Complete(Response),
    /// The connection is over.
    End(Ending),
}

/// Why a connection ended.
#[derive(Debug)]
pub(crate) struct Ending {
    pub(crate) status: Status,
    /// Whether a Close still has to go to the peer.
    pub(crate) send_close: bool,
}

/// What a dispatched request or notify holds until its handler or listener is done: a
/// handler slot (requests only) and its bytes in the connection's and the server's budgets.
#[derive(Debug)]
pub(crate) struct Held {
    slot: Option<Reservation>,
    _bytes: HeldBytes,
}

impl Held {
    /// Whether this request's handler is the only one of its connection running.
    pub(crate) fn handler_alone(&self) -> bool {
        self.slot.as_ref().is_some_and(Reservation::is_alone)
    }
}

/// The close handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Closing {
    Open,
    /// This side sent Close and waits for the peer's until the deadline.
    Sent {
        deadline: Instant,
    },
}

/// One connection's protocol state.
///
/// `repr(C)`, the fields every packet reads or writes first: with thousands of connections
/// each packet finds the state out of the cache, and these then share one cache line.
#[repr(C)]
pub(crate) struct ConnState {
    last_read: Instant,
    /// When the heartbeat looks at the silence next. Moved only by the heartbeat itself and
    /// by resumed reading, never per packet, so the engine's timer is not re-armed per packet.
    heartbeat_at: Instant,
    closing: Closing,
    /// The bytes its handlers and listeners hold, in its budget and the server's.
    bytes: Arc<ConnBytes>,
    pinged: bool,
    /// Reading paused by this side's backpressure: silence proves nothing then.
    paused: bool,
    /// `heartbeat_at` moved since the engine last asked.
    heartbeat_moved: bool,
    read_timeout: Duration,
    close_grace: Duration,
    max_concurrent_requests: usize,
    /// Handlers running, counted one unit each.
    handler_slots: Arc<InFlight>,
    counters: Arc<Counters>,
    /// Once cancelled, new requests are answered `ServerShutdown`.
    draining: Drain,
    /// The status of a close this side asked for.
    requested: Option<Status>,
}

impl ConnState {
    pub(crate) fn new(
        config: &EngineConfig,
        counters: Arc<Counters>,
        draining: Drain,
        now: Instant,
    ) -> Self {
        ConnState {
            read_timeout: config.read_timeout,
            close_grace: config.close_grace,
            max_concurrent_requests: config.max_concurrent_requests,
            handler_slots: Arc::new(InFlight::new(config.max_concurrent_requests)),
            bytes: ConnBytes::new(config.conn_in_flight_bytes, counters.in_flight.clone()),
            counters,
            draining,
            last_read: now,
            pinged: false,
            heartbeat_at: now + config.read_timeout / 2,
            paused: false,
            heartbeat_moved: false,
            closing: Closing::Open,
            requested: None,
        }
    }

    /// The handler slots, one unit per handler running: how busy the connection is.
    pub(crate) fn handler_slots(&self) -> Arc<InFlight> {
        self.handler_slots.clone()
    }

    /// A packet arrived from the peer.
    pub(crate) fn handle_packet(&mut self, now: Instant, packet: Packet) -> Action {
        self.last_read = now;
        self.pinged = false;
        match packet {
            Packet::Ping => Action::Reply(Packet::Pong),
            Packet::Pong => Action::Idle,
            // After our Close nothing more is written, so nothing is started that would
            // answer: the peer's calls fail when our Close reaches it.
            Packet::Request(_) | Packet::Notify(_) if self.is_closing() => Action::Idle,
            Packet::Request(request) => self.admit_request(request),
            Packet::Notify(notify) => {
                let cost = notify.payload.len() + header_cost(&notify.header);
                match self.reserve(cost) {
                    Ok(bytes) => Action::Deliver(
                        notify,
                        Held {
                            slot: None,
                            _bytes: bytes,
                        },
                    ),
                    Err(status) => {
                        Counters::count(&self.counters.requests_shed);
                        tracing::debug!(%status, "dropping a notify");
                        Action::Idle
                    }
                }
            }
            Packet::Response(response) => Action::Complete(response),
            Packet::Close(close) => Action::End(Ending {
                status: Status::new(close.status, close.reason),
                // The peer's Close is answered unless it answers ours.
                send_close: self.closing == Closing::Open,
            }),
        }
    }

    fn admit_request(&mut self, request: Request) -> Action {
        if self.draining.is_draining() {
            let status = Status::server_shutdown("the server is shutting down");
            return Action::Reply(error_response(request.mid, status));
        }
        let Some(slot) = self.handler_slots.reserve(1) else {
            Counters::count(&self.counters.requests_rejected);
            let status = Status::too_many_requests(format!(
                "more than {} requests in flight on this connection",
                self.max_concurrent_requests
            ));
            return Action::Reply(error_response(request.mid, status));
        };
        let cost = request.payload.len() + header_cost(&request.header);
        match self.reserve(cost) {
            Ok(bytes) => Action::Handle(
                request,
                Held {
                    slot: Some(slot),
                    _bytes: bytes,
                },
            ),
            Err(status) => {
                Counters::count(&self.counters.requests_shed);
                Action::Reply(error_response(request.mid, status))
            }
        }
    }

    /// Reserves a packet's bytes in the connection's budget and the server's.
    fn reserve(&self, bytes: usize) -> Result<HeldBytes, Status> {
        self.bytes.reserve(bytes).map_err(|full| match full {
            NoRoom::Conn(limit) => Status::too_many_requests(format!(
                "this connection holds its limit of {limit} request bytes in flight"
            )),
            NoRoom::Server(limit) => Status::too_many_requests(format!(
                "the server holds its limit of {limit} request bytes in flight"
            )),
        })
    }

    /// The peer's stream ended (`None`) or failed to decode or to read (`Some`).
    pub(crate) fn handle_read_end(&mut self, error: Option<Status>) -> Ending {
        match error {
            // A network error cannot be answered; bad bytes get a Close.
            Some(status) => Ending {
                send_close: status.code() != Code::NetworkError,
                status,
            },
            None if self.is_closing() => Ending {
                status: self.requested_status(),
                send_close: false,
            },
            None => Ending {
                status: Status::network_error("connection closed by the peer"),
                send_close: true,
            },
        }
    }

    /// The writer failed: nothing more can reach the peer.
    pub(crate) fn handle_write_failed(&mut self, status: Status) -> Ending {
        Ending {
            status,
            send_close: false,
        }
    }

    /// This side ends the connection with `status`: Close goes out, and the peer's Close is
    /// awaited for the close grace. A second request changes nothing.
    pub(crate) fn close(&mut self, now: Instant, status: Status) -> Action {
        if self.is_closing() {
            return Action::Idle;
        }
        let close = Packet::close(status.code(), status.message());
        self.requested = Some(status);
        self.closing = Closing::Sent {
            deadline: now + self.close_grace,
        };
        Action::Signal(close)
    }

    /// Whether this side has sent its Close.
    pub(crate) fn is_closing(&self) -> bool {
        self.closing != Closing::Open
    }

    /// Reading stops until an answer or a notify finds room ([`Action::Reply`]).
    pub(crate) fn pause_reading(&mut self) {
        self.paused = true;
    }

    /// Reading goes on; the time spent not reading was this side's doing, not the peer's.
    pub(crate) fn resume_reading(&mut self, now: Instant) {
        self.paused = false;
        self.last_read = now;
        self.pinged = false;
        self.move_heartbeat(now + self.read_timeout / 2);
    }

    pub(crate) fn is_reading_paused(&self) -> bool {
        self.paused
    }

    /// When the heartbeat wants [`handle_timeout`](Self::handle_timeout) called.
    pub(crate) fn heartbeat_at(&self) -> Instant {
        self.heartbeat_at
    }

    /// The heartbeat's new deadline, once after each time it moved: the engine re-arms its
    /// timer then, and packets never move it.
    pub(crate) fn take_heartbeat_move(&mut self) -> Option<Instant> {
        std::mem::take(&mut self.heartbeat_moved).then_some(self.heartbeat_at)
    }

    fn move_heartbeat(&mut self, at: Instant) {
        self.heartbeat_at = at;
        self.heartbeat_moved = true;
    }

    /// When a close this side started gives up on the peer's Close.
    pub(crate) fn close_deadline(&self) -> Option<Instant> {
        match self.closing {
            Closing::Open => None,
            Closing::Sent { deadline } => Some(deadline),
        }
    }

    /// Time has passed: the close grace may be over, a Ping may be due, or the peer has been
    /// silent too long. Called early, it does nothing.
    pub(crate) fn handle_timeout(&mut self, now: Instant) -> Action {
        if let Some(deadline) = self.close_deadline()
            && now >= deadline
        {
            return Action::End(Ending {
                status: self.requested_status(),
                send_close: false,
            });
        }
        if now < self.heartbeat_at {
            return Action::Idle;
        }
        let half = self.read_timeout / 2;
        if self.paused {
            // Not reading is this side's backpressure, so silence proves nothing; Pings still
            // go out, and a peer that is gone fails the writer.
            self.move_heartbeat(now + half);
            return Action::Signal(Packet::Ping);
        }
        let silent = now.saturating_duration_since(self.last_read);
        if silent >= self.read_timeout {
            return Action::End(Ending {
                status: Status::network_error(format!(
                    "no packet received for {:?}",
                    self.read_timeout
                )),
                send_close: true,
            });
        }
        let ping = silent >= half && !self.pinged;
        if ping {
            self.pinged = true;
        }
        self.move_heartbeat(if self.pinged {
            self.last_read + self.read_timeout
        } else {
            self.last_read + half
        });
        if ping {
            Action::Signal(Packet::Ping)
        } else {
            Action::Idle
        }
    }

    /// The status of the close this side asked for (`Ok` when none was given).
    pub(crate) fn requested_status(&self) -> Status {
        self.requested
            .clone()
            .unwrap_or_else(|| Status::new(Code::Ok, ""))
    }
}

/// What the decoded form of a packet's header costs to hold, roughly: each entry is two
/// strings and their place in a list.
fn header_cost(header: &Header) -> usize {
    header.iter().map(|(k, v)| k.len() + v.len() + 48).sum()
}

/// The response that fails call `mid` with `status`.
pub(crate) fn error_response(mid: u16, status: Status) -> Packet {
    // A handler that fails with `Ok` still failed.
    let code = match status.code() {
        Code::Ok => Code::Unknown,
        code => code,
    };
    Packet::Response(Response {
        mid,
        status: code,
        header: Header::new(),
        payload: Bytes::from(status.message().to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Action as WireAction;

    const READ_TIMEOUT: Duration = Duration::from_secs(60);
    const HALF: Duration = Duration::from_secs(30);
    const GRACE: Duration = Duration::from_secs(1);

    fn config() -> EngineConfig {
        EngineConfig {
            read_timeout: READ_TIMEOUT,
            close_grace: GRACE,
            max_concurrent_requests: 2,
            conn_in_flight_bytes: 1000,
            ..EngineConfig::default()
        }
    }

    fn state(now: Instant) -> ConnState {
        ConnState::new(&config(), Counters::new(usize::MAX), Drain::default(), now)
    }

    fn request(mid: u16, payload: usize) -> Packet {
        Packet::Request(Request {
            mid,
            action: WireAction::Id(7),
            header: Header::new(),
            payload: Bytes::from(vec![0; payload]),
        })
    }

    fn notify(payload: usize) -> Packet {
        Packet::Notify(Notify {
            action: WireAction::Id(7),
            header: Header::new(),
            payload: Bytes::from(vec![0; payload]),
        })
    }

    fn is_ping(action: &Action) -> bool {
        matches!(action, Action::Signal(Packet::Ping))
    }

    fn ended(action: Action) -> Ending {
        match action {
            Action::End(ending) => ending,
            other => panic!("expected the end, got {other:?}"),
        }
    }

    fn refused(action: Action) -> (u16, Code, String) {
        match action {
            Action::Reply(Packet::Response(response)) => (
                response.mid,
                response.status,
                String::from_utf8_lossy(&response.payload).into_owned(),
            ),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn what_every_packet_touches_comes_first_on_one_cache_line() {
        let end = std::mem::offset_of!(ConnState, heartbeat_moved) + 1;
        assert!(end <= 64, "{end}");
        assert!(std::mem::offset_of!(ConnState, bytes) < 64);
    }

    #[test]
    fn the_heartbeat_reports_each_move_once_and_packets_never_move_it() {
        let t0 = Instant::now();
        let mut conn = state(t0);
        assert_eq!(
            conn.take_heartbeat_move(),
            None,
            "the engine armed its timer at the start"
        );
        assert!(matches!(
            conn.handle_packet(t0 + GRACE, Packet::Pong),
            Action::Idle
        ));
        assert_eq!(conn.take_heartbeat_move(), None);
        // The Pong pushed the silence back: the heartbeat looks again half a timeout after it.
        assert!(matches!(conn.handle_timeout(t0 + HALF), Action::Idle));
        assert_eq!(conn.take_heartbeat_move(), Some(t0 + GRACE + HALF));
        assert_eq!(conn.take_heartbeat_move(), None, "taken once");
        conn.resume_reading(t0 + HALF + GRACE);
        assert_eq!(conn.take_heartbeat_move(), Some(t0 + HALF + GRACE + HALF));
    }

    #[test]
    fn a_silent_peer_is_pinged_after_half_the_read_timeout_and_dropped_after_all_of_it() {
        let t0 = Instant::now();
        let mut conn = state(t0);
        assert_eq!(conn.heartbeat_at(), t0 + HALF);
        // Early calls do nothing.
        assert!(matches!(conn.handle_timeout(t0 + HALF / 2), Action::Idle));
        assert!(is_ping(&conn.handle_timeout(t0 + HALF)));
        assert_eq!(conn.heartbeat_at(), t0 + READ_TIMEOUT);
        // One Ping per silence, however often the timer fires.
        assert!(matches!(
            conn.handle_timeout(t0 + HALF + GRACE),
            Action::Idle
        ));
        let ending = ended(conn.handle_timeout(t0 + READ_TIMEOUT));
        assert_eq!(ending.status.code(), Code::NetworkError);
        assert!(ending.status.message().contains("no packet received"));
        assert!(ending.send_close, "the peer is told why");
    }

    #[test]
    fn any_packet_proves_the_peer_alive() {
        let t0 = Instant::now();
        let mut conn = state(t0);
        assert!(is_ping(&conn.handle_timeout(t0 + HALF)));
        // The Pong comes late, but before the read timeout.
        let pong_at = t0 + READ_TIMEOUT - GRACE;
        assert!(matches!(
            conn.handle_packet(pong_at, Packet::Pong),
            Action::Idle
        ));
        // The timer set for the read timeout finds the peer alive and waits for the rest.
        assert!(matches!(
            conn.handle_timeout(t0 + READ_TIMEOUT),
            Action::Idle
        ));
        assert_eq!(conn.heartbeat_at(), pong_at + HALF);
        // A new silence gets a new Ping.
        assert!(is_ping(&conn.handle_timeout(pong_at + HALF)));
        assert_eq!(
            ended(conn.handle_timeout(pong_at + READ_TIMEOUT))
                .status
                .code(),
            Code::NetworkError
        );
    }

    #[test]
    fn packets_do_not_move_the_heartbeat_timer() {
        let t0 = Instant::now();
        let mut conn = state(t0);
        for i in 1..100 {
            conn.handle_packet(t0 + Duration::from_millis(i), Packet::Pong);
            assert_eq!(conn.heartbeat_at(), t0 + HALF);
        }
    }

    #[test]
    fn while_reading_is_paused_silence_proves_nothing_and_pings_go_on() {
        let t0 = Instant::now();
        let mut conn = state(t0);
        conn.pause_reading();
        assert!(conn.is_reading_paused());
        let mut now = t0;
        for _ in 0..10 {
            now = conn.heartbeat_at();
            assert!(is_ping(&conn.handle_timeout(now)), "a Ping every half");
        }
        assert!(now >= t0 + READ_TIMEOUT * 4);
        conn.resume_reading(now);
        assert!(!conn.is_reading_paused());
        assert_eq!(conn.heartbeat_at(), now + HALF);
        assert!(is_ping(&conn.handle_timeout(now + HALF)));
        assert!(matches!(
            conn.handle_timeout(now + READ_TIMEOUT),
            Action::End(_)
        ));
    }

    #[test]
    fn a_close_waits_for_the_peers_close_and_does_not_answer_it() {
        let t0 = Instant::now();
        let mut conn = state(t0);
        let action = conn.close(t0, Status::new(Code::Unauthorized, "bye"));
        let Action::Signal(Packet::Close(close)) = action else {
            panic!("a Close goes out: {action:?}")
        };
        assert_eq!(
            (close.status, close.reason.as_str()),
            (Code::Unauthorized, "bye")
        );
        assert!(conn.is_closing());
        assert_eq!(conn.close_deadline(), Some(t0 + GRACE));
        // What the peer sends before it hears our Close is not taken up: nothing would answer.
        assert!(matches!(
            conn.handle_packet(t0, request(1, 10)),
            Action::Idle
        ));
        assert!(matches!(conn.handle_packet(t0, notify(10)), Action::Idle));
        // A second close changes nothing.
        assert!(matches!(
            conn.close(t0, Status::internal("again")),
            Action::Idle
        ));
        let ending = ended(conn.handle_packet(t0, Packet::close(Code::Ok, "")));
        assert!(
            !ending.send_close,
            "a Close that answers ours is not answered"
        );
    }

    #[test]
    fn a_close_ends_after_the_grace_when_the_peer_never_answers() {
        let t0 = Instant::now();
        let mut conn = state(t0);
        conn.close(t0, Status::new(Code::ServerShutdown, "going down"));
        assert!(matches!(conn.handle_timeout(t0 + GRACE / 2), Action::Idle));
        let ending = ended(conn.handle_timeout(t0 + GRACE));
        assert_eq!(ending.status.code(), Code::ServerShutdown);
        assert!(!ending.send_close, "our Close already went out");
    }

    #[test]
    fn a_peer_that_hangs_up_while_we_close_ends_with_our_status() {
        let t0 = Instant::now();
        let mut conn = state(t0);
        conn.close(t0, Status::new(Code::BadRequest, "replaced"));
        let ending = conn.handle_read_end(None);
        assert_eq!(ending.status.code(), Code::BadRequest);
        assert!(!ending.send_close);
    }

    #[test]
    fn the_peers_close_is_answered_and_its_hang_up_is_a_network_error() {
        let t0 = Instant::now();
        let ending = ended(state(t0).handle_packet(t0, Packet::close(Code::NotFound, "gone")));
        assert_eq!(
            (ending.status.code(), ending.status.message()),
            (Code::NotFound, "gone")
        );
        assert!(ending.send_close);
        let ending = state(t0).handle_read_end(None);
        assert_eq!(ending.status.code(), Code::NetworkError);
    }

    #[test]
    fn bad_bytes_get_a_close_and_a_broken_network_does_not() {
        let t0 = Instant::now();
        let ending = state(t0).handle_read_end(Some(Status::protocol_error("bad varint")));
        assert!(ending.send_close);
        let ending = state(t0).handle_read_end(Some(Status::network_error("reset")));
        assert!(!ending.send_close);
        let ending = state(t0).handle_write_failed(Status::network_error("stalled"));
        assert!(!ending.send_close);
    }

    #[test]
    fn requests_beyond_the_handler_slots_are_refused_until_one_finishes() {
        let t0 = Instant::now();
        let counters = Counters::new(usize::MAX);
        let mut conn = ConnState::new(&config(), counters.clone(), Drain::default(), t0);
        let Action::Handle(_, first) = conn.handle_packet(t0, request(1, 10)) else {
            panic!("a free slot runs the handler")
        };
        let Action::Handle(_, _second) = conn.handle_packet(t0, request(2, 10)) else {
            panic!("a free slot runs the handler")
        };
        let (mid, code, message) = refused(conn.handle_packet(t0, request(3, 10)));
        assert_eq!((mid, code), (3, Code::TooManyRequests));
        assert!(message.contains("more than 2 requests"), "{message}");
        assert_eq!(counters.snapshot(0, 0).requests_rejected, 1);
        drop(first);
        assert!(matches!(
            conn.handle_packet(t0, request(4, 10)),
            Action::Handle(..)
        ));
    }

    #[test]
    fn the_byte_budgets_refuse_requests_and_drop_notifies() {
        let t0 = Instant::now();
        let counters = Counters::new(usize::MAX);
        let mut conn = ConnState::new(&config(), counters.clone(), Drain::default(), t0);
        let Action::Deliver(_, held) = conn.handle_packet(t0, notify(900)) else {
            panic!("the budget has room")
        };
        let (_, code, message) = refused(conn.handle_packet(t0, request(1, 200)));
        assert_eq!(code, Code::TooManyRequests);
        assert!(
            message.contains("this connection holds its limit"),
            "{message}"
        );
        assert!(matches!(conn.handle_packet(t0, notify(200)), Action::Idle));
        assert_eq!(counters.snapshot(0, 0).requests_shed, 2);
        // A refused request gave its handler slot back.
        drop(held);
        assert!(matches!(
            conn.handle_packet(t0, request(2, 200)),
            Action::Handle(..)
        ));
        assert!(matches!(
            conn.handle_packet(t0, request(3, 200)),
            Action::Handle(..)
        ));
    }

    #[test]
    fn the_servers_budget_is_shared_by_its_connections() {
        let t0 = Instant::now();
        let counters = Counters::new(500);
        let mut one = ConnState::new(&config(), counters.clone(), Drain::default(), t0);
        let mut two = ConnState::new(&config(), counters.clone(), Drain::default(), t0);
        let _held = one.handle_packet(t0, notify(400));
        let (_, _, message) = refused(two.handle_packet(t0, request(1, 200)));
        assert!(message.contains("the server holds its limit"), "{message}");
    }

    #[test]
    fn a_draining_server_answers_requests_with_server_shutdown() {
        let t0 = Instant::now();
        let draining = Drain::default();
        let mut conn = ConnState::new(&config(), Counters::new(usize::MAX), draining.clone(), t0);
        draining.start();
        let (mid, code, _) = refused(conn.handle_packet(t0, request(9, 1)));
        assert_eq!((mid, code), (9, Code::ServerShutdown));
    }

    #[test]
    fn pings_are_answered_and_responses_go_to_their_calls() {
        let t0 = Instant::now();
        let mut conn = state(t0);
        assert!(matches!(
            conn.handle_packet(t0, Packet::Ping),
            Action::Reply(Packet::Pong)
        ));
        let response = Packet::Response(Response {
            mid: 5,
            status: Code::Ok,
            header: Header::new(),
            payload: Bytes::new(),
        });
        assert!(matches!(
            conn.handle_packet(t0, response),
            Action::Complete(Response { mid: 5, .. })
        ));
    }

    #[test]
    fn a_failure_reported_as_ok_is_still_a_failure() {
        let Packet::Response(response) = error_response(3, Status::new(Code::Ok, "odd")) else {
            panic!()
        };
        assert_eq!(response.status, Code::Unknown);
        assert_eq!(&response.payload[..], b"odd");
    }
}
