//! Calls waiting for their response, by message id, and their deadlines.
//!
//! A call's deadline is kept here rather than in a timer of its own: the engine keeps one
//! alarm for all of a connection's calls and, when it rings, ends the calls that are due
//! ([`Calls::expire`]). A tokio timer per call cost an entry in the runtime's timer wheel,
//! registered and cleared under its lock on every call.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use crate::Status;
use crate::sync::lock;
use crate::wire::Response;
use slots::Slots;

mod slots;

/// How late an alarm may ring per call it has to look at: a sweep looks at every waiting
/// call, so with many waiting the alarm is not set sooner than this many nanoseconds per call
/// from now (6.5 ms with 65,535 waiting). A deadline is then missed by at most that much.
const SWEEP_NS_PER_CALL: u64 = 100;

/// A newly registered call.
#[derive(Debug)]
pub(crate) struct Registered {
    pub(crate) mid: u16,
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
    batch: Vec<Response>,
    /// The callers to wake once the table is unlocked; kept for the next burst's.
    woken: Vec<Waker>,
}

impl Answers {
    /// How many responses wait at most: the first callers of a long burst are not held back
    /// until its end. 16 rather than 32 since session 40: on its host, more calls got through,
    /// at less CPU each, at 32, 64 and 128 in flight on one connection; see the bench's
    /// README.
    const MAX: usize = 16;

    /// Adds a response; returns whether the batch is full and must be handed over now.
    pub(crate) fn push(&mut self, response: Response) -> bool {
        self.batch.push(response);
        self.batch.len() >= Self::MAX
    }

    /// Lets go of the batch's room: for a connection gone quiet.
    pub(crate) fn shrink(&mut self) {
        self.batch = Vec::new();
        self.woken = Vec::new();
    }
}

/// A connection's [`Pending`] table behind its lock, with its size readable without the lock:
/// the writer and the engine ask how many calls wait on every batch and every request.
///
/// `repr(C)` with the count first: it is written with the table, under its lock, and next to
/// the lock it shares that lock's cache line rather than taking one more.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct Calls {
    waiting: AtomicUsize,
    /// Whether answered callers wait in the relay (see [`Pending::relay`]); written with it.
    relaying: AtomicBool,
    table: Mutex<Pending>,
}

impl Calls {
    /// An empty table; the callers a burst answers are woken one by one (see
    /// [`Pending::relay`]).
    pub(crate) fn new() -> Self {
        Calls {
            waiting: AtomicUsize::new(0),
            relaying: AtomicBool::new(false),
            table: Mutex::default(),
        }
    }

    /// Reserves an id for a new call that gives up `timeout` after `now`; `waker` is woken
    /// when the call has its outcome.
    pub(crate) fn register(
        &self,
        now: Instant,
        timeout: Duration,
        waker: &Waker,
    ) -> Result<Registered, Status> {
        // Cloned before the lock (a reference count on the task, often last written by the
        // other worker): the critical section is contended by the reader and both workers.
        let waker = waker.clone();
        let mut table = lock(&self.table);
        let (mid, sooner) = table.register(now, timeout, waker)?;
        let waiting = table.len();
        self.waiting.store(waiting, Ordering::Relaxed);
        Ok(Registered {
            mid,
            waiting,
            sooner,
        })
    }

    /// The outcome of call `mid`, taken if it has one (the call is then let go of); otherwise
    /// `waker` is woken when it does.
    ///
    /// A caller that takes its outcome wakes the next one in the relay.
    pub(crate) fn poll_outcome(&self, mid: u16, waker: &Waker) -> Poll<Result<Response, Status>> {
        let (polled, next) = {
            let mut table = lock(&self.table);
            let polled = table.poll_outcome(mid, waker);
            let next = match polled.is_ready() {
                true => self.pass_on(&mut table),
                false => None,
            };
            (polled, next)
        };
        if let Some(next) = next {
            next.wake();
        }
        polled
    }

    /// Forgets a call whose future was dropped before it took its outcome; returns whether the
    /// call still waited (rather than having been answered, timed out or closed). A caller
    /// whose call had ended goes instead of taking its outcome, and wakes the next one in the
    /// relay, as taking it would have.
    pub(crate) fn forget(&self, mid: u16) -> bool {
        let (waited, next) = {
            let mut table = lock(&self.table);
            let waited = table.forget(mid);
            self.waiting.store(table.len(), Ordering::Relaxed);
            let next = match waited {
                true => None,
                false => self.pass_on(&mut table),
            };
            (waited, next)
        };
        if let Some(next) = next {
            next.wake();
        }
        waited
    }

    /// The next caller in the relay, taken out of it.
    fn pass_on(&self, table: &mut Pending) -> Option<Waker> {
        let next = table.relay.pop_front();
        if next.is_some() && table.relay.is_empty() {
            self.relaying.store(false, Ordering::Relaxed);
        }
        next
    }

    /// Lets go of the relay's room: for a connection gone quiet.
    pub(crate) fn shrink(&self) {
        let mut table = lock(&self.table);
        if table.relay.is_empty() {
            table.relay = VecDeque::new();
        }
    }

    /// Whether answered callers still wait in the relay for their turn (read without the
    /// lock).
    pub(crate) fn is_relaying(&self) -> bool {
        self.relaying.load(Ordering::Relaxed)
    }

    /// Wakes every caller left in the relay at once; returns how many there were.
    ///
    /// A caller woken whose task does not poll its call again (a call future left aside while
    /// the task waits for something else) never passes the relay on. The engine calls this once
    /// its worker has run what it had, so the callers behind such a one are held up by no more
    /// than a turn of the worker.
    pub(crate) fn wake_relayed(&self) -> usize {
        if !self.is_relaying() {
            return 0;
        }
        let mut left = {
            let mut table = lock(&self.table);
            self.relaying.store(false, Ordering::Relaxed);
            std::mem::take(&mut table.relay)
        };
        let count = left.len();
        for waker in left.drain(..) {
            waker.wake();
        }
        count
    }

    /// Hands the responses in `answers` to their calls, under one lock of the table for all
    /// of them; a response nobody waits for is dropped. `answering` is told how many callers
    /// are about to be woken, before they can run. Returns how many were handed over.
    ///
    /// The callers are woken through the relay (see [`Pending::relay`]): the first now, unless
    /// the relay is already under way, and each of the others by the one before it.
    pub(crate) fn complete(&self, answers: &mut Answers, answering: impl FnOnce(usize)) -> usize {
        let Answers { batch, woken } = answers;
        let (handed, first) = {
            let mut table = lock(&self.table);
            for response in batch.drain(..) {
                let mid = response.mid;
                woken.extend(table.end(mid, Ok(response)));
            }
            self.waiting.store(table.len(), Ordering::Relaxed);
            told(woken, answering);
            let handed = woken.len();
            let under_way = !table.relay.is_empty();
            table.relay.extend(woken.drain(..));
            let first = match under_way {
                true => None,
                false => self.pass_on(&mut table),
            };
            if !table.relay.is_empty() {
                self.relaying.store(true, Ordering::Relaxed);
            }
            (handed, first)
        };
        if let Some(first) = first {
            first.wake();
        }
        handed
    }

    /// Ends the calls whose deadline has passed at `now` with `RequestTimeout`; returns when
    /// the alarm should ring next (`None`: no call waits). `answering` is told how many
    /// callers are about to be woken, before they can run.
    pub(crate) fn expire(&self, now: Instant, answering: impl FnOnce(usize)) -> Option<Instant> {
        let mut woken = Vec::new();
        let next = {
            let mut table = lock(&self.table);
            let next = table.expire(now, &mut woken);
            self.waiting.store(table.len(), Ordering::Relaxed);
            told(&woken, answering);
            // The relay too, here where every caller is woken at once anyway.
            woken.extend(table.relay.drain(..));
            self.relaying.store(false, Ordering::Relaxed);
            next
        };
        wake_all(&mut woken);
        next
    }

    /// Ends every waiting call with `status`, and every later one too. `answering` is told how
    /// many callers are about to be woken, before they can run.
    pub(crate) fn close(&self, status: Status, answering: impl FnOnce(usize)) {
        let mut woken = Vec::new();
        {
            let mut table = lock(&self.table);
            table.close(status, &mut woken);
            self.waiting.store(0, Ordering::Relaxed);
            told(&woken, answering);
            woken.extend(table.relay.drain(..));
            self.relaying.store(false, Ordering::Relaxed);
        }
        wake_all(&mut woken);
    }

    /// How many calls wait for a response (as of the last change; read without the lock).
    pub(crate) fn len(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }
}

/// Tells `answering` how many callers `woken` holds, under the table's lock: from the moment
/// it is unlocked a caller may take its outcome (a task polled for another reason than its
/// wake-up finds it), and it must have been counted before it comes back.
fn told(woken: &[Waker], answering: impl FnOnce(usize)) {
    if !woken.is_empty() {
        answering(woken.len());
    }
}

/// Wakes the callers in `woken`, outside the table's lock (a woken caller may lock it at
/// once).
fn wake_all(woken: &mut Vec<Waker>) {
    for waker in woken.drain(..) {
        waker.wake();
    }
}

/// One call in the table.
///
/// The outcome waits here for its caller rather than going through a channel of its own: a
/// `oneshot` was an allocation per call, made on one worker and often freed on the other, and
/// a few more atomic operations on a line that moved between the reader and the caller.
#[derive(Debug)]
enum Call {
    /// Waiting for its response.
    Waiting {
        waker: Waker,
        deadline: Instant,
        timeout: Duration,
    },
    /// Answered, timed out or failed: the outcome waits for its caller. Its id is not handed
    /// out again until the caller has taken it or gone.
    Ended(Result<Response, Status>),
}

impl Call {
    fn waits(&self) -> bool {
        matches!(self, Call::Waiting { .. })
    }

    /// Ends a waiting call with `outcome`; returns its caller to wake (`None`: it had ended).
    fn end(&mut self, outcome: Result<Response, Status>) -> Option<Waker> {
        if !self.waits() {
            return None;
        }
        match std::mem::replace(self, Call::Ended(outcome)) {
            Call::Waiting { waker, .. } => Some(waker),
            Call::Ended(_) => None,
        }
    }
}

/// The calls of one connection that wait for a response, or for their caller to take it.
///
/// Ids count up from 1 and wrap after 65535; 0 is never used, because stmp-go answers
/// notifies with mid-0 responses, and an id still in the table is never handed out again. An
/// id whose slot in the table another call holds is skipped too ([`Slots`]).
#[derive(Debug)]
pub(crate) struct Pending {
    next: u16,
    calls: Slots<Call>,
    /// Calls in `calls` that have ended and wait for their caller.
    ended: usize,
    closed: Option<Status>,
    /// When the engine's alarm rings; `None` while it is not set.
    alarm: Option<Instant>,
    /// Answered callers not woken yet, in the order their responses came: each caller that
    /// takes its outcome (or goes) wakes the first of them.
    ///
    /// Woken all at once, a burst's callers filled the worker's queue, and the runtime woke
    /// its other worker to share them: a parked thread woken once per burst, the callers
    /// split between two cores, and the lines of this table and of the send queue moving
    /// between them on every call. Woken one by one, each runs right after the one before it,
    /// on the same worker (next in line: the runtime runs the task woken last first).
    relay: VecDeque<Waker>,
}

impl Default for Pending {
    fn default() -> Self {
        Pending {
            next: 1,
            calls: Slots::default(),
            ended: 0,
            closed: None,
            alarm: None,
            relay: VecDeque::new(),
        }
    }
}

impl Pending {
    /// Reserves an id for a new call, whose caller `waker` wakes; says too whether the alarm
    /// must be set sooner for it.
    pub(crate) fn register(
        &mut self,
        now: Instant,
        timeout: Duration,
        waker: Waker,
    ) -> Result<(u16, bool), Status> {
        if let Some(status) = &self.closed {
            return Err(status.clone());
        }
        if self.calls.len() >= usize::from(u16::MAX) {
            return Err(Status::too_many_requests(
                "65535 calls are already waiting on this connection",
            ));
        }
        self.calls.reserve_one();
        let mut mid = self.next;
        while mid == 0 || !self.calls.is_free(mid) {
            mid = mid.wrapping_add(1);
        }
        self.next = mid.wrapping_add(1);
        // A deadline beyond what an Instant holds is no deadline: a century is as good.
        let deadline = now
            .checked_add(timeout)
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400));
        self.calls.insert(
            mid,
            Call::Waiting {
                waker,
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

    /// Takes call `mid`'s outcome if it has one; otherwise keeps `waker` to wake when it does.
    fn poll_outcome(&mut self, mid: u16, waker: &Waker) -> Poll<Result<Response, Status>> {
        match self.calls.get_mut(mid) {
            Some(Call::Waiting { waker: kept, .. }) => {
                // A task moved between polls brings a waker of its own.
                if !kept.will_wake(waker) {
                    kept.clone_from(waker);
                }
                Poll::Pending
            }
            Some(Call::Ended(_)) => match self.calls.remove(mid) {
                Some(Call::Ended(outcome)) => {
                    self.ended -= 1;
                    Poll::Ready(outcome)
                }
                _ => Poll::Ready(Err(gone())),
            },
            // Not registered on this table, or forgotten: nothing will answer it.
            None => Poll::Ready(Err(gone())),
        }
    }

    /// Forgets a call (its future was dropped); returns whether it was waiting.
    pub(crate) fn forget(&mut self, mid: u16) -> bool {
        match self.calls.remove(mid) {
            Some(Call::Waiting { .. }) => true,
            Some(Call::Ended(_)) => {
                self.ended -= 1;
                false
            }
            None => false,
        }
    }

    /// Ends call `mid` with `outcome` if it waits; returns its caller to wake.
    fn end(&mut self, mid: u16, outcome: Result<Response, Status>) -> Option<Waker> {
        // A second response to the same call finds it ended: the first one stands.
        let waker = self.calls.get_mut(mid)?.end(outcome)?;
        self.ended += 1;
        Some(waker)
    }

    /// Ends the calls due at `now` with `RequestTimeout`, adding their callers to `woken`;
    /// returns when the alarm should ring next, which is also what later registrations
    /// compare with.
    fn expire(&mut self, now: Instant, woken: &mut Vec<Waker>) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        for call in self.calls.values_mut() {
            let Call::Waiting {
                deadline, timeout, ..
            } = call
            else {
                continue;
            };
            if *deadline > now {
                next = Some(next.map_or(*deadline, |next| next.min(*deadline)));
                continue;
            }
            let timed_out = Status::request_timeout(format!("no response within {timeout:?}"));
            if let Some(waker) = call.end(Err(timed_out)) {
                woken.push(waker);
                self.ended += 1;
            }
        }
        let sweep = Duration::from_nanos(SWEEP_NS_PER_CALL * self.len() as u64);
        self.alarm = next.map(|next| next.max(now + sweep));
        self.alarm
    }

    /// Ends every waiting call with `status`, adding their callers to `woken`, and fails
    /// every later one.
    fn close(&mut self, status: Status, woken: &mut Vec<Waker>) {
        for call in self.calls.values_mut().filter(|call| call.waits()) {
            woken.extend(call.end(Err(status.clone())));
        }
        self.ended = self.calls.len();
        self.closed = Some(status);
        self.alarm = None;
    }

    /// How many calls wait for a response.
    pub(crate) fn len(&self) -> usize {
        self.calls.len() - self.ended
    }
}

/// The outcome of a call that the table does not hold.
fn gone() -> Status {
    Status::network_error("the call is no longer on this connection")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Code;
    use bytes::Bytes;
    use std::sync::Arc;
    use std::task::Wake;

    const MINUTE: Duration = Duration::from_secs(60);

    /// A waker that counts its wakes.
    #[derive(Default)]
    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn counter() -> (Arc<Counter>, Waker) {
        let counter = Arc::new(Counter::default());
        (counter.clone(), Waker::from(counter))
    }

    fn wakes(counter: &Counter) -> usize {
        counter.0.load(Ordering::Relaxed)
    }

    /// Registers a call due in a minute; returns its id and whether it set the alarm sooner.
    fn register(pending: &mut Pending) -> Result<(u16, bool), Status> {
        pending.register(Instant::now(), MINUTE, Waker::noop().clone())
    }

    fn register_on(calls: &Calls, timeout: Duration) -> Registered {
        calls
            .register(Instant::now(), timeout, Waker::noop())
            .unwrap()
    }

    fn response(mid: u16) -> Response {
        Response {
            mid,
            status: Code::Ok,
            header: Default::default(),
            payload: Bytes::new(),
        }
    }

    /// The outcome of call `mid`, if it has one.
    fn outcome(calls: &Calls, mid: u16) -> Option<Result<Response, Status>> {
        match calls.poll_outcome(mid, Waker::noop()) {
            Poll::Ready(outcome) => Some(outcome),
            Poll::Pending => None,
        }
    }

    /// Hands the responses to `mids` over as one burst; returns how many calls took theirs.
    fn complete(calls: &Calls, mids: &[u16]) -> usize {
        let mut answers = Answers::default();
        for &mid in mids {
            answers.push(response(mid));
        }
        let mut told = 0;
        let handed = calls.complete(&mut answers, |callers| {
            assert!(
                calls.table.try_lock().is_err(),
                "told before a caller can take its outcome"
            );
            told = callers;
        });
        assert_eq!(told, handed, "the count of callers woken is told first");
        assert!(answers.batch.is_empty() && answers.woken.is_empty());
        handed
    }

    #[test]
    fn a_burst_is_handed_over_once_it_holds_max_responses() {
        let mut answers = Answers::default();
        for mid in 1..Answers::MAX as u16 {
            assert!(!answers.push(response(mid)), "{mid} responses wait");
        }
        assert!(answers.push(response(Answers::MAX as u16)));
    }

    #[test]
    fn ids_start_at_one_count_up_wrap_and_skip_zero_and_waiting_ids() {
        let mut pending = Pending::default();
        let (first, _) = register(&mut pending).unwrap();
        assert_eq!(first, 1);
        let mut last = first;
        let mut wraps = 0;
        for _ in 0..70_000 {
            let (mid, _) = register(&mut pending).unwrap();
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
        // 64 calls in flight, the oldest answered and taken as each new one is made: the ids
        // go up one at a time, so calls made one after another sit side by side in the table.
        let mut pending = Pending::default();
        let mut flight: std::collections::VecDeque<u16> =
            (0..64).map(|_| register(&mut pending).unwrap().0).collect();
        for _ in 0..70_000 {
            let oldest = flight.pop_front().unwrap();
            assert!(pending.end(oldest, Ok(response(oldest))).is_some());
            assert!(pending.poll_outcome(oldest, Waker::noop()).is_ready());
            let newest = *flight.back().unwrap();
            let (next, _) = register(&mut pending).unwrap();
            let expected = match newest.wrapping_add(1) {
                0 => 1,
                id => id,
            };
            assert_eq!(next, expected);
            flight.push_back(next);
        }
        assert_eq!(pending.len(), 64);
    }

    #[test]
    fn an_ended_call_keeps_its_id_until_its_caller_takes_the_outcome_or_goes() {
        let mut pending = Pending::default();
        let (first, _) = register(&mut pending).unwrap();
        let (second, _) = register(&mut pending).unwrap();
        assert!(pending.end(first, Ok(response(first))).is_some());
        assert!(pending.end(second, Ok(response(second))).is_some());
        assert_eq!(pending.len(), 0, "ended calls do not wait");
        assert!(
            pending.end(first, Ok(response(first))).is_none(),
            "a second response to a call wakes nobody"
        );
        // Through a wrap of the ids, neither id is handed out while its outcome waits.
        for _ in 0..70_000 {
            let (mid, _) = register(&mut pending).unwrap();
            assert!(mid != first && mid != second);
            pending.forget(mid);
        }
        let Poll::Ready(Ok(taken)) = pending.poll_outcome(first, Waker::noop()) else {
            panic!("the first call's response waits for it");
        };
        assert_eq!(taken.mid, first);
        assert!(
            !pending.forget(second),
            "an ended call that is forgotten was not waiting"
        );
        assert_eq!(pending.calls.len(), 0, "both ids are free again");
        assert_eq!(pending.ended, 0);
        assert!(pending.poll_outcome(first, Waker::noop()).is_ready());
    }

    #[test]
    fn a_caller_is_woken_once_through_the_waker_it_polled_with_last() {
        let calls = Calls::new();
        let (registered_with, waker) = counter();
        let call = calls.register(Instant::now(), MINUTE, &waker).unwrap();
        assert!(outcome(&calls, call.mid).is_none());
        // The caller's task was polled again elsewhere: the table now holds the new waker.
        let (moved, moved_waker) = counter();
        assert!(calls.poll_outcome(call.mid, &moved_waker).is_pending());
        assert_eq!(complete(&calls, &[call.mid, call.mid]), 1);
        assert_eq!((wakes(&registered_with), wakes(&moved)), (0, 1));
        assert_eq!(outcome(&calls, call.mid).unwrap().unwrap().mid, call.mid);
    }

    /// Registers `n` calls, each with a waker of its own.
    fn callers(calls: &Calls, n: usize) -> Vec<(u16, Arc<Counter>)> {
        (0..n)
            .map(|_| {
                let (woken, waker) = counter();
                let mid = calls.register(Instant::now(), MINUTE, &waker).unwrap().mid;
                (mid, woken)
            })
            .collect()
    }

    fn mids_of(callers: &[(u16, Arc<Counter>)]) -> Vec<u16> {
        callers.iter().map(|(mid, _)| *mid).collect()
    }

    fn wakes_of(callers: &[(u16, Arc<Counter>)]) -> Vec<usize> {
        callers.iter().map(|(_, woken)| wakes(woken)).collect()
    }

    #[test]
    fn a_bursts_callers_are_woken_one_by_one_as_each_takes_its_outcome_or_goes() {
        let calls = Calls::new();
        let callers = callers(&calls, 4);
        let mids = mids_of(&callers);
        // Answered out of the order they were made in: woken in the order of the answers.
        assert_eq!(complete(&calls, &[mids[2], mids[0], mids[3], mids[1]]), 4);
        assert_eq!(wakes_of(&callers), [0, 0, 1, 0]);
        assert!(calls.is_relaying());
        assert!(outcome(&calls, mids[2]).unwrap().is_ok());
        assert_eq!(wakes_of(&callers), [1, 0, 1, 0]);
        // A call still waiting is in no relay: dropped, it passes nothing on.
        let waiting = register_on(&calls, MINUTE).mid;
        assert!(calls.forget(waiting));
        assert_eq!(wakes_of(&callers), [1, 0, 1, 0]);
        // A caller that goes instead of taking its outcome passes the relay on too.
        assert!(!calls.forget(mids[0]), "it had been answered");
        assert_eq!(wakes_of(&callers), [1, 0, 1, 1]);
        // A caller polled before its turn takes its outcome and wakes the next in line.
        assert!(outcome(&calls, mids[1]).unwrap().is_ok());
        assert_eq!(wakes_of(&callers), [1, 1, 1, 1]);
        assert!(!calls.is_relaying());
        assert!(outcome(&calls, mids[3]).unwrap().is_ok());
        assert_eq!(wakes_of(&callers), [1, 1, 1, 1], "each is woken once");
    }

    #[test]
    fn a_burst_answered_while_the_relay_is_under_way_joins_its_end() {
        let calls = Calls::new();
        let callers = callers(&calls, 4);
        let mids = mids_of(&callers);
        assert_eq!(complete(&calls, &mids[..2]), 2);
        assert_eq!(complete(&calls, &mids[2..]), 2);
        assert_eq!(wakes_of(&callers), [1, 0, 0, 0]);
        for (i, &mid) in mids.iter().enumerate() {
            assert!(outcome(&calls, mid).unwrap().is_ok());
            let expected: Vec<usize> = (0..4).map(|j| usize::from(j <= i + 1)).collect();
            assert_eq!(wakes_of(&callers), expected);
        }
    }

    #[test]
    fn callers_left_in_the_relay_are_woken_at_once_by_the_engine_a_sweep_or_a_close() {
        let calls = Calls::new();
        let callers = callers(&calls, 3);
        let mids = mids_of(&callers);
        assert_eq!(complete(&calls, &mids), 3);
        // The first caller's task does not poll its call: the others are woken all together.
        assert_eq!(calls.wake_relayed(), 2);
        assert_eq!(wakes_of(&callers), [1, 1, 1]);
        assert!(!calls.is_relaying());
        assert_eq!(calls.wake_relayed(), 0);

        let callers = self::callers(&calls, 2);
        let mids = mids_of(&callers);
        assert_eq!(complete(&calls, &mids), 2);
        assert_eq!(calls.expire(Instant::now(), |_| {}), None);
        assert_eq!(wakes_of(&callers), [1, 1], "a sweep wakes the relay");
        assert!(!calls.is_relaying());

        let mut callers = self::callers(&calls, 3);
        let mids = mids_of(&callers);
        assert_eq!(complete(&calls, &mids[..2]), 2);
        calls.close(Status::network_error("gone"), |_| {});
        assert_eq!(
            wakes_of(&callers),
            [1, 1, 1],
            "a close wakes the relay and the call still waiting"
        );
        assert!(!calls.is_relaying());
        let last = callers.pop().unwrap();
        assert_eq!(
            outcome(&calls, last.0).unwrap().unwrap_err().code(),
            Code::NetworkError
        );
    }

    #[test]
    fn unknown_responses_are_dropped_and_close_fails_and_wakes_waiters() {
        let calls = Calls::new();
        let (woken, waker) = counter();
        let call = calls.register(Instant::now(), MINUTE, &waker).unwrap();
        assert_eq!((call.waiting, calls.len()), (1, 1));
        assert_eq!(complete(&calls, &[call.mid + 1]), 0);
        assert_eq!(calls.len(), 1);
        assert_eq!(wakes(&woken), 0);
        let mut told = 0;
        calls.close(Status::network_error("gone"), |callers| {
            assert!(calls.table.try_lock().is_err(), "told under the lock");
            told = callers;
        });
        assert_eq!((told, wakes(&woken)), (1, 1));
        assert_eq!(
            outcome(&calls, call.mid).unwrap().unwrap_err().code(),
            Code::NetworkError
        );
        assert_eq!(
            calls
                .register(Instant::now(), MINUTE, Waker::noop())
                .unwrap_err()
                .code(),
            Code::NetworkError
        );
        assert_eq!(calls.len(), 0);
    }

    #[test]
    fn the_count_read_without_the_lock_follows_every_change() {
        let calls = Calls::new();
        let first = register_on(&calls, MINUTE).mid;
        let second = register_on(&calls, MINUTE);
        assert_eq!((second.waiting, calls.len()), (2, 2));
        assert_eq!(complete(&calls, &[first]), 1);
        assert_eq!(calls.len(), 1);
        assert_eq!(outcome(&calls, first).unwrap().unwrap().mid, first);
        assert_eq!(calls.len(), 1);
        assert!(calls.forget(second.mid));
        assert_eq!(calls.len(), 0);
        assert_eq!(complete(&calls, &[second.mid]), 0);
    }

    #[test]
    fn a_burst_hands_each_response_to_its_call_and_drops_the_rest() {
        let calls = Calls::new();
        let mids: Vec<u16> = (0..3).map(|_| register_on(&calls, MINUTE).mid).collect();
        // Out of order, one twice, and one that no call waits for.
        let unknown = mids.iter().max().unwrap() + 1;
        assert_eq!(complete(&calls, &[mids[2], mids[0], mids[0], unknown]), 2);
        assert_eq!(calls.len(), 1);
        for i in [0, 2] {
            let answer = outcome(&calls, mids[i]).unwrap().unwrap();
            assert_eq!(answer.mid, mids[i]);
        }
        assert!(
            outcome(&calls, mids[1]).is_none(),
            "a call left out of the burst still waits"
        );
        assert_eq!(complete(&calls, &[mids[1]]), 1);
        assert_eq!(calls.len(), 0);
    }

    #[test]
    fn full_table_is_too_many_requests() {
        let mut pending = Pending::default();
        for _ in 0..u16::MAX {
            register(&mut pending).unwrap();
        }
        assert_eq!(pending.len(), 65535);
        assert_eq!(
            register(&mut pending).unwrap_err().code(),
            Code::TooManyRequests
        );
        // Ended calls whose callers have not come for their outcome still hold their ids.
        assert!(pending.end(7, Ok(response(7))).is_some());
        assert_eq!(pending.len(), 65534);
        assert_eq!(
            register(&mut pending).unwrap_err().code(),
            Code::TooManyRequests
        );
        assert!(pending.poll_outcome(7, Waker::noop()).is_ready());
        assert_eq!(register(&mut pending).unwrap().0, 7);
    }

    #[test]
    fn due_calls_time_out_and_the_alarm_follows_the_earliest_deadline_left() {
        let calls = Calls::new();
        let start = Instant::now();
        let slow = calls.register(start, MINUTE, Waker::noop()).unwrap();
        assert!(slow.sooner, "the first call sets the alarm");
        let later = calls.register(start, 2 * MINUTE, Waker::noop()).unwrap();
        assert!(!later.sooner, "a later deadline leaves the alarm as it is");
        let (quick_woken, quick_waker) = counter();
        let quick = calls
            .register(start, Duration::from_secs(1), &quick_waker)
            .unwrap();
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

        let mut told = 0;
        let next = calls.expire(start + Duration::from_secs(1), |callers| {
            assert!(calls.table.try_lock().is_err(), "told under the lock");
            told = callers;
        });
        assert_eq!(next, Some(start + MINUTE));
        assert_eq!((told, wakes(&quick_woken)), (1, 1));
        let timed_out = outcome(&calls, quick.mid).unwrap().unwrap_err();
        assert_eq!(timed_out.code(), Code::RequestTimeout);
        assert_eq!(timed_out.message(), "no response within 1s");
        assert_eq!(calls.len(), 2);
        // The calls not due still wait, and still take their responses.
        assert_eq!(complete(&calls, &[later.mid]), 1);
        assert_eq!(
            calls.expire(start + MINUTE, |_| {}),
            None,
            "no call is left waiting"
        );
        assert_eq!(
            outcome(&calls, slow.mid).unwrap().unwrap_err().code(),
            Code::RequestTimeout
        );
        assert!(
            outcome(&calls, later.mid).unwrap().is_ok(),
            "a response taken late is still its call's"
        );
        // With no alarm set, the next call sets it again.
        assert!(calls.register(start, MINUTE, Waker::noop()).unwrap().sooner);
    }

    #[test]
    fn with_many_calls_waiting_the_alarm_rings_no_more_often_than_a_sweep_costs() {
        let calls = Calls::new();
        let start = Instant::now();
        for i in 0..1000u64 {
            calls
                .register(start, Duration::from_nanos(i + 1), Waker::noop())
                .unwrap();
        }
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
    }
}
