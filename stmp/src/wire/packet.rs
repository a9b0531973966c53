//! Packets and their binary forms (byte stream and message).

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use super::Limits;
use super::cursor::{Budget, Cursor, Stop};
use super::header::{Header, check_header_size};
use super::varint;
use crate::{Code, Status};

/// The kind of a packet: the three bits after FIN in the packet head.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Keep-alive probe; answered with Pong.
    Ping = 0,
    /// Answer to a Ping.
    Pong = 1,
    /// A call that expects a Response with the same mid.
    Request = 2,
    /// A one-way message (events are Notifies).
    Notify = 3,
    /// The answer to a Request.
    Response = 4,
    /// The end of the connection, with a status and a reason.
    Close = 5,
}

impl Kind {
    fn from_bits(bits: u8) -> Option<Kind> {
        Some(match bits {
            0 => Kind::Ping,
            1 => Kind::Pong,
            2 => Kind::Request,
            3 => Kind::Notify,
            4 => Kind::Response,
            5 => Kind::Close,
            _ => return None,
        })
    }

    /// Whether a packet of this kind may carry a header block.
    pub(crate) fn allows_header(self) -> bool {
        matches!(self, Kind::Request | Kind::Notify | Kind::Response)
    }

    /// Whether a packet of this kind may carry a payload.
    pub(crate) fn allows_payload(self) -> bool {
        !matches!(self, Kind::Ping | Kind::Pong)
    }

    /// Whether a packet of this kind names an action.
    pub(crate) fn has_action(self) -> bool {
        matches!(self, Kind::Request | Kind::Notify)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The method a Request or Notify is for: a numeric action or the method's full name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// A numeric action id (see [`action_id`](super::action_id)).
    Id(u64),
    /// A full method name, `package.Service.Method` (sent with the SA flag).
    Method(String),
}

/// A call that expects a [`Response`] with the same `mid`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The message id the response echoes.
    pub mid: u16,
    /// The method called.
    pub action: Action,
    /// Request metadata.
    pub header: Header,
    /// The encoded input message.
    pub payload: Bytes,
}

/// A one-way message: never answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notify {
    /// The method (event) notified.
    pub action: Action,
    /// Notify metadata.
    pub header: Header,
    /// The encoded event message.
    pub payload: Bytes,
}

/// The answer to a [`Request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The request's message id.
    pub mid: u16,
    /// [`Code::Ok`], or the error's code.
    pub status: Code,
    /// Response metadata.
    pub header: Header,
    /// The encoded output message when Ok; the error message (UTF-8) otherwise.
    pub payload: Bytes,
}

/// The end of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Close {
    /// Why the connection ends ([`Code::Ok`] for a normal close).
    pub status: Code,
    /// A human-readable reason (may be empty).
    pub reason: String,
}

/// One STMP packet.
///
/// Encode it with [`encode_stream`](Packet::encode_stream) (TCP, TLS, QUIC streams),
/// [`encode_message`](Packet::encode_message) (WebSocket binary messages) or
/// [`encode_text`](Packet::encode_text) (WebSocket text messages); decode it with
/// [`PacketCodec`](super::PacketCodec), [`decode_message`](Packet::decode_message) or
/// [`decode_text`](Packet::decode_text).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    /// Keep-alive probe.
    Ping,
    /// Answer to a Ping.
    Pong,
    /// A call.
    Request(Request),
    /// A one-way message.
    Notify(Notify),
    /// The answer to a call.
    Response(Response),
    /// The end of the connection.
    Close(Close),
}

const FIN: u8 = 0x80;
const WP: u8 = 0x08;
const WH: u8 = 0x04;
const SA: u8 = 0x02;
const RESERVED: u8 = 0x01;

/// Whether the payload carries its length (byte streams) or runs to the end (messages).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Form {
    Stream,
    Message,
}

impl Packet {
    /// The packet's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Packet::Ping => Kind::Ping,
            Packet::Pong => Kind::Pong,
            Packet::Request(_) => Kind::Request,
            Packet::Notify(_) => Kind::Notify,
            Packet::Response(_) => Kind::Response,
            Packet::Close(_) => Kind::Close,
        }
    }

    /// A Close packet.
    pub fn close(status: Code, reason: impl Into<String>) -> Packet {
        Packet::Close(Close {
            status,
            reason: reason.into(),
        })
    }

    pub(crate) fn parts(&self) -> Parts<'_> {
        let none = Parts {
            mid: None,
            status: None,
            action: None,
            header: None,
            payload: &[],
        };
        match self {
            Packet::Ping | Packet::Pong => none,
            Packet::Request(r) => Parts {
                mid: Some(r.mid),
                action: Some(&r.action),
                header: Some(&r.header),
                payload: &r.payload,
                ..none
            },
            Packet::Notify(n) => Parts {
                action: Some(&n.action),
                header: Some(&n.header),
                payload: &n.payload,
                ..none
            },
            Packet::Response(r) => Parts {
                mid: Some(r.mid),
                status: Some(r.status),
                header: Some(&r.header),
                payload: &r.payload,
                ..none
            },
            Packet::Close(c) => Parts {
                status: Some(c.status),
                payload: c.reason.as_bytes(),
                ..none
            },
        }
    }

    /// Writes the byte-stream form: the payload carries a varint length.
    pub fn encode_stream(&self, dst: &mut BytesMut) {
        dst.reserve(self.encoded_stream_len());
        self.encode_binary(dst, Form::Stream);
    }

    /// Like [`encode_stream`](Packet::encode_stream), without reserving the packet's length
    /// first: for a batch written into a buffer kept between batches, which mostly has the
    /// room already. Measuring each packet cost about as much as writing its fixed fields.
    pub(crate) fn append_stream(&self, dst: &mut BytesMut) {
        self.encode_binary(dst, Form::Stream);
    }

    /// Writes the message form (a WebSocket binary message): the payload runs to the end.
    pub fn encode_message(&self, dst: &mut BytesMut) {
        dst.reserve(self.encoded_stream_len());
        self.encode_binary(dst, Form::Message);
    }

    /// Like [`encode_message`](Packet::encode_message), without reserving the room first.
    #[cfg_attr(not(feature = "ws"), allow(dead_code))]
    pub(crate) fn append_message(&self, dst: &mut BytesMut) {
        self.encode_binary(dst, Form::Message);
    }

    /// The payload of a packet that carries one, as the buffer it is a slice of: what a writer
    /// may send by reference instead of copying it behind the packet's head.
    pub(crate) fn payload_bytes(&self) -> Option<&Bytes> {
        match self {
            Packet::Request(Request { payload, .. })
            | Packet::Notify(Notify { payload, .. })
            | Packet::Response(Response { payload, .. }) => Some(payload),
            Packet::Ping | Packet::Pong | Packet::Close(_) => None,
        }
    }

    /// [`append_stream`](Packet::append_stream) without the payload's bytes (its length is
    /// written): they follow, from [`payload_bytes`](Packet::payload_bytes).
    pub(crate) fn append_stream_head(&self, dst: &mut BytesMut) {
        let _payload = self.encode_head(dst, Form::Stream);
    }

    /// [`append_message`](Packet::append_message) without the payload's bytes.
    #[cfg_attr(not(feature = "ws"), allow(dead_code))]
    pub(crate) fn append_message_head(&self, dst: &mut BytesMut) {
        let _payload = self.encode_head(dst, Form::Message);
    }

    /// The exact length of [`encode_stream`](Packet::encode_stream)'s output.
    pub fn encoded_stream_len(&self) -> usize {
        let parts = self.parts();
        let mut len = 1;
        len += parts.mid.map_or(0, |_| 2);
        len += parts.status.map_or(0, |_| 1);
        len += match parts.action {
            None => 0,
            Some(Action::Id(id)) => varint::encoded_len(*id),
            Some(Action::Method(name)) => prefixed_len(name.len()),
        };
        len += parts
            .header
            .filter(|h| !h.is_empty())
            .map_or(0, |h| prefixed_len(h.encoded_len()));
        if !parts.payload.is_empty() {
            len += prefixed_len(parts.payload.len());
        }
        len
    }

    /// The exact length of [`encode_message`](Packet::encode_message)'s output.
    #[cfg_attr(not(feature = "ws"), allow(dead_code))]
    pub(crate) fn encoded_message_len(&self) -> usize {
        let payload = self.parts().payload.len();
        let prefix = match payload {
            0 => 0,
            len => varint::encoded_len(len as u64),
        };
        self.encoded_stream_len() - prefix
    }

    fn encode_binary(&self, dst: &mut BytesMut, form: Form) {
        let payload = self.encode_head(dst, form);
        dst.put_slice(payload);
    }

    /// Everything but the payload's bytes: the fixed fields, the action, the header and, in the
    /// stream form, the payload's length. Returns the payload.
    fn encode_head(&self, dst: &mut BytesMut, form: Form) -> &[u8] {
        let parts = self.parts();
        let header = parts.header.filter(|h| !h.is_empty());
        let mut head = FIN | (self.kind() as u8) << 4;
        if !parts.payload.is_empty() {
            head |= WP;
        }
        if header.is_some() {
            head |= WH;
        }
        if let Some(Action::Method(_)) = parts.action {
            head |= SA;
        }
        // The fixed fields and an action id leave in one copy: each `put` checks the room
        // and copies on its own, and a request took nine of them.
        let mut fixed = [0; FIXED_MAX];
        fixed[0] = head;
        let mut len = 1;
        if let Some(mid) = parts.mid {
            fixed[len..len + 2].copy_from_slice(&mid.to_le_bytes());
            len += 2;
        }
        if let Some(status) = parts.status {
            fixed[len] = status.as_u8();
            len += 1;
        }
        match parts.action {
            None => dst.put_slice(&fixed[..len]),
            Some(Action::Id(id)) => {
                len += varint::write(&mut fixed[len..], *id);
                dst.put_slice(&fixed[..len]);
            }
            Some(Action::Method(name)) => {
                len += varint::write(&mut fixed[len..], name.len() as u64);
                dst.put_slice(&fixed[..len]);
                dst.put_slice(name.as_bytes());
            }
        }
        if let Some(header) = header {
            varint::put(dst, header.encoded_len() as u64);
            header.encode(dst);
        }
        if !parts.payload.is_empty() && form == Form::Stream {
            varint::put(dst, parts.payload.len() as u64);
        }
        parts.payload
    }

    /// Decodes one complete WebSocket binary message: the payload is the rest of the message,
    /// as a zero-copy slice of `message`.
    ///
    /// `limits` bound method + header + payload and the header (a bare `usize` is the packet
    /// size limit, with the default header limits).
    ///
    /// ```
    /// use bytes::Bytes;
    /// use stmp::wire::{Action, Packet};
    ///
    /// let message = Bytes::from_static(b"\xa8\x01\x00\xf7\x91\xd9\x19\x0a\x0agolden-ws1");
    /// let Packet::Request(request) = Packet::decode_message(message, 1 << 20).unwrap() else {
    ///     panic!("not a request")
    /// };
    /// assert_eq!(request.action, Action::Id(0x033648F7));
    /// assert_eq!(&request.payload[..], b"\x0a\x0agolden-ws1");
    /// ```
    pub fn decode_message(message: Bytes, limits: impl Into<Limits>) -> Result<Packet, Status> {
        let limits = limits.into();
        let layout = scan(&message, Form::Message, &limits).map_err(|e| e.truncated("packet"))?;
        layout.assemble(&message, &limits)
    }
}

/// The fields of a packet, whatever its kind.
pub(crate) struct Parts<'a> {
    pub(crate) mid: Option<u16>,
    pub(crate) status: Option<Code>,
    pub(crate) action: Option<&'a Action>,
    pub(crate) header: Option<&'a Header>,
    pub(crate) payload: &'a [u8],
}

/// The head byte, a message id, a status and a varint: the most [`Packet::encode_stream`]
/// writes before the method name, header and payload.
const FIXED_MAX: usize = 1 + 2 + 1 + varint::MAX_LEN;

fn prefixed_len(len: usize) -> usize {
    varint::encoded_len(len as u64) + len
}

/// Where the fields of a binary packet lie in its bytes, found before any field is copied.
#[derive(Debug)]
pub(crate) struct Layout {
    kind: Kind,
    mid: u16,
    status: u8,
    action: ScannedAction,
    header: std::ops::Range<usize>,
    payload: std::ops::Range<usize>,
    /// The packet's length in bytes.
    pub(crate) len: usize,
}

#[derive(Debug)]
enum ScannedAction {
    None,
    Id(u64),
    Method(std::ops::Range<usize>),
}

/// Parses the head byte: the kind and which optional fields follow.
fn parse_head(head: u8) -> Result<(Kind, u8), Status> {
    let bad = |why: &str| Status::protocol_error(format!("invalid packet head {head:#04x}: {why}"));
    if head & FIN == 0 {
        return Err(bad("FIN bit is not set"));
    }
    if head & RESERVED != 0 {
        return Err(bad("reserved bit is set"));
    }
    let kind = Kind::from_bits((head >> 4) & 0x07).ok_or_else(|| bad("unknown kind"))?;
    if head & WP != 0 && !kind.allows_payload() {
        return Err(bad(&format!("{kind} cannot carry a payload")));
    }
    if head & WH != 0 && !kind.allows_header() {
        return Err(bad(&format!("{kind} cannot carry a header")));
    }
    if head & SA != 0 && !kind.has_action() {
        return Err(bad(&format!("{kind} cannot carry a method name")));
    }
    Ok((kind, head))
}

/// Finds the layout of the binary packet at the start of `src`, checking the limits against
/// each announced length before the bytes behind it are awaited.
pub(crate) fn scan(src: &[u8], form: Form, limits: &Limits) -> Result<Layout, Stop> {
    let mut cursor = Cursor::new(src);
    let mut budget = Budget::new(limits.max_packet_size);
    let (kind, head) = parse_head(cursor.u8()?)?;
    let mid = match kind {
        Kind::Request | Kind::Response => cursor.u16_le()?,
        _ => 0,
    };
    let status = match kind {
        Kind::Response | Kind::Close => cursor.u8()?,
        _ => 0,
    };
    let action = if !kind.has_action() {
        ScannedAction::None
    } else if head & SA != 0 {
        let len = cursor.length("method name", &mut budget)?;
        ScannedAction::Method(cursor.take(len)?)
    } else {
        ScannedAction::Id(cursor.uvarint("action")?)
    };
    let empty = cursor.position()..cursor.position();
    let header = if head & WH != 0 {
        let announced = cursor.uvarint("header")?;
        check_header_size(announced, limits)?;
        let len = budget.charge("header", announced)?;
        cursor.take(len)?
    } else {
        empty.clone()
    };
    let payload = if head & WP == 0 {
        cursor.position()..cursor.position()
    } else if form == Form::Stream {
        let len = cursor.length("payload", &mut budget)?;
        cursor.take(len)?
    } else {
        budget.charge("payload", cursor.remaining() as u64)?;
        cursor.rest()
    };
    if form == Form::Message && cursor.remaining() > 0 {
        return Err(Stop::Invalid(Status::protocol_error(format!(
            "{} trailing bytes after the {kind} packet",
            cursor.remaining()
        ))));
    }
    Ok(Layout {
        kind,
        mid,
        status,
        action,
        header,
        payload,
        len: cursor.position(),
    })
}

impl Layout {
    /// Builds the packet from the bytes the layout was scanned from; the payload is a
    /// zero-copy slice of `src`.
    pub(crate) fn assemble(self, src: &Bytes, limits: &Limits) -> Result<Packet, Status> {
        let status = || {
            Code::from_u8(self.status).ok_or_else(|| {
                Status::protocol_error(format!("unknown status code {:#04x}", self.status))
            })
        };
        let action = || match &self.action {
            ScannedAction::Id(id) => Ok(Action::Id(*id)),
            ScannedAction::Method(range) => std::str::from_utf8(&src[range.clone()])
                .map(|name| Action::Method(name.to_owned()))
                .map_err(|_| Status::protocol_error("method name is not valid UTF-8")),
            ScannedAction::None => unreachable_action(),
        };
        let header = || Header::decode_with(&src[self.header.clone()], limits);
        let payload = src.slice(self.payload.clone());
        Ok(match self.kind {
            Kind::Ping => Packet::Ping,
            Kind::Pong => Packet::Pong,
            Kind::Request => Packet::Request(Request {
                mid: self.mid,
                action: action()?,
                header: header()?,
                payload,
            }),
            Kind::Notify => Packet::Notify(Notify {
                action: action()?,
                header: header()?,
                payload,
            }),
            Kind::Response => Packet::Response(Response {
                mid: self.mid,
                status: status()?,
                header: header()?,
                payload,
            }),
            Kind::Close => Packet::Close(Close {
                status: status()?,
                reason: String::from_utf8_lossy(&payload).into_owned(),
            }),
        })
    }
}

/// `scan` records an action for every kind that has one, so this is never reached; it still
/// answers with an error rather than a panic.
fn unreachable_action() -> Result<Action, Status> {
    Err(Status::protocol_error("packet kind carries no action"))
}
