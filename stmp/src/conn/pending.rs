//! Calls waiting for their response, by message id.

use std::collections::HashMap;

use tokio::sync::oneshot;

use crate::Status;
use crate::wire::Response;

/// The calls of one connection that wait for a response.
///
/// Ids count up from 1 and wrap after 65535; 0 is never used, because stmp-go answers
/// notifies with mid-0 responses, and an id still waiting is never handed out again.
#[derive(Debug)]
pub(crate) struct Pending {
    next: u16,
    waiting: HashMap<u16, oneshot::Sender<Result<Response, Status>>>,
    closed: Option<Status>,
}

impl Default for Pending {
    fn default() -> Self {
        Pending {
            next: 1,
            waiting: HashMap::new(),
            closed: None,
        }
    }
}

impl Pending {
    /// Reserves an id for a new call.
    pub(crate) fn register(
        &mut self,
    ) -> Result<(u16, oneshot::Receiver<Result<Response, Status>>), Status> {
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

    /// Hands a response to its call; a response nobody waits for is dropped.
    pub(crate) fn complete(&mut self, response: Response) -> bool {
        match self.waiting.remove(&response.mid) {
            Some(tx) => tx.send(Ok(response)).is_ok(),
            None => false,
        }
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
        let mut pending = Pending::default();
        let (mid, mut rx) = pending.register().unwrap();
        assert!(!pending.complete(response(mid + 1)));
        pending.close(Status::network_error("gone"));
        assert_eq!(
            rx.try_recv().unwrap().unwrap_err().code(),
            Code::NetworkError
        );
        assert_eq!(pending.register().unwrap_err().code(), Code::NetworkError);
        assert_eq!(pending.len(), 0);
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
