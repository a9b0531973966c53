//! The bytes a connection has encoded and not yet written. A large payload is sent by reference,
//! as the buffer its packet already holds: copied behind its packet's head, a 1 MiB answer cost
//! a fresh 1 MiB write buffer (page faults and all) and a copy, on top of the kernel's own.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWrite;

/// The smallest payload written by reference. Below it, copying costs less than the extra
/// buffer in the write and its reference count.
pub(crate) const BORROW_FROM: usize = 16 << 10;

/// At most this many buffers go into one vectored write; the rest wait for the next.
const MAX_SLICES: usize = 64;

/// Encoded bytes waiting to be written, in order: `borrowed`, then `buf`.
#[derive(Default)]
pub(crate) struct Outgoing {
    /// Large payloads, each after the encoded bytes that came before it.
    borrowed: VecDeque<Bytes>,
    /// Where packets are encoded; its bytes go after all of `borrowed`.
    pub(crate) buf: BytesMut,
}

impl Outgoing {
    pub(crate) fn is_empty(&self) -> bool {
        self.borrowed.is_empty() && self.buf.is_empty()
    }

    /// Appends `payload` by reference, after what `buf` holds.
    pub(crate) fn borrow(&mut self, payload: &Bytes) {
        if !self.buf.is_empty() {
            // What follows is encoded into the rest of the same allocation.
            self.borrowed.push_back(self.buf.split().freeze());
        }
        self.borrowed.push_back(payload.clone());
    }

    /// Writes what `io` takes of the first bytes: one vectored write when payloads are borrowed.
    pub(crate) fn poll_write(
        &self,
        io: Pin<&mut (dyn AsyncWrite + Send)>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<usize>> {
        if self.borrowed.is_empty() {
            return io.poll_write(cx, &self.buf);
        }
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        let mut count = 0;
        for (slot, bytes) in slices.iter_mut().zip(
            self.borrowed
                .iter()
                .map(|bytes| &bytes[..])
                .chain((!self.buf.is_empty()).then_some(&self.buf[..])),
        ) {
            *slot = IoSlice::new(bytes);
            count += 1;
        }
        io.poll_write_vectored(cx, &slices[..count])
    }

    /// Whether part of `payload` waits here as the payload's own buffer, not a copy.
    #[cfg(all(test, feature = "gzip"))]
    pub(crate) fn holds_by_reference(&self, payload: &[u8]) -> bool {
        let within = payload.as_ptr_range();
        self.borrowed.iter().any(|bytes| {
            let held = bytes.as_ptr_range();
            !bytes.is_empty() && within.start <= held.start && held.end <= within.end
        })
    }

    /// Drops the first `written` bytes, which have gone out.
    pub(crate) fn advance(&mut self, mut written: usize) {
        while written > 0 {
            let Some(front) = self.borrowed.front_mut() else {
                break;
            };
            if written < front.len() {
                front.advance(written);
                return;
            }
            written -= front.len();
            self.borrowed.pop_front();
        }
        match written == self.buf.len() {
            // Cleared rather than advanced past its end, which would leave it no room.
            true => self.buf.clear(),
            false => self.buf.advance(written),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Takes at most `room` bytes per write and records them, and how many buffers each
    /// vectored write was given.
    #[derive(Clone, Default)]
    struct Trickle {
        room: usize,
        written: Arc<Mutex<Vec<u8>>>,
        slices_per_write: Arc<Mutex<Vec<usize>>>,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let n = buf.len().min(self.room);
            self.written.lock().unwrap().extend_from_slice(&buf[..n]);
            self.slices_per_write.lock().unwrap().push(1);
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            let mut room = self.room;
            let mut written = self.written.lock().unwrap();
            for buf in bufs {
                let n = buf.len().min(room);
                written.extend_from_slice(&buf[..n]);
                room -= n;
            }
            self.slices_per_write.lock().unwrap().push(bufs.len());
            Poll::Ready(Ok(self.room - room))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn write_all(out: &mut Outgoing, io: &mut Trickle) {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        while !out.is_empty() {
            let io: Pin<&mut Trickle> = Pin::new(io);
            let Poll::Ready(Ok(n)) = out.poll_write(io, &mut cx) else {
                panic!("the recorder always takes bytes");
            };
            out.advance(n);
        }
    }

    #[test]
    fn borrowed_payloads_go_out_in_order_between_the_copied_bytes_whatever_each_write_takes() {
        let payloads: Vec<Bytes> = (0..3u8).map(|i| Bytes::from(vec![i; 100])).collect();
        let mut expected = Vec::new();
        for room in [1, 7, 64, 100, 101, 1000] {
            let mut out = Outgoing::default();
            expected.clear();
            for (i, payload) in payloads.iter().enumerate() {
                let head = [0xF0 | i as u8; 5];
                out.buf.extend_from_slice(&head);
                expected.extend_from_slice(&head);
                out.borrow(payload);
                expected.extend_from_slice(payload);
            }
            out.buf.extend_from_slice(b"tail");
            expected.extend_from_slice(b"tail");
            let mut io = Trickle {
                room,
                ..Trickle::default()
            };
            write_all(&mut out, &mut io);
            assert_eq!(
                *io.written.lock().unwrap(),
                expected,
                "{room} bytes per write"
            );
            assert!(out.borrowed.is_empty() && out.buf.is_empty());
        }
    }

    #[test]
    fn a_borrowed_payload_is_not_copied_and_goes_in_the_same_write_as_its_head() {
        let payload = Bytes::from(vec![7; BORROW_FROM]);
        let mut out = Outgoing::default();
        out.buf.extend_from_slice(b"head");
        out.borrow(&payload);
        assert!(out.buf.is_empty(), "the head went ahead of the payload");
        assert!(
            out.borrowed
                .iter()
                .any(|bytes| bytes.as_ptr() == payload.as_ptr()),
            "the payload's own buffer is queued"
        );
        let mut io = Trickle {
            room: usize::MAX,
            ..Trickle::default()
        };
        write_all(&mut out, &mut io);
        assert_eq!(
            *io.slices_per_write.lock().unwrap(),
            [2],
            "the head, then the payload"
        );
        assert_eq!(io.written.lock().unwrap().len(), 4 + BORROW_FROM);
    }

    #[test]
    fn more_buffers_than_one_write_takes_go_out_over_several() {
        let payload = Bytes::from_static(b"p");
        let mut out = Outgoing::default();
        for _ in 0..MAX_SLICES {
            out.buf.extend_from_slice(b"h");
            out.borrow(&payload);
        }
        let mut io = Trickle {
            room: usize::MAX,
            ..Trickle::default()
        };
        write_all(&mut out, &mut io);
        assert_eq!(
            *io.slices_per_write.lock().unwrap(),
            [MAX_SLICES, MAX_SLICES]
        );
        assert_eq!(*io.written.lock().unwrap(), b"hp".repeat(MAX_SLICES));
    }
}
