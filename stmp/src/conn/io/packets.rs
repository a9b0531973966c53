//! Decoded packets from a byte stream, read through a buffer that follows the traffic
//! ([`ReadAhead`]).

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use futures_util::Stream;
use tokio::io::AsyncRead;
use tokio_util::codec::Decoder;
use tokio_util::io::poll_read_buf;

use super::read_ahead::ReadAhead;
use crate::Status;
use crate::wire::{Packet, PacketCodec};

/// How packets are cut out of a byte stream: the stream framing ([`PacketCodec`]), or
/// WebSocket frames.
pub(crate) trait Unframe: Send + Unpin {
    /// The next packet in `buf`, if all of it is there; `End` when the peer said it sends
    /// nothing more.
    fn next_packet(&mut self, buf: &mut BytesMut) -> Result<Unframed, Status>;

    /// What is left in `buf` once the stream has ended.
    fn at_end(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>, Status>;
}

/// What [`Unframe::next_packet`] found.
pub(crate) enum Unframed {
    Packet(Packet),
    /// More bytes are needed.
    More,
    /// The peer ended its side (a WebSocket Close).
    #[cfg_attr(not(feature = "ws"), allow(dead_code))]
    End,
}

impl Unframe for PacketCodec {
    fn next_packet(&mut self, buf: &mut BytesMut) -> Result<Unframed, Status> {
        Ok(match self.decode(buf)? {
            Some(packet) => Unframed::Packet(packet),
            None => Unframed::More,
        })
    }

    fn at_end(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>, Status> {
        self.decode_eof(buf)
    }
}

/// The packets of a byte stream.
pub(crate) struct PacketReader<R, U = PacketCodec> {
    reader: R,
    unframe: U,
    buffer: BytesMut,
    read_ahead: ReadAhead,
    /// The stream has ended (or failed): nothing more comes out.
    done: bool,
    /// A read brought bytes since the engine last asked ([`PacketSource::took_a_read`](super::PacketSource::took_a_read)).
    read_since_asked: bool,
}

impl<R, U> PacketReader<R, U> {
    /// Packets from `reader`, after those in `leftover` (bytes read past the handshake).
    pub(crate) fn new(reader: R, unframe: U, leftover: BytesMut) -> Self {
        PacketReader {
            reader,
            unframe,
            buffer: leftover,
            read_ahead: ReadAhead::new(),
            done: false,
            read_since_asked: false,
        }
    }

    #[cfg(test)]
    pub(crate) fn buffer_capacity(&self) -> usize {
        self.buffer.capacity()
    }
}

impl<R: AsyncRead + Unpin, U: Unframe> PacketReader<R, U> {
    fn poll_packet(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Packet, Status>>> {
        loop {
            match self.unframe.next_packet(&mut self.buffer)? {
                Unframed::Packet(packet) => return Poll::Ready(Some(Ok(packet))),
                Unframed::End => {
                    self.done = true;
                    return Poll::Ready(None);
                }
                Unframed::More => {}
            }
            // Only a partial packet is buffered here, so making room copies little.
            if self.buffer.capacity() - self.buffer.len() < self.read_ahead.room() / 2 {
                self.buffer.reserve(self.read_ahead.room());
            }
            let room = self.buffer.capacity() - self.buffer.len();
            let read = ready!(poll_read_buf(
                Pin::new(&mut self.reader),
                cx,
                &mut self.buffer
            ))
            .map_err(Status::from)?;
            if read == 0 {
                self.done = true;
                return Poll::Ready(self.unframe.at_end(&mut self.buffer).transpose());
            }
            self.read_since_asked = true;
            self.read_ahead.adapt(read, room);
        }
    }
}

impl<R: AsyncRead + Unpin, U: Unframe> Stream for PacketReader<R, U> {
    type Item = Result<Packet, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        let polled = this.poll_packet(cx);
        match &polled {
            Poll::Ready(Some(Err(_))) => this.done = true,
            // Waiting with nothing buffered: the buffer goes back until bytes come.
            Poll::Pending if this.buffer.is_empty() => this.buffer = BytesMut::new(),
            _ => {}
        }
        polled
    }
}

impl<R: AsyncRead + Unpin + Send, U: Unframe> super::PacketSource for PacketReader<R, U> {
    fn has_buffered(self: Pin<&mut Self>) -> bool {
        !self.buffer.is_empty()
    }

    fn took_a_read(self: Pin<&mut Self>) -> bool {
        std::mem::take(&mut self.get_mut().read_since_asked)
    }

    fn next_buffered(self: Pin<&mut Self>) -> Option<Result<Packet, Status>> {
        let this = self.get_mut();
        if this.done {
            return None;
        }
        match this.unframe.next_packet(&mut this.buffer) {
            Ok(Unframed::Packet(packet)) => Some(Ok(packet)),
            Ok(Unframed::More) => None,
            Ok(Unframed::End) => {
                this.done = true;
                None
            }
            Err(status) => {
                this.done = true;
                Some(Err(status))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use bytes::Bytes;
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::conn::io::PacketSource;
    use crate::conn::io::read_ahead::{CountReads, MAX_READ_AHEAD, MIN_READ_AHEAD};
    use crate::wire::{Action, Header, Limits, Request};

    fn request(mid: u16, payload: usize) -> Packet {
        Packet::Request(Request {
            mid,
            action: Action::Id(7),
            header: Header::new(),
            payload: Bytes::from(vec![1; payload]),
        })
    }

    fn reader<R>(reader: R) -> PacketReader<R> {
        PacketReader::new(
            reader,
            PacketCodec::with_limits(Limits::default()),
            BytesMut::new(),
        )
    }

    fn waiting<R: AsyncRead + Unpin>(packets: &mut PacketReader<R>) -> usize {
        let mut cx = Context::from_waker(Waker::noop());
        assert!(packets.poll_next_unpin(&mut cx).is_pending());
        packets.buffer_capacity()
    }

    #[tokio::test]
    async fn the_read_buffer_is_given_back_while_waiting_with_nothing_buffered() {
        let (mut peer, ours) = tokio::io::duplex(64 << 10);
        let mut packets = reader(ours);
        assert_eq!(waiting(&mut packets), 0, "nothing read yet, nothing held");

        let mut encoded = BytesMut::new();
        request(1, 100).encode_stream(&mut encoded);
        let mut bytes = BytesMut::new();
        Packet::Ping.encode_stream(&mut bytes);
        bytes.extend_from_slice(&encoded[..50]);
        peer.write_all(&bytes).await.unwrap();
        assert_eq!(packets.next().await.unwrap().unwrap(), Packet::Ping);
        assert!(
            waiting(&mut packets) >= 50,
            "half a packet is buffered: kept"
        );
        peer.write_all(&encoded[50..]).await.unwrap();
        match packets.next().await.unwrap().unwrap() {
            Packet::Request(request) => assert_eq!(request.payload.len(), 100),
            other => panic!("not the request: {other:?}"),
        }
        assert_eq!(waiting(&mut packets), 0, "idle again: given back");
        peer.write_all(&[0x90]).await.unwrap();
        assert_eq!(packets.next().await.unwrap().unwrap(), Packet::Pong);
    }

    #[tokio::test]
    async fn buffered_packets_are_taken_without_a_read_and_a_partial_one_waits_for_it() {
        let (mut peer, ours) = tokio::io::duplex(64 << 10);
        let mut packets = reader(CountReads::new(ours));
        assert!(
            Pin::new(&mut packets).next_buffered().is_none(),
            "nothing read yet"
        );

        let mut bytes = BytesMut::new();
        for mid in 1..=3 {
            request(mid, 40).encode_stream(&mut bytes);
        }
        let mut last = BytesMut::new();
        request(4, 40).encode_stream(&mut last);
        bytes.extend_from_slice(&last[..10]);
        peer.write_all(&bytes).await.unwrap();
        let mid = |packet: Packet| match packet {
            Packet::Request(request) => request.mid,
            other => panic!("not a request: {other:?}"),
        };
        assert_eq!(mid(packets.next().await.unwrap().unwrap()), 1);
        for expected in [2, 3] {
            let taken = Pin::new(&mut packets).next_buffered();
            assert_eq!(mid(taken.expect("buffered").unwrap()), expected);
        }
        assert!(
            Pin::new(&mut packets).next_buffered().is_none(),
            "only part of the fourth is here"
        );
        assert_eq!(packets.reader.reads, 1, "one read brought the three");

        peer.write_all(&last[10..]).await.unwrap();
        assert_eq!(mid(packets.next().await.unwrap().unwrap()), 4);
        assert_eq!(packets.reader.reads, 2);

        // Bytes that are no packet are the error `next` would give, and the end.
        let mut bytes = BytesMut::new();
        request(5, 40).encode_stream(&mut bytes);
        bytes.extend_from_slice(&[0xff; 16]);
        peer.write_all(&bytes).await.unwrap();
        assert_eq!(mid(packets.next().await.unwrap().unwrap()), 5);
        assert!(matches!(
            Pin::new(&mut packets).next_buffered(),
            Some(Err(_))
        ));
        assert!(Pin::new(&mut packets).next_buffered().is_none());
        assert!(packets.next().await.is_none(), "nothing after the error");
    }

    #[tokio::test]
    async fn a_busy_connection_reads_in_large_chunks_and_an_idle_one_holds_nothing() {
        let (mut peer, ours) = tokio::io::duplex(1 << 20);
        let mut packets = reader(CountReads::new(ours));
        // Several bursts of 64 requests of 1 KiB, as 64 calls in flight send them.
        let mut burst = BytesMut::new();
        for mid in 0..64 {
            request(mid, 1024).encode_stream(&mut burst);
        }
        for _ in 0..4 {
            peer.write_all(&burst).await.unwrap();
            for mid in 0..64 {
                match packets.next().await.unwrap().unwrap() {
                    Packet::Request(request) => {
                        assert_eq!((request.mid, request.payload.len()), (mid, 1024));
                    }
                    other => panic!("not a request: {other:?}"),
                }
            }
            assert_eq!(waiting(&mut packets), 0, "between bursts nothing is held");
        }
        let reads = packets.reader.reads;
        // 4 × 66 KiB: read 2 KiB at a time that would take over 130 reads.
        assert!(reads <= 16, "{reads} reads for 4 bursts of 66 KiB");
        assert!(packets.read_ahead.room() > MIN_READ_AHEAD);
        assert!(packets.read_ahead.room() <= MAX_READ_AHEAD);

        // Quiet traffic again: single small packets bring the read size back down.
        for _ in 0..16 {
            peer.write_all(&[0x90]).await.unwrap();
            assert_eq!(packets.next().await.unwrap().unwrap(), Packet::Pong);
        }
        assert_eq!(packets.read_ahead.room(), MIN_READ_AHEAD);
    }

    #[tokio::test]
    async fn only_the_first_packet_of_a_read_says_it_took_one() {
        use crate::conn::io::PacketSource;

        let (mut peer, ours) = tokio::io::duplex(1 << 16);
        let mut packets = reader(CountReads::new(ours));
        assert!(!Pin::new(&mut packets).took_a_read(), "nothing read yet");
        let mut three = BytesMut::new();
        for mid in 1..=3 {
            request(mid, 10).encode_stream(&mut three);
        }
        let mut split = BytesMut::new();
        request(4, 100).encode_stream(&mut split);
        peer.write_all(&three).await.unwrap();
        peer.write_all(&split[..30]).await.unwrap();

        let mut took = Vec::new();
        for _ in 0..3 {
            packets.next().await.unwrap().unwrap();
            took.push(Pin::new(&mut packets).took_a_read());
        }
        assert_eq!(packets.reader.reads, 1);
        assert_eq!(took, [true, false, false], "three packets of one read");
        assert!(
            waiting(&mut packets) > 0,
            "the cut packet waits for its rest"
        );
        peer.write_all(&split[30..]).await.unwrap();
        match packets.next().await.unwrap().unwrap() {
            Packet::Request(request) => assert_eq!(request.mid, 4),
            other => panic!("not the request: {other:?}"),
        }
        assert!(
            Pin::new(&mut packets).took_a_read(),
            "its rest took a read of its own"
        );
        assert_eq!(packets.reader.reads, 2);
        assert!(
            !Pin::new(&mut packets).took_a_read(),
            "asked twice, told once"
        );
    }

    #[tokio::test]
    async fn the_end_of_the_stream_ends_the_packets_and_a_cut_packet_is_an_error() {
        let (mut peer, ours) = tokio::io::duplex(1 << 10);
        let mut packets = reader(ours);
        peer.write_all(&[0x90]).await.unwrap();
        drop(peer);
        assert_eq!(packets.next().await.unwrap().unwrap(), Packet::Pong);
        assert!(packets.next().await.is_none());

        let (mut peer, ours) = tokio::io::duplex(1 << 10);
        let mut packets = reader(ours);
        let mut encoded = BytesMut::new();
        request(1, 100).encode_stream(&mut encoded);
        peer.write_all(&encoded[..40]).await.unwrap();
        drop(peer);
        let error = packets.next().await.unwrap().unwrap_err();
        assert_eq!(error.code(), crate::Code::NetworkError);
        assert!(packets.next().await.is_none(), "nothing after the error");
    }

    #[test]
    fn leftover_bytes_from_the_handshake_come_first() {
        let leftover = BytesMut::from(&[0x80, 0x90][..]);
        let mut packets = PacketReader::new(tokio::io::empty(), PacketCodec::new(), leftover);
        let mut cx = Context::from_waker(Waker::noop());
        let mut next = || match packets.poll_next_unpin(&mut cx) {
            Poll::Ready(item) => item.map(Result::unwrap),
            Poll::Pending => panic!("an empty reader is at its end at once"),
        };
        assert_eq!(next(), Some(Packet::Ping));
        assert_eq!(next(), Some(Packet::Pong));
        assert_eq!(next(), None);
    }
}
