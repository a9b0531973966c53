//! Reads sized by the traffic.
//!
//! Idle connections are the common case on a real-time server, so a connection that waits
//! with nothing buffered holds no read buffer at all. A busy one wants the opposite: with many
//! calls in flight, a small buffer costs one read syscall (and one allocation) per packet or
//! two. So the size of the next buffer doubles each time a read fills all the room it had, up
//! to [`MAX_READ_AHEAD`], and halves when reads use little of it; the size is a number kept
//! across idle periods, the memory is not.

#[cfg(test)]
use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

#[cfg(test)]
use tokio::io::{AsyncRead, ReadBuf};

/// The room a read starts with, and never goes below. At most what glibc's per-thread cache
/// keeps (1032 bytes): a connection that wakes once per event takes a buffer and gives it back
/// on each one, and a buffer from that cache is the one the last connection just gave back,
/// still in the CPU's cache. At 2 KiB each came from the allocator's shared bins: 0.6 more
/// cache lines missed and 180 more instructions per event on a client receiving a broadcast
/// (`stmp-bench/README.md`, session 34).
pub(crate) const MIN_READ_AHEAD: usize = 1 << 10;

/// The most room a busy connection reads into at once. A payload is a slice of the buffer it
/// arrived in, so a handler that keeps one keeps up to this much alive.
pub(crate) const MAX_READ_AHEAD: usize = 64 << 10;

/// The room the next read gets, following what the reads before it brought.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ReadAhead(u32);

impl ReadAhead {
    pub(crate) fn new() -> Self {
        ReadAhead(MIN_READ_AHEAD as u32)
    }

    pub(crate) fn room(self) -> usize {
        self.0 as usize
    }

    /// Adapts the next read's room to how much the last one (given `room`) brought.
    pub(crate) fn adapt(&mut self, read: usize, room: usize) {
        let now = self.room();
        let next = if read == room {
            (now * 2).min(MAX_READ_AHEAD)
        } else if read < now / 4 {
            (now / 2).max(MIN_READ_AHEAD)
        } else {
            now
        };
        self.0 = next as u32;
    }
}

/// A reader that counts the reads that brought bytes.
#[cfg(test)]
pub(crate) struct CountReads<R> {
    inner: R,
    pub(crate) reads: usize,
}

#[cfg(test)]
impl<R> CountReads<R> {
    pub(crate) fn new(inner: R) -> Self {
        CountReads { inner, reads: 0 }
    }
}

#[cfg(test)]
impl<R: AsyncRead + Unpin> AsyncRead for CountReads<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.reads += 1;
        }
        polled
    }
}
