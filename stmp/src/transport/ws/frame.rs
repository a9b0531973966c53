//! WebSocket framing (RFC 6455 section 5) of stmp packets, over bytes and without I/O: the
//! engine reads and writes a WebSocket connection as it does a TCP one, through its own read
//! buffer and write batches, with this module in place of the stream framing. A packet is one
//! message; a message may come in fragments, with control frames between them.

use std::sync::{Arc, Mutex};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::deflate;
use crate::Status;
use crate::conn::PacketFormat;
use crate::conn::io::{BORROW_FROM, InflationLimit, Outgoing};
use crate::sync::lock;
use crate::wire::{
    BufferBudget, Charge, Limits, MAX_RESERVE_AHEAD, PARTIAL_ALLOWANCE, Packet, hold,
};

const FIN: u8 = 0x80;
const RSV: u8 = 0x70;
/// Set on the first frame of a deflated message (RFC 7692 section 6).
const RSV1: u8 = 0x40;
const MASKED: u8 = 0x80;

const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// The longest header: 2 bytes, a 64-bit length, a mask.
const MAX_HEADER: usize = 14;

/// Control frames carry at most this much (RFC 6455 section 5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// The Close status of a normal end (RFC 6455 section 7.4.1).
const NORMAL_CLOSURE: u16 = 1000;

/// Which end of the connection this side is: a client masks what it sends and expects
/// unmasked frames; a server the reverse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Server,
    Client,
}

/// What the reading side owes the peer, for the writing side to send: a Pong for each of the
/// peer's Pings (with the last one's payload, RFC 6455 section 5.5.3), and the Close that
/// answers the peer's.
#[derive(Debug, Default)]
pub(crate) struct Owed {
    pongs: Mutex<Pongs>,
    /// The status code of the peer's Close, echoed in ours.
    close_code: Mutex<Option<u16>>,
}

#[derive(Debug, Default)]
struct Pongs {
    count: usize,
    payload: Bytes,
}

/// What a frame (or the last fragment of a message) brought.
#[derive(Debug, PartialEq)]
pub(crate) enum Incoming {
    /// A whole message: its bytes, and whether it was a text message.
    Message { text: bool, bytes: Bytes },
    /// The peer's Ping; its Pong is owed ([`Owed`]).
    Ping,
    /// The peer's Close: nothing more comes.
    Closed,
}

/// Reads frames out of a connection's read buffer.
#[derive(Debug)]
pub(crate) struct FrameReader {
    role: Role,
    /// The longest message taken.
    max_message: usize,
    /// A fragmented message being put together.
    partial: Option<Partial>,
    owed: Arc<Owed>,
    closed: bool,
    /// Shared with the server's other connections, for messages over [`PARTIAL_ALLOWANCE`].
    budget: Option<Arc<BufferBudget>>,
    /// What the message being received has charged to `budget`.
    charge: Option<Charge>,
    /// Inflates deflated messages, once permessage-deflate is agreed.
    #[cfg(feature = "gzip")]
    inflater: Option<deflate::MessageInflater>,
}

/// The fragments of a message so far.
#[derive(Debug)]
struct Partial {
    text: bool,
    deflated: bool,
    bytes: BytesMut,
}

impl FrameReader {
    pub(crate) fn new(role: Role, max_message: usize, owed: Arc<Owed>) -> Self {
        FrameReader {
            role,
            max_message,
            partial: None,
            owed,
            closed: false,
            budget: None,
            charge: None,
            #[cfg(feature = "gzip")]
            inflater: None,
        }
    }

    /// Takes deflated messages when permessage-deflate was `agreed` at the upgrade, each
    /// inflating to at most the longest message and all of them within `limit`.
    pub(crate) fn with_inflater(self, agreed: bool, limit: InflationLimit) -> Self {
        #[cfg(feature = "gzip")]
        if agreed {
            let inflater = deflate::MessageInflater::new(self.max_message, limit);
            return FrameReader {
                inflater: Some(inflater),
                ..self
            };
        }
        #[cfg(not(feature = "gzip"))]
        let _ = (agreed, limit);
        self
    }

    /// Whether deflated messages are taken.
    fn inflates(&self) -> bool {
        #[cfg(feature = "gzip")]
        return self.inflater.is_some();
        #[cfg(not(feature = "gzip"))]
        return false;
    }

    /// Makes messages over [`PARTIAL_ALLOWANCE`] charge `budget` while they are received.
    pub(crate) fn with_budget(mut self, budget: Option<Arc<BufferBudget>>) -> Self {
        self.budget = budget;
        self
    }

    /// Takes the next message, Ping or Close out of `buf`; `Ok(None)` while it needs more
    /// bytes. A frame's payload is unmasked in place and handed on without a copy, unless the
    /// message comes in fragments. Pongs are passed over. After the peer's Close it takes
    /// nothing more.
    pub(crate) fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Incoming>, Status> {
        loop {
            if self.closed {
                return Ok(None);
            }
            let Some(head) = self.head(buf)? else {
                return Ok(None);
            };
            let frame = head.len + head.payload;
            if buf.len() < frame {
                // Held for this message once its frame is in: what came before, and the frame.
                let needed = self.partial.as_ref().map_or(0, |p| p.bytes.len()) + frame;
                if needed > PARTIAL_ALLOWANCE {
                    hold(&mut self.charge, self.budget.as_ref(), needed)?;
                }
                // A peer that announces a large frame and sends it slowly must not make us
                // hold the whole size up front.
                buf.reserve((frame - buf.len()).min(MAX_RESERVE_AHEAD));
                return Ok(None);
            }
            buf.advance(head.len);
            let mut payload = buf.split_to(head.payload);
            if let Some(mask) = head.mask {
                apply_mask(&mut payload, mask);
            }
            if let Some(incoming) = self.take(head, payload)? {
                if let Incoming::Message { .. } = incoming {
                    self.charge = None;
                }
                return Ok(Some(incoming));
            }
        }
    }

    /// Whether bytes of a frame or fragments of a message are held: the connection ended
    /// inside a message.
    pub(crate) fn inside_a_message(&self, buf: &BytesMut) -> bool {
        !self.closed && (!buf.is_empty() || self.partial.is_some())
    }

    /// The header at the start of `buf`, checked; `Ok(None)` while it is not all there.
    fn head(&self, buf: &BytesMut) -> Result<Option<Head>, Status> {
        let [first, second, ..] = buf[..] else {
            return Ok(None);
        };
        let opcode = first & 0x0F;
        // Only a message's first frame says it is deflated; control frames never are.
        let deflated = first & RSV == RSV1 && self.inflates() && matches!(opcode, TEXT | BINARY);
        if first & RSV != 0 && !deflated {
            return Err(Status::protocol_error(match self.inflates() {
                true => {
                    "websocket frame with reserved bits set where permessage-deflate allows none"
                }
                false => "websocket frame with reserved bits set (no extension was agreed)",
            }));
        }
        let masked = second & MASKED != 0;
        match (self.role, masked) {
            (Role::Server, false) => {
                return Err(Status::protocol_error(
                    "websocket frame from a client without a mask",
                ));
            }
            (Role::Client, true) => {
                return Err(Status::protocol_error(
                    "masked websocket frame from a server",
                ));
            }
            _ => {}
        }
        let (payload, mut len) = match second & 0x7F {
            126 => match buf.get(2..4) {
                Some(bytes) => (u64::from(u16::from_be_bytes([bytes[0], bytes[1]])), 4),
                None => return Ok(None),
            },
            127 => match buf.get(2..10) {
                Some(bytes) => {
                    let mut be = [0; 8];
                    be.copy_from_slice(bytes);
                    (u64::from_be_bytes(be), 10)
                }
                None => return Ok(None),
            },
            short => (u64::from(short), 2),
        };
        let fin = first & FIN != 0;
        if opcode >= CLOSE {
            if !fin {
                return Err(Status::protocol_error("fragmented websocket control frame"));
            }
            if payload > MAX_CONTROL_PAYLOAD as u64 {
                return Err(Status::protocol_error(format!(
                    "websocket control frame of {payload} bytes (at most {MAX_CONTROL_PAYLOAD})"
                )));
            }
        } else {
            let so_far = self.partial.as_ref().map_or(0, |p| p.bytes.len()) as u64;
            if so_far.saturating_add(payload) > self.max_message as u64 {
                return Err(Status::request_entity_too_large(format!(
                    "websocket message of {} bytes or more is over the limit of {} bytes",
                    so_far.saturating_add(payload),
                    self.max_message
                )));
            }
        }
        let mask = match masked {
            true => match buf.get(len..len + 4) {
                Some(bytes) => {
                    len += 4;
                    Some([bytes[0], bytes[1], bytes[2], bytes[3]])
                }
                None => return Ok(None),
            },
            false => None,
        };
        // Under `max_message` (or 125), so it fits a usize.
        let payload = payload as usize;
        Ok(Some(Head {
            fin,
            opcode,
            deflated,
            mask,
            len,
            payload,
        }))
    }

    /// The whole message once its last fragment is in, inflated if it was deflated; until
    /// then its bytes are kept.
    fn gather(&mut self, partial: Partial, last: bool) -> Result<Option<Incoming>, Status> {
        if !last {
            self.partial = Some(partial);
            return Ok(None);
        }
        let Partial {
            text,
            deflated,
            bytes,
        } = partial;
        let bytes = match deflated {
            true => self.inflate(&bytes)?,
            false => bytes.freeze(),
        };
        message(text, bytes).map(Some)
    }

    /// A deflated message's bytes; [`FrameReader::head`] lets one through only when an
    /// inflater is set.
    fn inflate(&mut self, deflated: &[u8]) -> Result<Bytes, Status> {
        #[cfg(feature = "gzip")]
        if let Some(inflater) = &mut self.inflater {
            return inflater.inflate(deflated);
        }
        let _ = deflated;
        Err(Status::protocol_error(
            "deflated websocket message without permessage-deflate",
        ))
    }

    /// What one frame brings, if anything.
    fn take(&mut self, head: Head, payload: BytesMut) -> Result<Option<Incoming>, Status> {
        match head.opcode {
            TEXT | BINARY => {
                if self.partial.is_some() {
                    return Err(Status::protocol_error(
                        "websocket message begun before the last one ended",
                    ));
                }
                let partial = Partial {
                    text: head.opcode == TEXT,
                    deflated: head.deflated,
                    bytes: payload,
                };
                self.gather(partial, head.fin)
            }
            CONTINUATION => {
                let Some(mut partial) = self.partial.take() else {
                    return Err(Status::protocol_error(
                        "websocket continuation frame without a message",
                    ));
                };
                partial.bytes.extend_from_slice(&payload);
                self.gather(partial, head.fin)
            }
            PING => {
                let mut pongs = lock(&self.owed.pongs);
                pongs.count += 1;
                pongs.payload = payload.freeze();
                Ok(Some(Incoming::Ping))
            }
            PONG => Ok(None),
            CLOSE => {
                let code = match payload[..] {
                    [] => None,
                    [_] => {
                        return Err(Status::protocol_error(
                            "websocket Close frame with a one-byte payload",
                        ));
                    }
                    [high, low, ..] => Some(u16::from_be_bytes([high, low])),
                };
                *lock(&self.owed.close_code) = Some(code.unwrap_or(NORMAL_CLOSURE));
                self.closed = true;
                Ok(Some(Incoming::Closed))
            }
            other => Err(Status::protocol_error(format!(
                "websocket frame with unknown opcode {other:#x}"
            ))),
        }
    }
}

/// A frame's header, read.
#[derive(Debug)]
struct Head {
    fin: bool,
    opcode: u8,
    /// The first frame of a deflated message.
    deflated: bool,
    mask: Option<[u8; 4]>,
    /// The header's own length.
    len: usize,
    payload: usize,
}

/// A whole message; a text message must be UTF-8 (RFC 6455 section 8.1).
fn message(text: bool, bytes: Bytes) -> Result<Incoming, Status> {
    if text && std::str::from_utf8(&bytes).is_err() {
        return Err(Status::protocol_error(
            "websocket text message that is not UTF-8",
        ));
    }
    Ok(Incoming::Message { text, bytes })
}

/// The packet a message carries. Text packets are taken from binary messages too, as the Go
/// server sends them that way.
pub(crate) fn packet_of(
    text: bool,
    bytes: Bytes,
    format: PacketFormat,
    limits: Limits,
) -> Result<Packet, Status> {
    match (text, format) {
        (false, PacketFormat::Binary) => Packet::decode_message(bytes, limits),
        _ => Packet::decode_text(bytes, limits),
    }
}

/// Writes packets as frames into a connection's write buffer.
#[derive(Debug)]
pub(crate) struct FrameWriter {
    role: Role,
    format: PacketFormat,
    owed: Arc<Owed>,
    /// permessage-deflate was agreed: messages of [`deflate::MIN_DEFLATED`] bytes or more go
    /// out deflated when that makes them shorter.
    deflates: bool,
}

thread_local! {
    /// A packet's plain bytes on their way to the deflater, kept by the thread: a deflated
    /// message would otherwise allocate them every time.
    static SCRATCH: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
}

/// Runs `write` with the thread's empty scratch buffer. One that a large message grew is let
/// go, so that a thread does not keep the largest message it ever deflated.
fn with_scratch<T>(write: impl FnOnce(&mut BytesMut) -> T) -> T {
    const KEPT: usize = 64 << 10;
    SCRATCH.with_borrow_mut(|scratch| {
        scratch.clear();
        let done = write(scratch);
        if scratch.capacity() > KEPT {
            *scratch = BytesMut::new();
        }
        done
    })
}

impl FrameWriter {
    pub(crate) fn new(role: Role, format: PacketFormat, owed: Arc<Owed>) -> Self {
        FrameWriter {
            role,
            format,
            owed,
            deflates: false,
        }
    }

    /// Deflates the messages worth it, once permessage-deflate is agreed.
    pub(crate) fn with_deflate(mut self, agreed: bool) -> Self {
        self.deflates = agreed;
        self
    }

    /// The payload of `packet` to send by reference, after the message's head: a large one in a
    /// binary message that is neither masked nor deflated, so that its bytes go out as they are.
    pub(crate) fn payload_to_borrow<'a>(&self, packet: &'a Packet) -> Option<&'a Bytes> {
        match (self.format, self.role, self.deflates) {
            (PacketFormat::Binary, Role::Server, false) => packet
                .payload_bytes()
                .filter(|payload| payload.len() >= BORROW_FROM),
            _ => None,
        }
    }

    /// Appends `packet` to `out` as one message, like [`encode`](Self::encode), with the
    /// payload [`payload_to_borrow`](Self::payload_to_borrow) gives sent by reference.
    pub(crate) fn encode_into(&self, packet: &Packet, out: &mut Outgoing) {
        let Some(payload) = self.payload_to_borrow(packet) else {
            return self.encode(packet, &mut out.buf);
        };
        let len = packet.encoded_message_len();
        let dst = &mut out.buf;
        dst.reserve(MAX_HEADER + len - payload.len());
        // A server's frames are never masked.
        let _unmasked = self.head(BINARY, len, dst);
        packet.append_message_head(dst);
        out.borrow(payload);
    }

    /// Appends `packet` to `dst` as one message. The engine answers a WebSocket Ping as it
    /// does a Ping packet, so a Pong packet goes out as the Pong frame owed, when one is.
    /// In text format a packet whose text is not UTF-8 (a binary payload) goes in a binary
    /// message, as the Go server sends text packets.
    pub(crate) fn encode(&self, packet: &Packet, dst: &mut BytesMut) {
        if let Packet::Pong = packet {
            let mut pongs = lock(&self.owed.pongs);
            if pongs.count > 0 {
                pongs.count -= 1;
                let payload = pongs.payload.clone();
                drop(pongs);
                self.frame(PONG, &payload, dst);
                return;
            }
        }
        match self.format {
            PacketFormat::Binary => {
                let len = packet.encoded_message_len();
                if self.deflates && len >= deflate::MIN_DEFLATED {
                    return with_scratch(|plain| {
                        packet.append_message(plain);
                        self.maybe_deflated(BINARY, plain, is_event(packet), dst)
                    });
                }
                dst.reserve(MAX_HEADER + len);
                let mask = self.head(BINARY, len, dst);
                let start = dst.len();
                packet.append_message(dst);
                mask_from(dst, start, mask);
            }
            PacketFormat::Text => {
                // The header's length is known only once the text is: room for the longest
                // header, then the text, then the header where it ends, moved up to it.
                let at = dst.len();
                dst.put_bytes(0, MAX_HEADER);
                packet.encode_text(dst);
                let text = at + MAX_HEADER..dst.len();
                let opcode = match std::str::from_utf8(&dst[text.clone()]) {
                    Ok(_) => TEXT,
                    Err(_) => BINARY,
                };
                if self.deflates && text.len() >= deflate::MIN_DEFLATED {
                    return with_scratch(|plain| {
                        plain.extend_from_slice(&dst[text]);
                        dst.truncate(at);
                        self.maybe_deflated(opcode, plain, is_event(packet), dst)
                    });
                }
                self.head_before(at, opcode, dst);
            }
        }
    }

    /// Appends one message of `plain`, deflated when that makes it shorter; an `event` may be
    /// one a broadcast writes to many connections.
    #[cfg_attr(not(feature = "gzip"), allow(unused_variables))]
    fn maybe_deflated(&self, opcode: u8, plain: &[u8], event: bool, dst: &mut BytesMut) {
        #[cfg(feature = "gzip")]
        {
            let at = dst.len();
            dst.put_bytes(0, MAX_HEADER);
            let deflated = match event {
                true => deflate::deflate_remembered(plain, dst),
                false => deflate::deflate(plain, dst),
            };
            if deflated {
                return self.head_before(at, RSV1 | opcode, dst);
            }
            dst.truncate(at);
        }
        self.frame(opcode, plain, dst);
    }

    /// Puts the header of a message whose payload follows [`MAX_HEADER`] bytes left free at
    /// `at`, moving the payload up to its header's end, and masks it if this side must.
    fn head_before(&self, at: usize, first: u8, dst: &mut BytesMut) {
        let payload = at + MAX_HEADER..dst.len();
        let mut head = [0; MAX_HEADER];
        let mut free = &mut head[..];
        let mask = self.head(first, payload.len(), &mut free);
        let head_len = MAX_HEADER - free.len();
        dst[at..at + head_len].copy_from_slice(&head[..head_len]);
        dst.copy_within(payload.clone(), at + head_len);
        dst.truncate(at + head_len + payload.len());
        mask_from(dst, at + head_len, mask);
    }

    /// Appends one message of `payload`, text or binary.
    pub(crate) fn message(&self, text: bool, payload: &[u8], dst: &mut BytesMut) {
        self.frame(if text { TEXT } else { BINARY }, payload, dst);
    }

    /// Appends the Close frame that ends our side: the peer's status echoed when it closed
    /// first, a normal closure otherwise.
    pub(crate) fn close(&self, dst: &mut BytesMut) {
        let code = lock(&self.owed.close_code).unwrap_or(NORMAL_CLOSURE);
        self.frame(CLOSE, &code.to_be_bytes(), dst);
    }

    /// A whole frame of `payload`.
    fn frame(&self, opcode: u8, payload: &[u8], dst: &mut BytesMut) {
        dst.reserve(MAX_HEADER + payload.len());
        let mask = self.head(opcode, payload.len(), dst);
        let start = dst.len();
        dst.put_slice(payload);
        mask_from(dst, start, mask);
    }

    /// Puts a final frame's header for a payload of `len` bytes; the mask a client must
    /// apply to it. `first` is the opcode, with the reserved bit of a deflated message.
    fn head(&self, first: u8, len: usize, dst: &mut impl BufMut) -> Option<[u8; 4]> {
        dst.put_u8(FIN | first);
        let masked = match self.role {
            Role::Client => MASKED,
            Role::Server => 0,
        };
        match len {
            0..=125 => dst.put_u8(masked | len as u8),
            126..=0xFFFF => {
                dst.put_u8(masked | 126);
                dst.put_u16(len as u16);
            }
            _ => {
                dst.put_u8(masked | 127);
                dst.put_u64(len as u64);
            }
        }
        match self.role {
            Role::Client => {
                // Unpredictable to the page or program that chose the payload, which is what
                // masking is for (RFC 6455 section 10.3).
                let mask: [u8; 4] = rand::random();
                dst.put_slice(&mask);
                Some(mask)
            }
            Role::Server => None,
        }
    }
}

/// Whether `packet` is a notify, the only kind a broadcast sends.
fn is_event(packet: &Packet) -> bool {
    matches!(packet, Packet::Notify(_))
}

fn mask_from(dst: &mut BytesMut, start: usize, mask: Option<[u8; 4]>) {
    if let Some(mask) = mask {
        apply_mask(&mut dst[start..], mask);
    }
}

/// XORs `bytes` with the mask, the mask's first byte on the first byte.
fn apply_mask(bytes: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = bytes.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    for (byte, key) in chunks.into_remainder().iter_mut().zip(mask.iter().cycle()) {
        *byte ^= key;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Action, Header, Notify};

    fn notify(len: usize) -> Packet {
        Packet::Notify(Notify {
            action: Action::Id(7),
            header: Header::new(),
            payload: Bytes::from((0..len).map(|i| i as u8).collect::<Vec<u8>>()),
        })
    }

    fn pair(format: PacketFormat) -> (FrameWriter, FrameReader) {
        let writer = FrameWriter::new(Role::Client, format, Arc::default());
        let reader = FrameReader::new(Role::Server, 1 << 20, Arc::default());
        (writer, reader)
    }

    fn packets(reader: &mut FrameReader, buf: &mut BytesMut, format: PacketFormat) -> Vec<Packet> {
        let mut out = Vec::new();
        while let Some(incoming) = reader.next(buf).unwrap() {
            match incoming {
                Incoming::Message { text, bytes } => {
                    out.push(packet_of(text, bytes, format, Limits::default()).unwrap())
                }
                other => panic!("{other:?}"),
            }
        }
        out
    }

    #[test]
    fn packets_of_every_length_class_go_through_masked_and_back() {
        for format in [PacketFormat::Binary, PacketFormat::Text] {
            let (writer, mut reader) = pair(format);
            let sent: Vec<Packet> = [0, 1, 100, 200, 70_000].map(notify).into();
            let mut buf = BytesMut::new();
            sent.iter().for_each(|p| writer.encode(p, &mut buf));
            // Fed a byte at a time, as a slow socket would.
            let mut fed = BytesMut::new();
            let mut got = Vec::new();
            for byte in buf {
                fed.put_u8(byte);
                got.extend(packets(&mut reader, &mut fed, format));
            }
            assert_eq!(got, sent, "{format:?}");
            assert!(!reader.inside_a_message(&fed));
        }
    }

    #[test]
    fn only_a_servers_plain_binary_messages_send_large_payloads_by_reference_and_in_the_same_bytes()
    {
        let (large, small) = (notify(BORROW_FROM), notify(BORROW_FROM - 1));
        let all_bytes = |out: &mut Outgoing| {
            let mut bytes = Vec::new();
            let mut io = std::pin::pin!(&mut bytes);
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            while !out.is_empty() {
                let io: std::pin::Pin<&mut (dyn tokio::io::AsyncWrite + Send)> = io.as_mut();
                let std::task::Poll::Ready(Ok(n)) = out.poll_write(io, &mut cx) else {
                    panic!("a Vec takes every write");
                };
                out.advance(n);
            }
            bytes
        };
        let cases = [
            (Role::Server, PacketFormat::Binary, false, true),
            (Role::Server, PacketFormat::Binary, true, false),
            (Role::Server, PacketFormat::Text, false, false),
            (Role::Client, PacketFormat::Binary, false, false),
        ];
        for (role, format, deflate, borrows) in cases {
            let writer = FrameWriter::new(role, format, Arc::default()).with_deflate(deflate);
            let case = format!("{role:?} {format:?}, deflate {deflate}");
            assert_eq!(
                writer.payload_to_borrow(&large).is_some(),
                borrows,
                "{case}"
            );
            assert!(writer.payload_to_borrow(&small).is_none(), "{case}");
            if role == Role::Server && !deflate {
                let mut copied = BytesMut::new();
                writer.encode(&large, &mut copied);
                let mut out = Outgoing::default();
                writer.encode_into(&large, &mut out);
                assert_eq!(all_bytes(&mut out), copied, "{case}");
            }
        }
    }

    #[test]
    fn the_server_side_writes_what_a_client_reads() {
        let writer = FrameWriter::new(Role::Server, PacketFormat::Binary, Arc::default());
        let mut reader = FrameReader::new(Role::Client, 1 << 20, Arc::default());
        let mut buf = BytesMut::new();
        writer.encode(&notify(300), &mut buf);
        assert_eq!(buf[1], 126, "unmasked, with a 16-bit length");
        assert_eq!(
            packets(&mut reader, &mut buf, PacketFormat::Binary),
            [notify(300)]
        );
    }

    #[test]
    fn a_fragmented_message_with_a_ping_between_its_fragments_comes_whole() {
        let owed = Arc::new(Owed::default());
        let mut reader = FrameReader::new(Role::Client, 1 << 20, owed.clone());
        let mut message = BytesMut::new();
        notify(10).encode_message(&mut message);
        let (a, b) = message.split_at(4);
        let mut buf = BytesMut::new();
        buf.put_slice(&[BINARY, a.len() as u8]);
        buf.put_slice(a);
        buf.put_slice(&[FIN | PING, 3]);
        buf.put_slice(b"abc");
        buf.put_slice(&[FIN | CONTINUATION, b.len() as u8]);
        buf.put_slice(b);
        assert_eq!(reader.next(&mut buf).unwrap(), Some(Incoming::Ping));
        let Some(Incoming::Message { text: false, bytes }) = reader.next(&mut buf).unwrap() else {
            panic!("the message");
        };
        assert_eq!(bytes, message);
        // The engine answers the Ping with a Pong packet, which goes out as the Pong frame.
        let writer = FrameWriter::new(Role::Server, PacketFormat::Binary, owed);
        let mut out = BytesMut::new();
        writer.encode(&Packet::Pong, &mut out);
        assert_eq!(&out[..], &[FIN | PONG, 3, b'a', b'b', b'c']);
        out.clear();
        writer.encode(&Packet::Pong, &mut out);
        assert_ne!(out[0], FIN | PONG, "one Pong frame per Ping");
        // Two Pings before the answers: two Pong frames, with the last Ping's payload.
        let mut reader = FrameReader::new(Role::Client, 1 << 20, writer.owed.clone());
        let mut pings = BytesMut::from(&[FIN | PING, 1, b'x', FIN | PING, 1, b'y'][..]);
        assert_eq!(reader.next(&mut pings).unwrap(), Some(Incoming::Ping));
        assert_eq!(reader.next(&mut pings).unwrap(), Some(Incoming::Ping));
        out.clear();
        for _ in 0..3 {
            writer.encode(&Packet::Pong, &mut out);
        }
        assert_eq!(&out[..6], &[FIN | PONG, 1, b'y', FIN | PONG, 1, b'y']);
        assert_ne!(out[6], FIN | PONG, "a Pong packet for a Ping packet");
    }

    #[test]
    fn a_close_ends_the_reading_and_is_echoed() {
        let owed = Arc::new(Owed::default());
        let mut reader = FrameReader::new(Role::Client, 1 << 20, owed.clone());
        let mut buf = BytesMut::from(&[FIN | CLOSE, 2, 0x03, 0xE9, FIN | BINARY, 1, 0x10][..]);
        assert_eq!(reader.next(&mut buf).unwrap(), Some(Incoming::Closed));
        assert_eq!(
            reader.next(&mut buf).unwrap(),
            None,
            "nothing after a Close"
        );
        assert!(!reader.inside_a_message(&buf));
        let writer = FrameWriter::new(Role::Server, PacketFormat::Binary, owed);
        let mut out = BytesMut::new();
        writer.close(&mut out);
        assert_eq!(&out[..], &[FIN | CLOSE, 2, 0x03, 0xE9]);
    }

    #[test]
    fn frames_that_break_the_protocol_are_refused() {
        let cases: [(&[u8], &str); 8] = [
            (&[FIN | BINARY, 0], "without a mask"),
            (&[FIN | BINARY | 0x40, MASKED], "reserved bits"),
            (&[PING, MASKED], "fragmented websocket control"),
            (&[FIN | PING, MASKED | 126, 0, 126], "control frame of 126"),
            (
                &[FIN | CONTINUATION, MASKED, 0, 0, 0, 0],
                "continuation frame without",
            ),
            (&[FIN | 0x3, MASKED, 0, 0, 0, 0], "unknown opcode"),
            (
                &[FIN | CLOSE, MASKED | 1, 0, 0, 0, 0, 0],
                "one-byte payload",
            ),
            (
                &[FIN | TEXT, MASKED | 1, 0, 0, 0, 0, 0xFF],
                "text message that is not UTF-8",
            ),
        ];
        for (bytes, expected) in cases {
            let mut reader = FrameReader::new(Role::Server, 1 << 20, Arc::default());
            let Err(error) = reader.next(&mut BytesMut::from(bytes)) else {
                panic!("{bytes:?} taken; expected {expected}");
            };
            assert_eq!(error.code(), crate::Code::ProtocolError, "{expected}");
            assert!(error.message().contains(expected), "{error} for {expected}");
        }
        let mut reader = FrameReader::new(Role::Client, 1 << 20, Arc::default());
        let error = reader
            .next(&mut BytesMut::from(&[FIN | BINARY, MASKED, 0, 0, 0, 0][..]))
            .unwrap_err();
        assert!(
            error
                .message()
                .contains("masked websocket frame from a server")
        );
    }

    /// A compressible packet of `len` payload bytes.
    #[cfg(feature = "gzip")]
    fn chatty(len: usize) -> Packet {
        Packet::Notify(Notify {
            action: Action::Id(7),
            header: Header::new(),
            payload: Bytes::from(b"{\"text\":\"hello\"}".repeat(len / 16 + 1)[..len].to_vec()),
        })
    }

    #[cfg(feature = "gzip")]
    fn deflating(role: Role, format: PacketFormat) -> (FrameWriter, FrameReader) {
        let peer = match role {
            Role::Client => Role::Server,
            Role::Server => Role::Client,
        };
        let writer = FrameWriter::new(role, format, Arc::default()).with_deflate(true);
        let reader = FrameReader::new(peer, 1 << 20, Arc::default())
            .with_inflater(true, InflationLimit::default());
        (writer, reader)
    }

    #[cfg(feature = "gzip")]
    #[test]
    fn with_permessage_deflate_large_messages_go_deflated_and_small_ones_plain() {
        for role in [Role::Client, Role::Server] {
            for format in [PacketFormat::Binary, PacketFormat::Text] {
                let (writer, mut reader) = deflating(role, format);
                let mut small = BytesMut::new();
                writer.encode(&chatty(40), &mut small);
                assert_eq!(small[0], FIN | opcode_of(format), "{role:?} {format:?}");
                let mut large = BytesMut::new();
                writer.encode(&chatty(4000), &mut large);
                assert_eq!(
                    large[0],
                    FIN | RSV1 | opcode_of(format),
                    "{role:?} {format:?}"
                );
                assert!(large.len() < 1000, "{} bytes for 4000", large.len());
                let mut buf = small;
                buf.extend_from_slice(&large);
                writer.encode(&notify(300), &mut buf);
                assert_eq!(
                    packets(&mut reader, &mut buf, format),
                    [chatty(40), chatty(4000), notify(300)],
                    "{role:?} {format:?}"
                );
            }
        }
    }

    #[cfg(feature = "gzip")]
    fn opcode_of(format: PacketFormat) -> u8 {
        match format {
            PacketFormat::Binary => BINARY,
            PacketFormat::Text => TEXT,
        }
    }

    #[cfg(feature = "gzip")]
    #[test]
    fn the_rfc_examples_of_deflated_messages_are_read() {
        // RFC 7692 section 7.2.3.1: "Hello" deflated in one frame, then in two fragments.
        let whole = [0xc1, 0x07, 0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        let fragments = [
            0x41, 0x03, 0xf2, 0x48, 0xcd, 0x80, 0x04, 0xc9, 0xc9, 0x07, 0x00,
        ];
        for frames in [&whole[..], &fragments[..]] {
            let mut reader = FrameReader::new(Role::Client, 1 << 20, Arc::default())
                .with_inflater(true, InflationLimit::default());
            let incoming = reader.next(&mut BytesMut::from(frames)).unwrap();
            assert_eq!(
                incoming,
                Some(Incoming::Message {
                    text: true,
                    bytes: Bytes::from_static(b"Hello"),
                })
            );
        }
    }

    /// An unmasked frame, as a server sends it; `first` is its first byte whole.
    #[cfg(feature = "gzip")]
    fn server_frame(first: u8, payload: &[u8], dst: &mut BytesMut) {
        dst.put_u8(first);
        match payload.len() {
            len @ 0..=125 => dst.put_u8(len as u8),
            len => {
                dst.put_u8(126);
                dst.put_u16(len as u16);
            }
        }
        dst.put_slice(payload);
    }

    #[cfg(feature = "gzip")]
    #[test]
    fn deflated_messages_split_anywhere_come_back_whole() {
        let mut rng = fastrand::Rng::with_seed(30);
        let mut reader = FrameReader::new(Role::Client, 1 << 16, Arc::default())
            .with_inflater(true, InflationLimit::default());
        for _ in 0..500 {
            let words = ["room", "lobby", "hello", "{\"text\":", "é", " "];
            let plain: String = (0..rng.usize(30..3000))
                .map(|_| words[rng.usize(..words.len())])
                .collect();
            let mut deflated = BytesMut::new();
            assert!(super::deflate::deflate(plain.as_bytes(), &mut deflated));
            // Cut into fragments at random places, some of them empty.
            let mut cuts: Vec<usize> = (0..rng.usize(0..4))
                .map(|_| rng.usize(..=deflated.len()))
                .collect();
            cuts.push(0);
            cuts.push(deflated.len());
            cuts.sort_unstable();
            let mut buf = BytesMut::new();
            for (i, pair) in cuts.windows(2).enumerate() {
                let opcode = if i == 0 { RSV1 | TEXT } else { CONTINUATION };
                let fin = if i == cuts.len() - 2 { FIN } else { 0 };
                server_frame(fin | opcode, &deflated[pair[0]..pair[1]], &mut buf);
            }
            let incoming = reader.next(&mut buf).unwrap();
            let Some(Incoming::Message { text: true, bytes }) = incoming else {
                panic!("no text message: {incoming:?}");
            };
            assert!(bytes == plain.as_bytes(), "{} bytes differ", plain.len());
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn the_reserved_bit_of_deflate_is_refused_where_it_does_not_belong() {
        let cases: [(&[u8], &str); 4] = [
            (&[FIN | RSV1 | PING, MASKED, 0, 0, 0, 0], "reserved bits"),
            (
                &[
                    RSV1 | TEXT,
                    MASKED | 1,
                    0,
                    0,
                    0,
                    0,
                    0xf2,
                    FIN | RSV1 | CONTINUATION,
                    MASKED,
                    0,
                    0,
                    0,
                    0,
                ],
                "reserved bits",
            ),
            (&[FIN | 0x20 | BINARY, MASKED, 0, 0, 0, 0], "reserved bits"),
            (
                &[FIN | RSV1 | BINARY, MASKED | 2, 0, 0, 0, 0, 0xff, 0xff],
                "does not inflate",
            ),
        ];
        for (bytes, expected) in cases {
            let reader = FrameReader::new(Role::Server, 1 << 20, Arc::default());
            let mut reader = reader.with_inflater(true, InflationLimit::default());
            let mut buf = BytesMut::from(bytes);
            let error = loop {
                match reader.next(&mut buf) {
                    Ok(Some(_)) => continue,
                    Ok(None) => panic!("{bytes:?} taken; expected {expected}"),
                    Err(error) => break error,
                }
            };
            // Without the gzip feature no inflater is set, and every reserved bit is refused.
            let expected = if cfg!(feature = "gzip") {
                expected
            } else {
                "reserved bits"
            };
            assert_eq!(error.code(), crate::Code::ProtocolError, "{expected}");
            assert!(error.message().contains(expected), "{error} for {expected}");
        }
    }

    #[cfg(feature = "gzip")]
    #[test]
    fn a_deflated_message_that_inflates_past_the_limit_is_refused() {
        let mut plain = BytesMut::new();
        plain.put_bytes(b'x', 100_000);
        let mut payload = BytesMut::new();
        assert!(super::deflate::deflate(&plain, &mut payload));
        let writer = FrameWriter::new(Role::Client, PacketFormat::Binary, Arc::default());
        let mut buf = BytesMut::new();
        writer.frame(RSV1 | BINARY, &payload, &mut buf);
        let mut reader = FrameReader::new(Role::Server, 64 << 10, Arc::default())
            .with_inflater(true, InflationLimit::default());
        let error = reader.next(&mut buf).unwrap_err();
        assert_eq!(error.code(), crate::Code::RequestEntityTooLarge, "{error}");
    }

    #[test]
    fn a_message_over_the_limit_is_refused_before_its_payload_comes() {
        let mut reader = FrameReader::new(Role::Client, 1000, Arc::default());
        // A header that announces 2^63 bytes, and a fragmented message that outgrows the limit.
        let mut huge = BytesMut::from(
            &[
                FIN | BINARY,
                127,
                0x7F,
                0xFF,
                0xFF,
                0xFF,
                0xFF,
                0xFF,
                0xFF,
                0xFF,
            ][..],
        );
        let error = reader.next(&mut huge).unwrap_err();
        assert_eq!(error.code(), crate::Code::RequestEntityTooLarge);
        let mut reader = FrameReader::new(Role::Client, 1000, Arc::default());
        let mut buf = BytesMut::new();
        buf.put_slice(&[BINARY, 126, 0x02, 0x58]);
        buf.put_bytes(1, 600);
        buf.put_slice(&[FIN | CONTINUATION, 126, 0x02, 0x58]);
        assert_eq!(
            reader.next(&mut buf).unwrap_err().code(),
            crate::Code::RequestEntityTooLarge
        );
    }

    #[test]
    fn large_messages_share_the_budget_while_they_come_and_give_it_back_once_whole() {
        let budget = BufferBudget::new(200 << 10);
        let reader = || {
            FrameReader::new(Role::Server, 1 << 20, Arc::default())
                .with_budget(Some(budget.clone()))
        };
        let (mut first, mut second) = (reader(), reader());
        let writer = FrameWriter::new(Role::Client, PacketFormat::Binary, Arc::default());
        let mut whole = BytesMut::new();
        writer.encode(&notify(150 << 10), &mut whole);
        // The first message's start charges its whole frame; the second's does not fit.
        let mut start = BytesMut::from(&whole[..100]);
        assert_eq!(first.next(&mut start).unwrap(), None);
        assert_eq!(budget.used(), whole.len());
        let error = second.next(&mut BytesMut::from(&whole[..100])).unwrap_err();
        assert_eq!(error.code(), crate::Code::TooManyRequests, "{error}");
        // Small messages pay nothing for it, even while it is spent.
        let mut small = BytesMut::new();
        writer.encode(&notify(10), &mut small);
        assert!(matches!(
            second.next(&mut small),
            Ok(Some(Incoming::Message { .. }))
        ));
        start.extend_from_slice(&whole[100..]);
        assert!(matches!(
            first.next(&mut start),
            Ok(Some(Incoming::Message { .. }))
        ));
        assert_eq!(budget.used(), 0, "given back once whole");
    }

    #[test]
    fn text_packets_that_are_not_utf8_go_in_binary_messages() {
        let (writer, mut reader) = pair(PacketFormat::Text);
        let mut buf = BytesMut::new();
        let binary_payload = Packet::Notify(Notify {
            action: Action::Id(7),
            header: Header::new(),
            payload: Bytes::from_static(&[0xFF, 0xFE]),
        });
        writer.encode(&binary_payload, &mut buf);
        assert_eq!(buf[0], FIN | BINARY);
        assert_eq!(
            packets(&mut reader, &mut buf, PacketFormat::Text),
            [binary_payload]
        );
    }

    #[test]
    fn random_bytes_are_taken_or_refused_never_a_panic() {
        let mut rng = fastrand::Rng::with_seed(16);
        for _ in 0..40_000 {
            let role = if rng.bool() {
                Role::Server
            } else {
                Role::Client
            };
            // Half the time with permessage-deflate agreed: the reserved bit then takes the
            // payload to the inflater.
            let agreed = rng.bool();
            let mut reader = FrameReader::new(role, 300, Arc::default())
                .with_inflater(agreed, InflationLimit::default());
            let mut bytes: Vec<u8> = (0..rng.usize(0..80)).map(|_| rng.u8(..)).collect();
            // Mostly well-formed first bytes, so that the checks past them are reached too.
            if let [first, second, ..] = &mut bytes[..] {
                *first = (*first & 0x8F) | if rng.u8(..4) == 0 { 0x40 } else { 0 };
                *second = match role {
                    Role::Server => *second | MASKED,
                    Role::Client => *second & !MASKED,
                };
            }
            let mut buf = BytesMut::from(&bytes[..]);
            for _ in 0..bytes.len() + 1 {
                match reader.next(&mut buf) {
                    Ok(Some(Incoming::Message { bytes, .. })) => assert!(bytes.len() <= 300),
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }

    #[test]
    fn masking_twice_gives_the_bytes_back_whatever_their_length() {
        for len in 0..40 {
            let original: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut bytes = original.clone();
            apply_mask(&mut bytes, [1, 2, 3, 4]);
            for (i, (masked, plain)) in bytes.iter().zip(&original).enumerate() {
                assert_eq!(masked ^ plain, [1, 2, 3, 4][i % 4]);
            }
            apply_mask(&mut bytes, [1, 2, 3, 4]);
            assert_eq!(bytes, original);
        }
    }
}
