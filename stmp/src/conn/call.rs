//! Options of one call, the trait generated client stubs call through, and a call on its way.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use bytes::Bytes;

use super::closed_error;
use super::outbox::Push;
use crate::codec::Message;
use crate::wire::{Action, Header, Packet, Request, Response};
use crate::{Conn, Method, Status};

/// Options of one call.
///
/// ```
/// use std::time::Duration;
/// use stmp::CallOptions;
///
/// let options = CallOptions::new()
///     .timeout(Duration::from_secs(2))
///     .header("trace-id", "42");
/// assert_eq!(options.header.get("trace-id"), Some("42"));
/// ```
#[derive(Clone, Debug, Default)]
pub struct CallOptions {
    /// The deadline; `None` uses the side's default.
    pub timeout: Option<Duration>,
    /// Header entries sent with the request.
    pub header: Header,
}

impl CallOptions {
    /// Default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the deadline.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Adds a header entry.
    pub fn header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.header.append(key, value);
        self
    }
}

/// Something calls can go through: a [`Client`](crate::Client) (which waits for a connection
/// while it reconnects) or a [`Conn`] (a server calling one of its clients).
pub trait Caller: Clone + Send + Sync + 'static {
    /// Calls `method` and decodes its answer.
    fn call<I: Message, O: Message>(
        &self,
        method: &'static Method,
        input: &I,
        options: CallOptions,
    ) -> impl Future<Output = Result<O, Status>> + Send;

    /// Sends `method` as a notify: no answer is awaited. It waits only for room in the send
    /// queue (and, on a reconnecting client, for a connection), up to the deadline.
    fn notify<I: Message>(
        &self,
        method: &'static Method,
        input: &I,
        options: CallOptions,
    ) -> impl Future<Output = Result<(), Status>> + Send;
}

impl Caller for Conn {
    async fn call<I: Message, O: Message>(
        &self,
        method: &'static Method,
        input: &I,
        options: CallOptions,
    ) -> Result<O, Status> {
        self.call_with(method, input, options).await
    }

    async fn notify<I: Message>(
        &self,
        method: &'static Method,
        input: &I,
        options: CallOptions,
    ) -> Result<(), Status> {
        let payload = self.codec().encode(input)?;
        let send = self.notify_raw(method.wire_action(), options.header, payload);
        match options.timeout {
            Some(deadline) => tokio::time::timeout(deadline, send)
                .await
                .map_err(|_| Status::request_timeout(format!("not sent within {deadline:?}")))?,
            None => send.await,
        }
    }
}

/// A call on its way: registered at its first poll, its request goes into the send queue (or
/// out at once, when it is the only call and the writer waits), then its outcome is awaited
/// in the calls' table. Dropped before it took its outcome, the call is forgotten.
///
/// Written out rather than as an `async` block around a `select!`: each layer of those kept a
/// copy of the request of its own in the caller's task, and `Conn::request_raw`'s future took
/// 808 bytes. At 64 calls in flight the callers' tasks move between the workers, and every
/// line of a task's state written on one core is a miss on the next. Registering at the first
/// poll hands the table the caller's waker under the lock the registration takes anyway.
pub(super) struct CallInFlight<'a> {
    conn: &'a Conn,
    timeout: Duration,
    stage: Stage<'a>,
    /// From its registration until it took its outcome.
    mid: Option<u16>,
}

enum Stage<'a> {
    /// Not registered yet: what its request is made of.
    Unsent {
        action: Action,
        header: Header,
        payload: Bytes,
    },
    /// Its request waits for room in the send queue.
    Queuing { push: Push<'a>, cost: usize },
    /// Its request is queued (or written): the outcome is all that is left.
    Queued,
}

impl<'a> CallInFlight<'a> {
    pub(super) fn new(
        conn: &'a Conn,
        action: Action,
        header: Header,
        payload: Bytes,
        timeout: Duration,
    ) -> Self {
        CallInFlight {
            conn,
            timeout,
            stage: Stage::Unsent {
                action,
                header,
                payload,
            },
            mid: None,
        }
    }

    /// Registers the call with `waker` and makes its request's way into the send queue.
    fn register(&mut self, waker: &Waker) -> Result<(), Status> {
        let Stage::Unsent {
            action,
            header,
            payload,
        } = std::mem::replace(&mut self.stage, Stage::Queued)
        else {
            return Ok(());
        };
        let conn = self.conn;
        let now = tokio::time::Instant::now().into_std();
        let call = conn.shared.pending.register(now, self.timeout, waker)?;
        self.mid = Some(call.mid);
        if call.sooner {
            conn.shared.close_requested.sooner_deadline();
        }
        let request = Packet::Request(Request {
            mid: call.mid,
            action,
            header,
            payload,
        });
        let cost = conn.queue_cost(&request);
        // A lone call may leave at once from this task; with others under way, the writer
        // task gathers them into one write.
        let inline = call.waiting == 1;
        self.stage = Stage::Queuing {
            push: conn.shared.outbox.push(request, cost, inline),
            cost,
        };
        Ok(())
    }
}

impl Future for CallInFlight<'_> {
    type Output = Result<Response, Status>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        // The registration holds this poll's waker: until it is woken, there is no outcome.
        let registering = matches!(this.stage, Stage::Unsent { .. });
        if registering && let Err(status) = this.register(cx.waker()) {
            return Poll::Ready(Err(status));
        }
        if let Stage::Queuing { push, cost } = &mut this.stage {
            match Pin::new(push).poll(cx) {
                Poll::Ready(Ok(offered)) => {
                    this.conn.write_if_handed_back(offered, *cost);
                    this.stage = Stage::Queued;
                }
                Poll::Ready(Err(_)) => return Poll::Ready(Err(closed_error())),
                // The engine ends the call at its deadline through the table, also while the
                // request still waits for room in the send queue.
                Poll::Pending => {}
            }
        }
        if registering {
            return Poll::Pending;
        }
        let Some(mid) = this.mid else {
            return Poll::Ready(Err(closed_error()));
        };
        let outcome = ready!(this.conn.shared.pending.poll_outcome(mid, cx.waker()));
        // The table let go of the call as it handed over the outcome.
        this.mid = None;
        this.conn.shared.outbox.caller_back();
        Poll::Ready(outcome)
    }
}

impl Drop for CallInFlight<'_> {
    fn drop(&mut self) {
        let shared = &self.conn.shared;
        if let Some(mid) = self.mid
            && !shared.pending.forget(mid)
        {
            // Answered (or ended) already: this caller will not come back for it.
            shared.outbox.caller_back();
        }
    }
}
