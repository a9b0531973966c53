//! Which transport a connection runs on, and what the engine must know of it.

use std::fmt;

/// A transport: what a client's URL names, and what a connection on either side runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scheme {
    Tcp,
    Tls,
    Ws,
    Wss,
    Quic,
}

impl Scheme {
    /// The scheme as written in URLs, and as [`Conn::transport`](crate::Conn::transport)
    /// names it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Scheme::Tcp => "tcp",
            Scheme::Tls => "tls",
            Scheme::Ws => "ws",
            Scheme::Wss => "wss",
            Scheme::Quic => "quic",
        }
    }

    /// The cargo feature that carries this transport.
    pub(crate) fn feature(self) -> &'static str {
        match self {
            Scheme::Tcp => "default",
            Scheme::Tls => "tls",
            Scheme::Ws => "ws",
            Scheme::Wss => "ws` and `tls",
            Scheme::Quic => "quic",
        }
    }

    /// Whether a connection's write sends: the task that writes hands the bytes to the kernel
    /// itself. On a server a QUIC stream's write only hands them to quinn's connection task,
    /// which sends what the stream holds when it next runs. The writer task steps aside for
    /// more packets before a write only where the write is the send (`conn::writer_task`):
    /// over QUIC, quinn's task gathers the writes already.
    ///
    /// A client's QUIC write does send (`transport::quic::client`), but its writer does not
    /// step aside either: with its callers relayed, stmp quic made 393–595k calls/s at 64 in
    /// flight with the writer stepping aside, against 772–954k without (three alternated
    /// rounds, session 51).
    pub(crate) fn writes_send(self) -> bool {
        match self {
            Scheme::Tcp | Scheme::Tls | Scheme::Ws | Scheme::Wss => true,
            Scheme::Quic => false,
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_write_is_the_send_except_over_quic() {
        for scheme in [Scheme::Tcp, Scheme::Tls, Scheme::Ws, Scheme::Wss] {
            assert!(scheme.writes_send(), "{scheme}");
        }
        assert!(!Scheme::Quic.writes_send());
    }
}
