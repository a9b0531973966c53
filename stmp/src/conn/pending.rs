//! Calls waiting for their response, by message id.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::oneshot;

use crate::Status;
use crate::id_map::IdMap;
use crate::sync::lock;
use crate::wire::Response;

/// What a call waits on for its response.
pub(crate) type Answer = oneshot::Receiver<Result<Response, Status>>;

/// A connection's [`Pending`] table behind its lock, with its size readable without the lock:
/// the writer and the engine ask how many calls wait on every batch and every request.
#[derive(Debug, Default)]
pub(crate) struct Calls {
    table: Mutex<Pending>,
    waiting: AtomicUsize,
}

impl Calls {
    /// Reserves an id for a new call; also says how many calls wait now, this one included.
    pub(crate) fn register(&self) -> Result<(u16, Answer, usize), Status> {
        let mut table = lock(&self.table);
        let (mid, answer) = table.register()?;
        let waiting = table.len();
        self.waiting.store(waiting, Ordering::Relaxed);
        Ok((mid, answer, waiting))
    }

    /// Forgets a call whose future was dropped or timed out before its response came.
    pub(crate) fn forget(&self, mid: u16) {
        let mut table = lock(&self.table);
        table.forget(mid);
        self.waiting.store(table.len(), Ordering::Relaxed);
    }

    /// Hands a response to its call; a response nobody waits for is dropped.
    pub(crate) fn complete(&self, response: Response) -> bool {
        let sender = {
            let mut table = lock(&self.table);
            let sender = table.take(response.mid);
            self.waiting.store(table.len(), Ordering::Relaxed);
            sender
        };
        // Sent outside the lock: the send wakes the caller, which may lock the table at once.
        sender.is_some_and(|sender| sender.send(Ok(response)).is_ok())
    }

    /// Ends every waiting call with `status`, and every later one too.
    pub(crate) fn close(&self, status: Status) {
        let mut table = lock(&self.table);
        table.close(status);
        self.waiting.store(0, Ordering::Relaxed);
    }

    /// How many calls wait for a response (as of the last change; read without the lock).
    pub(crate) fn len(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }
}

/// The calls of one connection that wait for a response.
///
/// Ids count up from 1 and wrap after 65535; 0 is never used, because stmp-go answers
/// notifies with mid-0 responses, and an id still waiting is never handed out again.
#[derive(Debug)]
pub(crate) struct Pending {
    next: u16,
    waiting: IdMap<u16, oneshot::Sender<Result<Response, Status>>>,
    closed: Option<Status>,
}

impl Default for Pending {
    fn default() -> Self {
        Pending {
            next: 1,
            waiting: IdMap::default(),
            closed: None,
        }
    }
}

impl Pending {
    /// Reserves an id for a new call.
    pub(crate) fn register(&mut self) -> Result<(u16, Answer), Status> {
        if let Some(status) = &self.closed {
            return Err(status.clone());
        }
        if self.waiting.len() >= usize::from(u16::MAX) {
            return Err(Status::too_many_requests(
                "65535 calls are already waiting on this connection",
            ));
        }
        let mut mid = self.next;
        while mid == 0 || self.waiting.contains_key(&mid) {
            mid = mid.wrapping_add(1);
        }
        self.next = mid.wrapping_add(1);
        let (tx, rx) = oneshot::channel();
        self.waiting.insert(mid, tx);
        Ok((mid, rx))
    }

    /// Forgets a call (its future was dropped or timed out).
    pub(crate) fn forget(&mut self, mid: u16) {
        self.waiting.remove(&mid);
    }

    /// Takes the call waiting for the response `mid`, if one does.
    fn take(&mut self, mid: u16) -> Option<oneshot::Sender<Result<Response, Status>>> {
        self.waiting.remove(&mid)
    }

    /// Ends every waiting call with `status`, and every later one too.
    pub(crate) fn close(&mut self, status: Status) {
        for (_, tx) in self.waiting.drain() {
            let _ = tx.send(Err(status.clone()));
        }
        self.closed = Some(status);
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

    fn response(mid: u16) -> Response {
        Response {
            mid,
            status: Code::Ok,
            header: Default::default(),
            payload: Bytes::new(),
        }
    }

    #[test]
    fn ids_start_at_one_wrap_and_skip_zero_and_waiting_ids() {
        let mut pending = Pending::default();
        let (first, _keep) = pending.register().unwrap();
        assert_eq!(first, 1);
        for expected in 2..=u16::MAX {
            let (mid, _) = pending.register().unwrap();
            assert_eq!(mid, expected);
            pending.forget(mid);
        }
        // 1 is still waiting, 0 is never used: the wrap lands on 2.
        assert_eq!(pending.register().unwrap().0, 2);
    }

    #[test]
    fn unknown_responses_are_dropped_and_close_fails_waiters() {
        let calls = Calls::default();
        let (mid, mut rx, waiting) = calls.register().unwrap();
        assert_eq!((waiting, calls.len()), (1, 1));
        assert!(!calls.complete(response(mid + 1)));
        assert_eq!(calls.len(), 1);
        calls.close(Status::network_error("gone"));
        assert_eq!(
            rx.try_recv().unwrap().unwrap_err().code(),
            Code::NetworkError
        );
        assert_eq!(calls.register().unwrap_err().code(), Code::NetworkError);
        assert_eq!(calls.len(), 0);
    }

    #[test]
    fn the_count_read_without_the_lock_follows_every_change() {
        let calls = Calls::default();
        let (first, mut first_rx, _) = calls.register().unwrap();
        let (second, _second_rx, waiting) = calls.register().unwrap();
        assert_eq!((waiting, calls.len()), (2, 2));
        assert!(calls.complete(response(first)));
        assert_eq!(first_rx.try_recv().unwrap().unwrap().mid, first);
        assert_eq!(calls.len(), 1);
        calls.forget(second);
        assert_eq!(calls.len(), 0);
        assert!(!calls.complete(response(second)));
    }

    #[test]
    fn full_table_is_too_many_requests() {
        let mut pending = Pending::default();
        let receivers: Vec<_> = (0..u16::MAX).map(|_| pending.register().unwrap()).collect();
        assert_eq!(receivers.len(), 65535);
        assert_eq!(
            pending.register().unwrap_err().code(),
            Code::TooManyRequests
        );
    }
}
