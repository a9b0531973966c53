//! Reads sized by the traffic, for transports that read into buffers of their own.
//!
//! Idle connections are the common case on a real-time server, so a connection that waits
//! with nothing buffered holds no read buffer at all. A busy one wants the opposite: with many
//! calls in flight, a small buffer costs one read syscall (and one allocation) per packet or
//! two. So the size of the next buffer doubles each time a read fills all the room it had, up
//! to [`MAX_READ_AHEAD`], and halves when reads use little of it; the size is a number kept
//! across idle periods, the memory is not.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::io::poll_read_buf;

/// The room a read starts with, and never goes below.
pub(crate) const MIN_READ_AHEAD: usize = 2 << 10;

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

/// A byte stream whose reads go through a buffer of [`ReadAhead`] size, for a framing layer
/// that reads in small pieces. tungstenite reads at most what its frame buffer has room for,
/// often a frame or less: over a busy WebSocket that was 1.3 `recvfrom` per 1 KiB message,
/// where the packet reader of a byte stream makes 0.09 per call. Reads that ask for at least
/// the read-ahead go straight to the stream, and the buffer is given back whenever it is
/// emptied and the stream has nothing more: an idle connection holds none.
#[cfg_attr(not(feature = "ws"), allow(dead_code))]
pub(crate) struct ReadAheadStream<S> {
    inner: S,
    /// Made when first needed, by a read that asks for less than the read-ahead or one that
    /// fills its room: a connection that gets a message now and then reads straight from the
    /// stream and never needs it, and the stream lives as long as its connection.
    buffered: Option<Box<Buffered>>,
}

#[cfg_attr(not(feature = "ws"), allow(dead_code))]
struct Buffered {
    bytes: BytesMut,
    read_ahead: ReadAhead,
}

#[cfg_attr(not(feature = "ws"), allow(dead_code))]
impl<S> ReadAheadStream<S> {
    pub(crate) fn new(inner: S) -> Self {
        ReadAheadStream {
            inner,
            buffered: None,
        }
    }

    fn read_ahead(&self) -> ReadAhead {
        self.buffered
            .as_ref()
            .map_or_else(ReadAhead::new, |buffered| buffered.read_ahead)
    }

    #[cfg(test)]
    pub(crate) fn buffer_capacity(&self) -> usize {
        self.buffered
            .as_ref()
            .map_or(0, |buffered| buffered.bytes.capacity())
    }
}

/// The buffered state, made when first needed.
fn buffered_of(slot: &mut Option<Box<Buffered>>) -> &mut Buffered {
    slot.get_or_insert_with(|| {
        Box::new(Buffered {
            bytes: BytesMut::new(),
            read_ahead: ReadAhead::new(),
        })
    })
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAheadStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let room = this.read_ahead().room();
        let buffered = match &mut this.buffered {
            Some(buffered) if !buffered.bytes.is_empty() => buffered,
            // Nothing buffered, and room enough: the read goes straight to the stream.
            _ if out.remaining() >= room => {
                let (before, room) = (out.filled().len(), out.remaining());
                let polled = Pin::new(&mut this.inner).poll_read(cx, out);
                match polled {
                    Poll::Ready(Ok(())) => {
                        let mut read_ahead = this.read_ahead();
                        read_ahead.adapt(out.filled().len() - before, room);
                        // A read that filled its room asks for more room next time, which
                        // the next small read gets from the buffer.
                        if this.buffered.is_some() || read_ahead != ReadAhead::new() {
                            buffered_of(&mut this.buffered).read_ahead = read_ahead;
                        }
                    }
                    // Waiting with nothing buffered: the bytes go back until more come.
                    Poll::Pending => {
                        if let Some(buffered) = &mut this.buffered {
                            buffered.bytes = BytesMut::new();
                        }
                    }
                    Poll::Ready(Err(_)) => {}
                }
                return polled;
            }
            slot => {
                let buffered = buffered_of(slot);
                buffered.bytes.reserve(room);
                let room = buffered.bytes.capacity() - buffered.bytes.len();
                let read = match poll_read_buf(Pin::new(&mut this.inner), cx, &mut buffered.bytes) {
                    Poll::Ready(read) => read?,
                    Poll::Pending => {
                        buffered.bytes = BytesMut::new();
                        return Poll::Pending;
                    }
                };
                buffered.read_ahead.adapt(read, room);
                if read == 0 {
                    return Poll::Ready(Ok(()));
                }
                buffered
            }
        };
        let n = out.remaining().min(buffered.bytes.len());
        out.put_slice(&buffered.bytes[..n]);
        buffered.bytes.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAheadStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, bytes)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Counts the reads that brought bytes.
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

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;

    /// Polls for more with nothing to read: what the stream holds then.
    fn waiting(stream: &mut ReadAheadStream<CountReads<DuplexStream>>) -> usize {
        let mut cx = Context::from_waker(Waker::noop());
        // As much room as the read-ahead at first: a read that makes no buffer of its own.
        let mut room = [0; MIN_READ_AHEAD];
        let mut out = ReadBuf::new(&mut room);
        assert!(
            Pin::new(&mut *stream)
                .poll_read(&mut cx, &mut out)
                .is_pending()
        );
        stream.buffer_capacity()
    }

    /// Reads 4 bursts of 66 KiB in pieces of at most `ask` bytes; returns the reads from the
    /// stream they took.
    async fn bursts_read_in_pieces(ask: usize) -> usize {
        let (mut peer, ours) = tokio::io::duplex(1 << 20);
        let mut stream = ReadAheadStream::new(CountReads::new(ours));
        assert_eq!(waiting(&mut stream), 0, "nothing read yet, nothing held");
        let burst: Vec<u8> = (0..66 << 10).map(|i: u32| (i % 251) as u8).collect();
        for _ in 0..4 {
            peer.write_all(&burst).await.unwrap();
            let mut received = Vec::new();
            let mut piece = vec![0; ask];
            while received.len() < burst.len() {
                let n = stream.read(&mut piece).await.unwrap();
                received.extend_from_slice(&piece[..n]);
            }
            assert!(received == burst, "the bytes, in order");
            assert_eq!(waiting(&mut stream), 0, "between bursts nothing is held");
        }
        let reads = stream.inner.reads;
        assert!(stream.read_ahead().room() > MIN_READ_AHEAD);
        assert!(stream.read_ahead().room() <= MAX_READ_AHEAD);

        // Quiet traffic again: single small reads bring the read-ahead back down.
        for _ in 0..16 {
            peer.write_all(&[7]).await.unwrap();
            let mut byte = [0; 1];
            assert_eq!(stream.read(&mut byte).await.unwrap(), 1);
            assert_eq!(byte, [7]);
        }
        assert_eq!(stream.read_ahead().room(), MIN_READ_AHEAD);
        reads
    }

    #[tokio::test]
    async fn small_reads_come_from_few_large_ones_and_an_idle_stream_holds_nothing() {
        // Read as asked, 1,000 bytes at a time, that would be 272 reads.
        let reads = bursts_read_in_pieces(1000).await;
        assert!(reads <= 16, "{reads} reads for 4 bursts of 66 KiB");
    }

    #[tokio::test]
    async fn reads_that_fill_the_read_ahead_grow_it_for_the_reads_after_them() {
        // As tungstenite asks: its whole 4 KiB frame buffer, more than the first read-ahead.
        // Read straight, that would be 66 reads.
        let reads = bursts_read_in_pieces(4 << 10).await;
        assert!(reads <= 18, "{reads} reads for 4 bursts of 66 KiB");
    }

    #[tokio::test]
    async fn a_read_with_room_for_the_read_ahead_goes_straight_to_the_stream() {
        let (mut peer, ours) = tokio::io::duplex(1 << 16);
        let mut stream = ReadAheadStream::new(CountReads::new(ours));
        peer.write_all(&[1, 2, 3]).await.unwrap();
        let mut large = vec![0; MIN_READ_AHEAD];
        assert_eq!(stream.read(&mut large).await.unwrap(), 3);
        assert_eq!(&large[..3], [1, 2, 3]);
        assert_eq!(stream.buffer_capacity(), 0, "no buffer of its own");

        drop(peer);
        assert_eq!(stream.read(&mut large).await.unwrap(), 0, "the end");
        let mut small = [0; 10];
        assert_eq!(stream.read(&mut small).await.unwrap(), 0, "still the end");
    }

    #[tokio::test]
    async fn writes_pass_through() {
        let (mut peer, ours) = tokio::io::duplex(1 << 16);
        let mut stream = ReadAheadStream::new(ours);
        stream.write_all(b"hello").await.unwrap();
        stream.flush().await.unwrap();
        stream.shutdown().await.unwrap();
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
    }
}
