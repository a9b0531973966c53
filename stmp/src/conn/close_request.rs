//! A request to close a connection, set once by anyone and waited for by its engine.
//!
//! Not a `CancellationToken` because of where it is waited for: the engine checks it every time
//! it wakes, before it reads, and a token's check takes its mutex. Under a broadcast to many
//! connections that check ran once per event on every receiving connection. This flag is one
//! atomic load while nobody has asked.

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

use futures_util::task::AtomicWaker;

#[derive(Debug, Default)]
pub(crate) struct CloseRequest {
    requested: AtomicBool,
    /// The engine, while it waits.
    engine: AtomicWaker,
}

impl CloseRequest {
    /// Asks for the close; the engine wakes if it waits. Asking again does nothing more.
    pub(crate) fn request(&self) {
        if !self.requested.swap(true, Ordering::AcqRel) {
            self.engine.wake();
        }
    }

    pub(crate) fn is_requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    /// Waits until the close is asked for. Meant for one waiter at a time, the engine.
    pub(crate) async fn requested(&self) {
        poll_fn(|cx| {
            if self.is_requested() {
                return Poll::Ready(());
            }
            self.engine.register(cx.waker());
            // A request between the check and the registration found no waker to wake.
            if self.is_requested() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_waiting_engine_is_woken_by_the_request() {
        let close = Arc::new(CloseRequest::default());
        let waiting = tokio::spawn({
            let close = close.clone();
            async move { close.requested().await }
        });
        // The waiter is parked before the request comes.
        tokio::task::yield_now().await;
        assert!(!close.is_requested());
        close.request();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .unwrap();
    }

    #[tokio::test]
    async fn a_request_made_before_the_wait_is_seen_at_once_and_again_later() {
        let close = CloseRequest::default();
        close.request();
        close.request();
        close.requested().await;
        close.requested().await;
        assert!(close.is_requested());
    }
}
