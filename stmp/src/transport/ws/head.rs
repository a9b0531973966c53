//! The socket as tungstenite sees it during the HTTP upgrade: reads stop at the end of the
//! HTTP head, so what the peer sent after it (its first frames) stays here for the engine's
//! read buffer rather than in tungstenite's.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::io::poll_read_buf;

/// The longest HTTP head taken: an upgrade request's or response's headers, the stmp
/// handshake among them, are far shorter.
const MAX_HEAD: usize = 64 << 10;

/// A socket whose reads end with the HTTP head.
pub(crate) struct HeadOnly<S> {
    inner: S,
    buf: BytesMut,
    /// How many bytes of `buf` have been read out.
    served: usize,
    /// Where the head ends in `buf`, once its blank line has come.
    end: Option<usize>,
    /// The head was a response other than 101: reads go on past it.
    past_head: bool,
}

/// Whether `head` is an HTTP response that refuses the upgrade.
fn is_refusal(head: &[u8]) -> bool {
    head.starts_with(b"HTTP/") && head.get(9..12).is_some_and(|status| status != b"101")
}

impl<S> HeadOnly<S> {
    pub(crate) fn new(inner: S) -> Self {
        HeadOnly {
            inner,
            buf: BytesMut::new(),
            served: 0,
            end: None,
            past_head: false,
        }
    }

    /// The socket, and the bytes read past the head.
    pub(crate) fn into_parts(mut self) -> (S, BytesMut) {
        self.buf.advance(self.served);
        (self.inner, self.buf)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for HeadOnly<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        loop {
            let head = this.end.unwrap_or(this.buf.len());
            if this.past_head && this.served == this.buf.len() {
                this.buf.clear();
                this.served = 0;
                return Pin::new(&mut this.inner).poll_read(cx, out);
            }
            if this.served < head {
                let n = out.remaining().min(head - this.served);
                out.put_slice(&this.buf[this.served..this.served + n]);
                this.served += n;
                return Poll::Ready(Ok(()));
            }
            // The whole head is out: the reader sees the end of the stream.
            if this.end.is_some() {
                return Poll::Ready(Ok(()));
            }
            if this.buf.len() >= MAX_HEAD {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("HTTP head longer than {MAX_HEAD} bytes"),
                )));
            }
            let searched = this.buf.len().saturating_sub(3);
            this.buf.reserve(4 << 10);
            if ready!(poll_read_buf(Pin::new(&mut this.inner), cx, &mut this.buf))? == 0 {
                return Poll::Ready(Ok(()));
            }
            this.end = this.buf[searched..]
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|at| searched + at + 4);
            if this.end.is_some() && is_refusal(&this.buf) {
                // A refused upgrade's body says why: tungstenite reads it up to its length.
                this.end = None;
                this.past_head = true;
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HeadOnly<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn reads_end_with_the_head_and_the_rest_is_kept() {
        let (mut peer, ours) = tokio::io::duplex(1024);
        // The head's blank line split over two writes, and frames right behind it.
        peer.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r")
            .await
            .unwrap();
        let mut head = HeadOnly::new(ours);
        let mut first = vec![0; 5];
        head.read_exact(&mut first).await.unwrap();
        assert_eq!(first, b"GET /");
        peer.write_all(b"\n\x82\x01Z").await.unwrap();
        let mut rest = Vec::new();
        head.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b" HTTP/1.1\r\nHost: x\r\n\r\n");
        let (_, leftover) = head.into_parts();
        assert_eq!(&leftover[..], b"\x82\x01Z");
    }

    #[tokio::test]
    async fn a_refused_upgrade_is_read_with_its_body() {
        let (mut peer, ours) = tokio::io::duplex(1024);
        let refusal = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 11\r\n\r\nserver full";
        peer.write_all(refusal).await.unwrap();
        drop(peer);
        let mut head = HeadOnly::new(ours);
        let mut all = Vec::new();
        head.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, refusal);
    }

    #[tokio::test]
    async fn a_head_without_end_is_refused_at_the_limit() {
        let (mut peer, ours) = tokio::io::duplex(MAX_HEAD * 2);
        peer.write_all(&vec![b'a'; MAX_HEAD + 10]).await.unwrap();
        let mut head = HeadOnly::new(ours);
        let mut sink = Vec::new();
        let error = head.read_to_end(&mut sink).await.unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
        assert!(sink.len() <= MAX_HEAD + (4 << 10));
    }
}
