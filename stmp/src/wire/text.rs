//! The text form of packets, for WebSocket text messages.
//!
//! ```text
//! Request   Q<mid>:<action>   or  Q<mid>:M:<escaped method>
//! Notify    N<action>         or  NM:<escaped method>
//! Response  S<mid>:<status>
//! Close     C<status>
//! Ping I, Pong O; then "\nH<header>" and "\nP<payload to the end>" when present.
//! ```
//! Numbers are upper-case hex without leading zeros.

use std::fmt::Write as _;

use bytes::{BufMut, Bytes, BytesMut};

use super::Limits;
use super::header::{Header, escape_into, unescape};
use super::packet::{Action, Close, Kind, Notify, Packet, Request, Response};
use crate::{Code, Status};

fn letter(kind: Kind) -> u8 {
    match kind {
        Kind::Ping => b'I',
        Kind::Pong => b'O',
        Kind::Request => b'Q',
        Kind::Notify => b'N',
        Kind::Response => b'S',
        Kind::Close => b'C',
    }
}

fn put_hex(dst: &mut BytesMut, value: u64) {
    // Writing to a BytesMut cannot fail.
    let _ = write!(dst, "{value:X}");
}

fn put_action(dst: &mut BytesMut, action: &Action) {
    match action {
        Action::Id(id) => put_hex(dst, *id),
        Action::Method(name) => {
            dst.put_slice(b"M:");
            escape_into(name, dst);
        }
    }
}

impl Packet {
    /// Writes the text form (a WebSocket text message).
    ///
    /// ```
    /// use bytes::{Bytes, BytesMut};
    /// use stmp::wire::{Action, Packet, Request};
    ///
    /// let request = Packet::Request(Request {
    ///     mid: 1,
    ///     action: Action::Id(0x033648F7),
    ///     header: Default::default(),
    ///     payload: Bytes::from_static(br#"{"name":"lobby"}"#),
    /// });
    /// let mut text = BytesMut::new();
    /// request.encode_text(&mut text);
    /// assert_eq!(&text[..], br#"Q1:33648F7
    /// P{"name":"lobby"}"#);
    /// ```
    pub fn encode_text(&self, dst: &mut BytesMut) {
        let parts = self.parts();
        dst.put_u8(letter(self.kind()));
        if let Some(mid) = parts.mid {
            put_hex(dst, u64::from(mid));
            dst.put_u8(b':');
        }
        if let Some(status) = parts.status {
            put_hex(dst, u64::from(status.as_u8()));
        }
        if let Some(action) = parts.action {
            put_action(dst, action);
        }
        if let Some(header) = parts.header.filter(|h| !h.is_empty()) {
            dst.put_slice(b"\nH");
            header.encode(dst);
        }
        if !parts.payload.is_empty() {
            dst.put_slice(b"\nP");
            dst.put_slice(parts.payload);
        }
    }

    /// Decodes one complete text message; the payload is a zero-copy slice of `message`.
    ///
    /// `limits` bound the whole message and its header (a bare `usize` is the message size
    /// limit, with the default header limits).
    ///
    /// ```
    /// use bytes::Bytes;
    /// use stmp::{Code, wire::Packet};
    ///
    /// let text = Bytes::from_static(b"S1:22\nPNotFound");
    /// let Packet::Response(response) = Packet::decode_text(text, 1 << 20).unwrap() else {
    ///     panic!("not a response")
    /// };
    /// assert_eq!((response.mid, response.status), (1, Code::NotFound));
    /// assert_eq!(&response.payload[..], b"NotFound");
    /// ```
    pub fn decode_text(message: Bytes, limits: impl Into<Limits>) -> Result<Packet, Status> {
        let limits = limits.into();
        if message.len() > limits.max_packet_size {
            return Err(Status::request_entity_too_large(format!(
                "text packet of {} bytes is over the limit of {} bytes",
                message.len(),
                limits.max_packet_size
            )));
        }
        let (first, header, payload) = split_lines(&message)?;
        let (&kind_letter, fields) = first
            .split_first()
            .ok_or_else(|| Status::protocol_error("empty text packet"))?;
        let kind = match kind_letter {
            b'I' => Kind::Ping,
            b'O' => Kind::Pong,
            b'Q' => Kind::Request,
            b'N' => Kind::Notify,
            b'S' => Kind::Response,
            b'C' => Kind::Close,
            other => {
                return Err(Status::protocol_error(format!(
                    "unknown text packet kind {:?}",
                    char::from(other)
                )));
            }
        };
        if header.is_some() && !kind.allows_header() {
            return Err(Status::protocol_error(format!(
                "{kind} cannot carry a header"
            )));
        }
        if payload.is_some() && !kind.allows_payload() {
            return Err(Status::protocol_error(format!(
                "{kind} cannot carry a payload"
            )));
        }
        let header = header
            .map(|line| Header::decode_with(line, limits))
            .transpose()?
            .unwrap_or_default();
        let payload = payload.map_or_else(Bytes::new, |range| message.slice(range));
        let packet = match kind {
            Kind::Ping | Kind::Pong => {
                expect_empty(fields, kind)?;
                if kind == Kind::Ping {
                    Packet::Ping
                } else {
                    Packet::Pong
                }
            }
            Kind::Request => {
                let (mid, action) = split_once(fields, b':', "request id")?;
                Packet::Request(Request {
                    mid: parse_mid(mid)?,
                    action: parse_action(action)?,
                    header,
                    payload,
                })
            }
            Kind::Notify => Packet::Notify(Notify {
                action: parse_action(fields)?,
                header,
                payload,
            }),
            Kind::Response => {
                let (mid, status) = split_once(fields, b':', "response id")?;
                Packet::Response(Response {
                    mid: parse_mid(mid)?,
                    status: parse_status(status)?,
                    header,
                    payload,
                })
            }
            Kind::Close => Packet::Close(Close {
                status: parse_status(fields)?,
                reason: String::from_utf8_lossy(&payload).into_owned(),
            }),
        };
        Ok(packet)
    }
}

type Range = std::ops::Range<usize>;

/// The first line, the `H` line, and where the `P` part lies.
type TextLines<'a> = (&'a [u8], Option<&'a [u8]>, Option<Range>);

/// Splits a text message into its first line, its `H` line and its `P` part (which runs to
/// the end and may contain newlines).
pub(crate) fn split_lines(message: &[u8]) -> Result<TextLines<'_>, Status> {
    let mut lines = Lines { message, pos: 0 };
    let first = lines.line();
    let mut header = None;
    let mut payload = None;
    while let Some(tag) = lines.tag() {
        match tag {
            b'H' if header.is_none() && payload.is_none() => header = Some(lines.line()),
            b'P' => {
                payload = Some(lines.pos..message.len());
                break;
            }
            other => {
                return Err(Status::protocol_error(format!(
                    "unexpected line {:?} in text packet",
                    char::from(other)
                )));
            }
        }
    }
    Ok((first, header, payload))
}

struct Lines<'a> {
    message: &'a [u8],
    pos: usize,
}

impl<'a> Lines<'a> {
    /// The bytes up to the next newline (or the end), stepping over the newline.
    fn line(&mut self) -> &'a [u8] {
        let rest = &self.message[self.pos..];
        let end = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
        self.pos += end;
        &rest[..end]
    }

    /// After a line: the tag letter of the next one, if any.
    fn tag(&mut self) -> Option<u8> {
        // `pos` is at a newline or at the end.
        let tag = *self.message.get(self.pos + 1)?;
        self.pos += 2;
        Some(tag)
    }
}

fn expect_empty(fields: &[u8], kind: Kind) -> Result<(), Status> {
    if fields.is_empty() {
        Ok(())
    } else {
        Err(Status::protocol_error(format!(
            "unexpected fields after {kind}"
        )))
    }
}

fn split_once<'a>(src: &'a [u8], sep: u8, what: &str) -> Result<(&'a [u8], &'a [u8]), Status> {
    let at = src
        .iter()
        .position(|b| *b == sep)
        .ok_or_else(|| Status::protocol_error(format!("missing ':' after the {what}")))?;
    Ok((&src[..at], &src[at + 1..]))
}

pub(crate) fn parse_hex(src: &[u8], what: &str) -> Result<u64, Status> {
    let bad = || {
        Status::protocol_error(format!(
            "{what} {:?} is not a hexadecimal number",
            String::from_utf8_lossy(src)
        ))
    };
    if src.is_empty() || src.len() > 16 {
        return Err(bad());
    }
    let text = std::str::from_utf8(src).map_err(|_| bad())?;
    u64::from_str_radix(text, 16)
        .ok()
        .filter(|_| !text.starts_with('+'))
        .ok_or_else(bad)
}

fn parse_mid(src: &[u8]) -> Result<u16, Status> {
    let mid = parse_hex(src, "message id")?;
    u16::try_from(mid)
        .map_err(|_| Status::protocol_error(format!("message id {mid:#x} is over 0xFFFF")))
}

pub(crate) fn parse_status(src: &[u8]) -> Result<Code, Status> {
    let value = parse_hex(src, "status")?;
    u8::try_from(value)
        .ok()
        .and_then(Code::from_u8)
        .ok_or_else(|| Status::protocol_error(format!("unknown status code {value:#x}")))
}

fn parse_action(src: &[u8]) -> Result<Action, Status> {
    match src.strip_prefix(b"M:") {
        Some(method) => Ok(Action::Method(unescape(method)?)),
        None => Ok(Action::Id(parse_hex(src, "action")?)),
    }
}
