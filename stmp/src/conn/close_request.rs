//! What a connection's engine must hear about between packets, raised by anyone and waited
//! for by the engine: a request to close and the failure of its writer, which stay raised, and
//! a call whose deadline comes before the engine's alarm, which the engine takes when it
//! hears it.
//!
//! Not a `CancellationToken` because of where it is waited for: the engine checks it every time
//! it wakes, before it reads, and a token's check takes its mutex. Under a broadcast to many
//! connections that check ran once per event on every receiving connection. This is one
//! atomic load while nothing has happened. The writer's failure comes the same way rather
//! than through a channel of its own: one more thing to poll, in memory of its own, at every
//! event.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

use crate::Status;

/// The close was asked for.
const CLOSE: u8 = 1;
/// The writer failed or ended.
const WRITE_FAILED: u8 = 2;
/// A call was registered with a deadline before the calls' alarm.
const SOONER_DEADLINE: u8 = 4;

/// `repr(C)`: the flag and the waker, which the engine looks at on every turn, come first and
/// share a cache line.
#[derive(Debug, Default)]
#[repr(C)]
pub(crate) struct CloseRequest {
    raised: AtomicU8,
    /// The engine, while it waits.
    engine: AtomicWaker,
    /// Why the writer failed; set before [`WRITE_FAILED`] is raised.
    write_failure: OnceLock<Status>,
}

/// What the engine heard.
#[derive(Debug, PartialEq)]
pub(crate) enum Heard {
    CloseRequested,
    WriteFailed(Status),
    /// A call's deadline is sooner than the alarm the engine has set for its calls.
    SoonerDeadline,
}

impl CloseRequest {
    /// Asks for the close; the engine wakes if it waits. Asking again does nothing more.
    pub(crate) fn request(&self) {
        self.raise(CLOSE);
    }

    /// Reports that the writer failed (or ended): the engine wakes and ends the connection.
    /// The first report's status is the one it hears.
    pub(crate) fn write_failed(&self, status: Status) {
        let _ = self.write_failure.set(status);
        self.raise(WRITE_FAILED);
    }

    /// Tells the engine that a call's deadline comes before the alarm it has set.
    pub(crate) fn sooner_deadline(&self) {
        self.raise(SOONER_DEADLINE);
    }

    fn raise(&self, bit: u8) {
        if self.raised.fetch_or(bit, Ordering::AcqRel) & bit == 0 {
            self.engine.wake();
        }
    }

    /// Whether anything was reported that the engine has not heard yet.
    pub(crate) fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Acquire) != 0
    }

    #[cfg(test)]
    pub(crate) fn is_requested(&self) -> bool {
        self.raised.load(Ordering::Acquire) & CLOSE != 0
    }

    fn heard(&self, close: bool) -> Option<Heard> {
        let raised = self.raised.load(Ordering::Acquire);
        if raised & WRITE_FAILED != 0 {
            let status = self
                .write_failure
                .get()
                .cloned()
                .unwrap_or_else(|| Status::network_error("cannot write to the connection"));
            return Some(Heard::WriteFailed(status));
        }
        if close && raised & CLOSE != 0 {
            return Some(Heard::CloseRequested);
        }
        if raised & SOONER_DEADLINE != 0 {
            // Heard once: taken down for the next call that needs the alarm sooner.
            self.raised.fetch_and(!SOONER_DEADLINE, Ordering::AcqRel);
            return Some(Heard::SoonerDeadline);
        }
        None
    }

    /// Whether the writer failed, or, with `close`, whether the close was asked for (a failure
    /// first); if neither, the engine behind `cx` is woken when one is reported. Meant for one
    /// waiter at a time, the engine.
    pub(crate) fn poll_heard(&self, cx: &mut Context<'_>, close: bool) -> Poll<Heard> {
        if let Some(heard) = self.heard(close) {
            return Poll::Ready(heard);
        }
        self.engine.register(cx.waker());
        // A report between the check and the registration found no waker to wake.
        match self.heard(close) {
            Some(heard) => Poll::Ready(heard),
            None => Poll::Pending,
        }
    }

    /// Waits until [`poll_heard`](Self::poll_heard) hears something.
    #[cfg(test)]
    pub(crate) async fn heard_of(&self, close: bool) -> Heard {
        std::future::poll_fn(|cx| self.poll_heard(cx, close)).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    /// An engine task waiting to hear of `close` (with `listen_for_close`, as while open).
    fn engine_waiting(
        close: &Arc<CloseRequest>,
        listen_for_close: bool,
    ) -> tokio::task::JoinHandle<Heard> {
        let close = close.clone();
        tokio::spawn(async move { close.heard_of(listen_for_close).await })
    }

    #[tokio::test]
    async fn a_waiting_engine_is_woken_by_the_request() {
        let close = Arc::new(CloseRequest::default());
        let waiting = engine_waiting(&close, true);
        // The waiter is parked before the request comes.
        tokio::task::yield_now().await;
        assert!(!close.is_requested());
        close.request();
        let heard = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(heard, Heard::CloseRequested);
    }

    #[tokio::test]
    async fn a_request_made_before_the_wait_is_seen_at_once_and_again_later() {
        let close = CloseRequest::default();
        close.request();
        close.request();
        assert_eq!(close.heard_of(true).await, Heard::CloseRequested);
        assert_eq!(close.heard_of(true).await, Heard::CloseRequested);
        assert!(close.is_requested());
    }

    #[tokio::test]
    async fn a_closing_engine_hears_only_the_writer_and_its_first_status() {
        let close = Arc::new(CloseRequest::default());
        close.request();
        let waiting = engine_waiting(&close, false);
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "the close request is not heard again"
        );
        close.write_failed(Status::network_error("reset"));
        close.write_failed(Status::network_error("later"));
        let heard = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(heard, Heard::WriteFailed(Status::network_error("reset")));
        // A failure comes before a close request.
        assert_eq!(
            close.heard_of(true).await,
            Heard::WriteFailed(Status::network_error("reset"))
        );
    }

    #[tokio::test]
    async fn a_sooner_deadline_wakes_the_engine_once_per_raise() {
        let close = Arc::new(CloseRequest::default());
        let waiting = engine_waiting(&close, true);
        tokio::task::yield_now().await;
        close.sooner_deadline();
        let heard = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(heard, Heard::SoonerDeadline);
        // Taken when heard: the next wait waits.
        let again = futures_util::FutureExt::now_or_never(close.heard_of(true));
        assert_eq!(again, None, "heard twice");
        close.sooner_deadline();
        assert_eq!(close.heard_of(true).await, Heard::SoonerDeadline);
    }
}
