//! Admission: how many connections the server holds, counted from accept until the socket is
//! gone, and how an accept loop behaves when the process runs out of descriptors.
//!
//! Counting starts at accept because a connection costs a descriptor and buffers from then
//! on, whether or not it ever finishes its handshake: counting only handshaken connections let
//! slow or silent peers hold descriptors beyond every limit.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::Status;

/// Refusals being written at once; past this, over-limit sockets are closed without one,
/// so a flood cannot make the server spend unbounded work on telling it no.
const MAX_REFUSING: usize = 64;

/// The connection counters of one server.
#[derive(Debug)]
pub(crate) struct Admission {
    max_connections: usize,
    max_handshaking: usize,
    open: AtomicUsize,
    handshaking: AtomicUsize,
    refusing: AtomicUsize,
}

/// What to do with a socket just accepted.
#[derive(Debug)]
pub(crate) enum Ticket {
    /// Serve it; the slot counts it until dropped.
    Serve(Slot),
    /// Tell it why not, then close it.
    Refuse(Refusal),
    /// Close it at once: too many refusals are already being written.
    Drop,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub(crate) struct Slot {
    admission: Arc<Admission>,
    handshaking: bool,
}

/// One refusal in progress; dropping it frees its place among the refusals.
#[derive(Debug)]
pub(crate) struct Refusal {
    admission: Arc<Admission>,
    pub(crate) status: Status,
}

impl Admission {
    pub(crate) fn new(max_connections: usize, max_handshaking: usize) -> Arc<Admission> {
        Arc::new(Admission {
            max_connections,
            max_handshaking,
            open: AtomicUsize::new(0),
            handshaking: AtomicUsize::new(0),
            refusing: AtomicUsize::new(0),
        })
    }

    /// Admits a socket just accepted, or says why not.
    pub(crate) fn ticket(self: &Arc<Self>) -> Ticket {
        // Increment first, then check: concurrent accept loops can refuse one too many at
        // the boundary, but never admit one too many.
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max_connections {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return self.refusal(Status::too_many_requests(
                "the server is full: too many connections",
            ));
        }
        if self.handshaking.fetch_add(1, Ordering::AcqRel) >= self.max_handshaking {
            self.handshaking.fetch_sub(1, Ordering::AcqRel);
            self.open.fetch_sub(1, Ordering::AcqRel);
            return self.refusal(Status::too_many_requests(
                "the server is busy: too many connections in their handshake",
            ));
        }
        Ticket::Serve(Slot {
            admission: self.clone(),
            handshaking: true,
        })
    }

    fn refusal(self: &Arc<Self>, status: Status) -> Ticket {
        if self.refusing.fetch_add(1, Ordering::AcqRel) >= MAX_REFUSING {
            self.refusing.fetch_sub(1, Ordering::AcqRel);
            return Ticket::Drop;
        }
        Ticket::Refuse(Refusal {
            admission: self.clone(),
            status,
        })
    }

    /// Connections admitted and not yet gone, handshaking or not.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

impl Slot {
    /// The connection finished its handshake: it no longer counts against the handshake limit.
    pub(crate) fn handshaken(&mut self) {
        if std::mem::take(&mut self.handshaking) {
            self.admission.handshaking.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.handshaken();
        self.admission.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for Refusal {
    fn drop(&mut self) {
        self.admission.refusing.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The first pause after an accept failed for want of resources, and the longest.
const FIRST_PAUSE: Duration = Duration::from_millis(5);
const LONGEST_PAUSE: Duration = Duration::from_secs(1);
/// At most one warning per this interval while accepts keep failing.
const WARN_EVERY: Duration = Duration::from_secs(5);

/// What an accept loop does after a failed accept.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct AcceptFailure {
    /// How long to wait before accepting again; `None` to go on at once.
    pub(crate) pause: Option<Duration>,
    /// Whether to warn (with the number of failures not warned about since the last warning).
    pub(crate) warn: Option<u64>,
}

/// The accept loop's policy when accepting fails: the process is out of descriptors or
/// memory, a condition that lasts until connections end, so retrying at once only burns a core
/// (and floods the log). Pauses double from 5 ms to 1 s and reset on the next success; errors
/// that concern one connection only (it was aborted before we took it) are skipped at once.
#[derive(Debug, Default)]
pub(crate) struct AcceptBackoff {
    pause: Option<Duration>,
    last_warning: Option<Instant>,
    unwarned: u64,
}

impl AcceptBackoff {
    /// A socket was accepted: resources are back.
    pub(crate) fn accepted(&mut self) {
        self.pause = None;
    }

    /// An accept failed with `error` at `now`.
    pub(crate) fn failed(&mut self, error: &io::Error, now: Instant) -> AcceptFailure {
        if concerns_one_connection(error) {
            return AcceptFailure {
                pause: None,
                warn: None,
            };
        }
        let pause = match self.pause {
            None => FIRST_PAUSE,
            Some(last) => (last * 2).min(LONGEST_PAUSE),
        };
        self.pause = Some(pause);
        let warn = match self.last_warning {
            Some(at) if now.saturating_duration_since(at) < WARN_EVERY => {
                self.unwarned += 1;
                None
            }
            _ => {
                self.last_warning = Some(now);
                Some(std::mem::take(&mut self.unwarned))
            }
        };
        AcceptFailure {
            pause: Some(pause),
            warn,
        }
    }
}

/// Errors about the one connection being accepted (it was reset or aborted while queued),
/// after which the next accept may well succeed. Everything else (out of descriptors, of
/// buffers, of memory, or an error we do not know) pauses the loop.
fn concerns_one_connection(error: &io::Error) -> bool {
    use io::ErrorKind::*;
    if matches!(
        error.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    ) {
        return true;
    }
    #[cfg(unix)]
    {
        // Linux reports pending network errors of the new socket from accept (accept(2)).
        const PER_CONNECTION: [i32; 3] = [libc::EPROTO, libc::EPERM, libc::ETIMEDOUT];
        if error
            .raw_os_error()
            .is_some_and(|code| PER_CONNECTION.contains(&code))
        {
            return true;
        }
    }
    false
}

/// Raises this process's soft limit of open files (`RLIMIT_NOFILE`) to its hard limit and
/// returns the new soft limit.
///
/// Many systems start processes with a soft limit of 1024 descriptors, and each connection
/// takes one: a server hits it long before any other resource. [`ServerBuilder::build`]
/// calls this once per process unless told not to
/// ([`ServerBuilder::raise_fd_limit`]); call it yourself when you want the figure. On systems
/// without the limit it does nothing and returns `u64::MAX`.
///
/// ```
/// let limit = stmp::raise_fd_limit().expect("getrlimit/setrlimit");
/// assert!(limit > 0);
/// ```
///
/// [`ServerBuilder::build`]: crate::ServerBuilder::build
/// [`ServerBuilder::raise_fd_limit`]: crate::ServerBuilder::raise_fd_limit
pub fn raise_fd_limit() -> io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Code;

    fn out_of_files() -> io::Error {
        #[cfg(unix)]
        return io::Error::from_raw_os_error(libc::EMFILE);
        #[cfg(not(unix))]
        return io::Error::from(io::ErrorKind::OutOfMemory);
    }

    #[test]
    fn slots_count_from_accept_and_free_on_drop() {
        let admission = Admission::new(2, 1);
        let Ticket::Serve(mut first) = admission.ticket() else {
            panic!("the first connection is admitted")
        };
        // The first is still in its handshake: a second may not start one.
        let Ticket::Refuse(busy) = admission.ticket() else {
            panic!("the handshake limit refuses")
        };
        assert_eq!(busy.status.code(), Code::TooManyRequests);
        assert!(
            busy.status.message().contains("handshake"),
            "{}",
            busy.status
        );
        first.handshaken();
        let Ticket::Serve(second) = admission.ticket() else {
            panic!("a handshaken connection frees its handshake place")
        };
        let Ticket::Refuse(full) = admission.ticket() else {
            panic!("over max_connections")
        };
        assert!(full.status.message().contains("full"), "{}", full.status);
        assert_eq!(admission.open(), 2);
        drop(second);
        assert_eq!(admission.open(), 1);
        assert!(matches!(admission.ticket(), Ticket::Serve(_)));
        assert_eq!(admission.open(), 1, "a dropped ticket frees its place");
        drop(first);
        assert_eq!(admission.open(), 0);
    }

    #[test]
    fn refusals_in_flight_are_bounded() {
        let admission = Admission::new(0, 0);
        let refusals: Vec<Ticket> = (0..MAX_REFUSING).map(|_| admission.ticket()).collect();
        assert!(refusals.iter().all(|t| matches!(t, Ticket::Refuse(_))));
        assert!(matches!(admission.ticket(), Ticket::Drop));
        drop(refusals);
        assert!(matches!(admission.ticket(), Ticket::Refuse(_)));
    }

    #[test]
    fn out_of_descriptors_pauses_doubling_up_to_a_second() {
        let mut backoff = AcceptBackoff::default();
        let now = Instant::now();
        let pauses: Vec<u64> = (0..10)
            .map(|_| {
                backoff
                    .failed(&out_of_files(), now)
                    .pause
                    .unwrap()
                    .as_millis() as u64
            })
            .collect();
        assert_eq!(pauses, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        backoff.accepted();
        assert_eq!(
            backoff.failed(&out_of_files(), now).pause,
            Some(FIRST_PAUSE)
        );
    }

    #[test]
    fn warnings_are_rate_limited_and_count_what_they_skipped() {
        let mut backoff = AcceptBackoff::default();
        let start = Instant::now();
        let warned: Vec<Option<u64>> = [0, 1, 2, 3, 6, 7]
            .into_iter()
            .map(|s| {
                let at = start + Duration::from_secs(s);
                backoff.failed(&out_of_files(), at).warn
            })
            .collect();
        assert_eq!(warned, [Some(0), None, None, None, Some(3), None]);
    }

    #[test]
    fn an_aborted_connection_is_skipped_at_once() {
        let mut backoff = AcceptBackoff::default();
        let aborted = io::Error::from(io::ErrorKind::ConnectionAborted);
        let failure = backoff.failed(&aborted, Instant::now());
        assert_eq!(
            failure,
            AcceptFailure {
                pause: None,
                warn: None
            }
        );
        // And it does not lengthen the pause of a later shortage.
        assert_eq!(
            backoff.failed(&out_of_files(), Instant::now()).pause,
            Some(FIRST_PAUSE)
        );
    }
}
