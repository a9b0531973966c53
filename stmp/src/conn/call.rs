//! Options of one call, and the trait generated client stubs call through.

use std::future::Future;
use std::time::Duration;

use crate::codec::Message;
use crate::wire::Header;
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
