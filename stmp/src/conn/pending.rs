//! Calls waiting for their response, by message id, and their deadlines.
//!
//! A call's deadline is kept here rather than in a timer of its own: the engine keeps one
//! alarm for all of a connection's calls and, when it rings, ends the calls that are due
//! ([`Calls::expire`]). A tokio timer per call cost an entry in the runtime's timer wheel,
//! registered and cleared under its lock on every call.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::Status;
use crate::sync::lock;
use crate::wire::Response;
use slots::Slots;

mod slots;

/// What a call waits on for its response.
pub(crate) type Answer = oneshot::Receiver<Result<Response, Status>>;

/// Where a call's response (or its failure) goes.
type Answering = oneshot::Sender<Result<Response, Status>>;

/// How late an alarm may ring per call it has to look at: a sweep looks at every waiting
/// call, so with many waiting the alarm is not set sooner than this many nanoseconds per call
/// from now (6.5 ms with 65,535 waiting). A deadline is then missed by at most that much.
const SWEEP_NS_PER_CALL: u64 = 100;

/// A newly registered call.
#[derive(Debug)]
pub(crate) struct Registered {
    pub(crate) mid: u16,
    pub(crate) answer: Answer,
    /// Calls waiting now, this one included.
    pub(crate) waiting: usize,
    /// The call's deadline comes before the engine's alarm: the engine must set it sooner.
    pub(crate) sooner: bool,
}

/// Responses read in one burst, on their way to their calls together.
///
/// With many calls in flight, a read brings dozens of responses, while the callers woken by
/// the first ones already register their next calls on the other worker. Handed over one by
/// one, each response locked the calls' table again, and its cache line went back and forth
/// between the reader and the callers once per response; now it moves once per burst.
#[derive(Debug, Default)]
pub(crate) struct Answers {
    batch: Vec<(Response, Option<Answering>)>,
}

impl Answers {
    /// How many responses wait at most: the first callers of a long burst are not held back
    /// until its end.
    const MAX: usize = 32;

    /// Adds a response; returns whether the batch is full and must be handed over now.
    pub(crate) fn push(&mut self, response: Response) -> bool {
        self.batch.push((response, None));
        self.batch.len() >= Self::MAX
    }

    /// Lets go of the batch's room: for a connection gone quiet.
    pub(crate) fn shrink(&mut self) {
        self.batch = Vec::new();
    }
}

/// A connection's [`Pending`] table behind its lock, with its size readable without the lock:
/// the writer and the engine ask how many calls wait on every batch and every request.
///
/// `repr(C)` with the count first: it is written with the table, under its lock, and next to
/// the lock it shares that lock's cache line rather than taking one more.
#[derive(Debug, Default)]
#[repr(C)]
pub(crate) struct Calls {
    waiting: AtomicUsize,
    table: Mutex<Pending>,
}

impl Calls {
    /// Reserves an id for a new call that gives up `timeout` after `now`.
    pub(crate) fn register(&self, now: Instant, timeout: Duration) -> Result<Registered, Status> {
        // Made before the lock: the allocation would lengthen a critical section that the
        // reader and the callers of both workers contend for.
        let (answering, answer) = oneshot::channel();
        let mut table = lock(&self.table);
        let (mid, sooner) = table.register(now, timeout, answering)?;
        let waiting = table.len();
        self.waiting.store(waiting, Ordering::Relaxed);
        Ok(Registered {
            mid,
            answer,
            waiting,
            sooner,
        })
    }

    /// Forgets a call whose future was dropped before it took its response; returns whether
    /// the call still waited (rather than having been answered, timed out or closed).
    pub(crate) fn forget(&self, mid: u16) -> bool {
        let mut table = lock(&self.table);
        let waited = table.forget(mid);
        self.waiting.store(table.len(), Ordering::Relaxed);
        waited
    }

    /// Hands the responses in `answers` to their calls, under one lock of the table for all
    /// of them; a response nobody waits for is dropped. `answering` is told how many callers
    /// are about to be woken, before they can run. Returns how many were handed over.
    pub(crate) fn complete(&self, answers: &mut Answers, answering: impl FnOnce(usize)) -> usize {
        let handed = {
            let mut table = lock(&self.table);
            let mut handed = 0;
            for (response, sender) in &mut answers.batch {
                *sender = table.take(response.mid);
                handed += usize::from(sender.is_some());
            }
            self.waiting.store(table.len(), Ordering::Relaxed);
            handed
        };
        if handed > 0 {
            answering(handed);
        }
        // Sent outside the lock: a send wakes its caller, which may lock the table at once.
        for (response, sender) in answers.batch.drain(..) {
            if let Some(sender) = sender {
                let _ = sender.send(Ok(response));
            }
        }
        handed
    }

    /// Ends the calls whose deadline has passed at `now` with `RequestTimeout`; returns when
    /// the alarm should ring next (`None`: no call waits). `answering` is told how many
    /// callers are about to be woken, before they can run.
    pub(crate) fn expire(&self, now: Instant, answering: impl FnOnce(usize)) -> Option<Instant> {
        let (due, next) = {
            let mut table = lock(&self.table);
            let expired = table.expire(now);
            self.waiting.store(table.len(), Ordering::Relaxed);
            expired
        };
        if !due.is_empty() {
            answering(due.len());
        }
        for (sender, timeout) in due {
            let _ = sender.send(Err(Status::request_timeout(format!(
                "no response within {timeout:?}"
            ))));
        }
        next
    }

    /// Ends every waiting call with `status`, and every later one too. `answering` is told how
    /// many callers are about to be woken, before they can run.
    pub(crate) fn close(&self, status: Status, answering: impl FnOnce(usize)) {
        let mut table = lock(&self.table);
        answering(table.len());
        table.close(status);
        self.waiting.store(0, Ordering::Relaxed);
    }

    /// How many calls wait for a response (as of the last change; read without the lock).
    pub(crate) fn len(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }
}

/// One waiting call.
#[derive(Debug)]
struct Waiter {
    answer: Answering,
    deadline: Instant,
    timeout: Duration,
}

/// The calls of one connection that wait for a response.
///
/// Ids count up from 1 and wrap after 65535; 0 is never used, because stmp-go answers
/// notifies with mid-0 responses, and an id still waiting is never handed out again. An id
/// whose slot in the table another waiting call holds is skipped too ([`Slots`]).
#[derive(Debug)]
pub(crate) struct Pending {
    next: u16,
    waiting: Slots<Waiter>,
    closed: Option<Status>,
    /// When the engine's alarm rings; `None` while it is not set.
    alarm: Option<Instant>,
}

impl Default for Pending {
    fn default() -> Self {
        Pending {
            next: 1,
            waiting: Slots::default(),
            closed: None,
            alarm: None,
        }
    }
}

impl Pending {
    /// Reserves an id for a new call, answered through `answer`; says too whether the alarm
    /// must be set sooner for it.
    pub(crate) fn register(
        &mut self,
        now: Instant,
        timeout: Duration,
        answer: Answering,
    ) -> Result<(u16, bool), Status> {
        if let Some(status) = &self.closed {
            return Err(status.clone());
        }
        if self.waiting.len() >= usize::from(u16::MAX) {
            return Err(Status::too_many_requests(
                "65535 calls are already waiting on this connection",
            ));
        }
        self.waiting.reserve_one();
        let mut mid = self.next;
        while mid == 0 || !self.waiting.is_free(mid) {
            mid = mid.wrapping_add(1);
        }
        self.next = mid.wrapping_add(1);
        // A deadline beyond what an Instant holds is no deadline: a century is as good.
        let deadline = now
            .checked_add(timeout)
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400));
        self.waiting.insert(
            mid,
            Waiter {
                answer,
                deadline,
                timeout,
            },
        );
        // With the usual single default timeout, deadlines come in order and the alarm is
        // already set for an earlier call: nothing to tell the engine.
        let sooner = self.alarm.is_none_or(|alarm| deadline < alarm);
        if sooner {
            self.alarm = Some(deadline);
        }
        Ok((mid, sooner))
    }

    /// Forgets a call (its future was dropped); returns whether it was waiting.
    pub(crate) fn forget(&mut self, mid: u16) -> bool {
        self.waiting.remove(mid).is_some()
    }

    /// Takes the call waiting for the response `mid`, if one does.
    fn take(&mut self, mid: u16) -> Option<Answering> {
        self.waiting.remove(mid).map(|waiter| waiter.answer)
    }

    /// Takes the calls due at `now`; returns them and when the alarm should ring next, which
    /// is also what later registrations compare with.
    fn expire(&mut self, now: Instant) -> (Vec<(Answering, Duration)>, Option<Instant>) {
        let due = self
            .waiting
            .take_if(|waiter| waiter.deadline <= now)
            .into_iter()
            .map(|waiter| (waiter.answer, waiter.timeout))
            .collect();
        let next = self.waiting.values().map(|waiter| waiter.deadline).min();
        let sweep = Duration::from_nanos(SWEEP_NS_PER_CALL * self.waiting.len() as u64);
        self.alarm = next.map(|next| next.max(now + sweep));
        (due, self.alarm)
    }

    /// Ends every waiting call with `status`, and every later one too.
    pub(crate) fn close(&mut self, status: Status) {
        for waiter in self.waiting.drain() {
            let _ = waiter.answer.send(Err(status.clone()));
        }
        self.closed = Some(status);
        self.alarm = None;
    }

    pub(crate) fn len(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Code;
    use bytes::Bytes;

    const MINUTE: Duration = Duration::from_secs(60);

    /// Registers a call due in a minute; returns its id and what it waits on.
    fn register(pending: &mut Pending) -> Result<(u16, Answer, bool), Status> {
        let (answering, answer) = oneshot::channel();
        let (mid, sooner) = pending.register(Instant::now(), MINUTE, answering)?;
        Ok((mid, answer, sooner))
    }

    fn response(mid: u16) -> Response {
        Response {
            mid,
            status: Code::Ok,
            header: Default::default(),
            payload: Bytes::new(),
        }
    }

    /// Hands the responses to `mids` over as one burst; returns how many calls took theirs.
    fn complete(calls: &Calls, mids: &[u16]) -> usize {
        let mut answers = Answers::default();
        for &mid in mids {
            answers.push(response(mid));
        }
        let mut told = 0;
        let handed = calls.complete(&mut answers, |callers| told = callers);
        assert_eq!(told, handed, "the count of callers woken is told first");
        assert!(answers.batch.is_empty());
        handed
    }

    #[test]
    fn ids_start_at_one_count_up_wrap_and_skip_zero_and_waiting_ids() {
        let mut pending = Pending::default();
        let (first, _keep, _) = register(&mut pending).unwrap();
        assert_eq!(first, 1);
        let mut last = first;
        let mut wraps = 0;
        for _ in 0..70_000 {
            let (mid, _, _) = register(&mut pending).unwrap();
            assert_ne!(mid, 0, "0 is never used");
            assert_ne!(mid, 1, "1 is still waiting");
            if mid < last {
                wraps += 1;
            }
            last = mid;
            pending.forget(mid);
        }
        assert_eq!(wraps, 1, "ids count up and wrap once in 70,000 calls");
    }

    #[test]
    fn calls_answered_in_order_get_consecutive_ids() {
        // 64 calls in flight, the oldest answered as each new one is made: the ids go up one
        // at a time, so calls made one after another sit side by side in the table.
        let mut pending = Pending::default();
        let mut flight: std::collections::VecDeque<_> =
            (0..64).map(|_| register(&mut pending).unwrap()).collect();
        for _ in 0..70_000 {
            let (oldest, _, _) = flight.pop_front().unwrap();
            assert!(pending.take(oldest).is_some());
            let newest = flight.back().unwrap().0;
            let next = register(&mut pending).unwrap();
            let expected = match newest.wrapping_add(1) {
                0 => 1,
                id => id,
            };
            assert_eq!(next.0, expected);
            flight.push_back(next);
        }
        assert_eq!(pending.len(), 64);
    }

    #[test]
    fn unknown_responses_are_dropped_and_close_fails_waiters() {
        let calls = Calls::default();
        let Registered {
            mid,
            answer: mut rx,
            waiting,
            ..
        } = calls.register(Instant::now(), MINUTE).unwrap();
        assert_eq!((waiting, calls.len()), (1, 1));
        assert_eq!(complete(&calls, &[mid + 1]), 0);
        assert_eq!(calls.len(), 1);
        calls.close(Status::network_error("gone"), |_| {});
        assert_eq!(
            rx.try_recv().unwrap().unwrap_err().code(),
            Code::NetworkError
        );
        assert_eq!(
            calls.register(Instant::now(), MINUTE).unwrap_err().code(),
            Code::NetworkError
        );
        assert_eq!(calls.len(), 0);
    }

    #[test]
    fn the_count_read_without_the_lock_follows_every_change() {
        let calls = Calls::default();
        let first = calls.register(Instant::now(), MINUTE).unwrap();
        let (first, mut first_rx) = (first.mid, first.answer);
        let second = calls.register(Instant::now(), MINUTE).unwrap();
        let (second, _second_rx, waiting) = (second.mid, second.answer, second.waiting);
        assert_eq!((waiting, calls.len()), (2, 2));
        assert_eq!(complete(&calls, &[first]), 1);
        assert_eq!(first_rx.try_recv().unwrap().unwrap().mid, first);
        assert_eq!(calls.len(), 1);
        calls.forget(second);
        assert_eq!(calls.len(), 0);
        assert_eq!(complete(&calls, &[second]), 0);
    }

    #[test]
    fn a_burst_hands_each_response_to_its_call_and_drops_the_rest() {
        let calls = Calls::default();
        let mut registered: Vec<_> = (0..3)
            .map(|_| calls.register(Instant::now(), MINUTE).unwrap())
            .collect();
        let mids: Vec<u16> = registered.iter().map(|call| call.mid).collect();
        // Out of order, one twice, and one that no call waits for.
        let unknown = mids.iter().max().unwrap() + 1;
        assert_eq!(complete(&calls, &[mids[2], mids[0], mids[0], unknown]), 2);
        assert_eq!(calls.len(), 1);
        for i in [0, 2] {
            let answer = registered[i].answer.try_recv().unwrap().unwrap();
            assert_eq!(answer.mid, mids[i]);
        }
        assert_eq!(
            registered[1].answer.try_recv(),
            Err(oneshot::error::TryRecvError::Empty),
            "a call left out of the burst still waits"
        );
        assert_eq!(complete(&calls, &[mids[1]]), 1);
        assert_eq!(calls.len(), 0);
    }

    #[test]
    fn full_table_is_too_many_requests() {
        let mut pending = Pending::default();
        let receivers: Vec<_> = (0..u16::MAX)
            .map(|_| register(&mut pending).unwrap())
            .collect();
        assert_eq!(receivers.len(), 65535);
        assert_eq!(
            register(&mut pending).unwrap_err().code(),
            Code::TooManyRequests
        );
    }

    #[test]
    fn due_calls_time_out_and_the_alarm_follows_the_earliest_deadline_left() {
        let calls = Calls::default();
        let start = Instant::now();
        let slow = calls.register(start, MINUTE).unwrap();
        assert!(slow.sooner, "the first call sets the alarm");
        let later = calls.register(start, 2 * MINUTE).unwrap();
        assert!(!later.sooner, "a later deadline leaves the alarm as it is");
        let quick = calls.register(start, Duration::from_secs(1)).unwrap();
        assert!(
            quick.sooner,
            "an earlier deadline must bring the alarm forward"
        );

        // Nothing is due yet: the alarm stays on the earliest deadline.
        assert_eq!(
            calls.expire(start, |_| {}),
            Some(start + Duration::from_secs(1))
        );
        assert_eq!(calls.len(), 3);

        let next = calls.expire(start + Duration::from_secs(1), |_| {});
        assert_eq!(next, Some(start + MINUTE));
        let mut quick_answer = quick.answer;
        let timed_out = quick_answer.try_recv().unwrap().unwrap_err();
        assert_eq!(timed_out.code(), Code::RequestTimeout);
        assert_eq!(timed_out.message(), "no response within 1s");
        assert_eq!(calls.len(), 2);
        // The calls not due still wait, and still take their responses.
        assert_eq!(complete(&calls, &[later.mid]), 1);
        assert_eq!(
            calls.expire(start + MINUTE, |_| {}),
            None,
            "no call is left"
        );
        let mut slow_answer = slow.answer;
        assert_eq!(
            slow_answer.try_recv().unwrap().unwrap_err().code(),
            Code::RequestTimeout
        );
        // With no alarm set, the next call sets it again.
        assert!(calls.register(start, MINUTE).unwrap().sooner);
    }

    #[test]
    fn with_many_calls_waiting_the_alarm_rings_no_more_often_than_a_sweep_costs() {
        let calls = Calls::default();
        let start = Instant::now();
        let answers: Vec<_> = (0..1000u64)
            .map(|i| calls.register(start, Duration::from_nanos(i + 1)).unwrap())
            .collect();
        // The next deadline is 2 ns away, but looking at 999 calls again that soon would cost
        // more than it is worth: the alarm waits 100 ns per waiting call.
        let next = calls
            .expire(start + Duration::from_nanos(1), |_| {})
            .unwrap();
        assert_eq!(
            next,
            start + Duration::from_nanos(1 + 999 * SWEEP_NS_PER_CALL)
        );
        assert_eq!(calls.len(), 999);
        assert_eq!(calls.expire(next, |_| {}), None);
        assert_eq!(calls.len(), 0);
        drop(answers);
    }
}
