//! The handshakes that open a connection: the client's, then the server's.
//!
//! ```text
//! client:  "STMP"  (major<<4 | minor)  uvarint(len) header  uvarint(len) message
//! server:  "STMP"  status               uvarint(len) header  uvarint(len) message
//! server, text form (WebSocket):  "STMP<status hex>\nH<header>\nM<message>"
//! ```

use std::fmt;
use std::fmt::Write as _;

use bytes::{BufMut, Bytes, BytesMut};

use super::Limits;
use super::cursor::{Budget, Cursor, Stop};
use super::header::{Header, check_header_size};
use super::text::parse_status;
use super::{MAGIC, varint};
use crate::{Code, Status};

/// A protocol version; STMP 1.0 is the byte `0x10`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version {
    /// Major version (high nibble).
    pub major: u8,
    /// Minor version (low nibble).
    pub minor: u8,
}

impl Version {
    /// STMP 1.0, the version this crate speaks.
    pub const V1_0: Version = Version { major: 1, minor: 0 };

    /// The version in a handshake byte.
    pub const fn from_byte(byte: u8) -> Version {
        Version {
            major: byte >> 4,
            minor: byte & 0x0f,
        }
    }

    /// The handshake byte; both numbers are 4 bits on the wire.
    pub const fn to_byte(self) -> u8 {
        (self.major << 4) | (self.minor & 0x0f)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// What a client sends first on a byte stream: its version, its header (`Accept`,
/// `Accept-Encoding`, application keys such as auth tokens) and an optional message.
///
/// ```
/// use stmp::wire::{ClientHandshake, Header};
///
/// let hello = ClientHandshake::new([("Accept", "application/protobuf")].into_iter().collect());
/// let mut wire = bytes::BytesMut::new();
/// hello.encode(&mut wire);
/// assert_eq!(&wire[..], b"STMP\x10\x1bAccept:application/protobuf\x00");
/// let decoded = ClientHandshake::decode(&mut wire, 1024).unwrap().unwrap();
/// assert_eq!(decoded, hello);
/// assert!(wire.is_empty());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientHandshake {
    /// The client's protocol version.
    pub version: Version,
    /// The client's header.
    pub header: Header,
    /// Free text (stmp-go sends none).
    pub message: String,
}

/// The server's answer: a status (`Ok` to go on, anything else is a refusal with its reason in
/// `message`), the header (`Content-Type`, `Content-Encoding`, `Packet-Format`) and a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerHandshake {
    /// `Ok`, or why the connection is refused.
    pub status: Code,
    /// The server's header.
    pub header: Header,
    /// The reason of a refusal (or free text).
    pub message: String,
}

impl ClientHandshake {
    /// A version 1.0 handshake with this header and no message.
    pub fn new(header: Header) -> Self {
        ClientHandshake {
            version: Version::V1_0,
            header,
            message: String::new(),
        }
    }

    /// Writes the binary form.
    pub fn encode(&self, dst: &mut BytesMut) {
        encode_binary(self.version.to_byte(), &self.header, &self.message, dst);
    }

    /// Decodes the handshake at the start of a byte stream's buffer, consuming it; `None` while
    /// it is incomplete. `limits` bound header + message (as the packet size) and the header.
    pub fn decode(src: &mut BytesMut, limits: impl Into<Limits>) -> Result<Option<Self>, Status> {
        Ok(
            decode_stream(src, &limits.into())?.map(|(byte, header, message)| ClientHandshake {
                version: Version::from_byte(byte),
                header,
                message,
            }),
        )
    }
}

impl ServerHandshake {
    /// An `Ok` handshake with this header.
    pub fn ok(header: Header) -> Self {
        ServerHandshake {
            status: Code::Ok,
            header,
            message: String::new(),
        }
    }

    /// A refusal: `status` with its reason and no header.
    pub fn refuse(status: &Status) -> Self {
        ServerHandshake {
            status: status.code(),
            header: Header::new(),
            message: status.message().to_owned(),
        }
    }

    /// The refusal as an error, or `None` for an `Ok` handshake.
    pub fn error(&self) -> Option<Status> {
        (self.status != Code::Ok).then(|| Status::new(self.status, self.message.clone()))
    }

    /// Writes the binary form (byte streams and WebSocket binary messages).
    pub fn encode(&self, dst: &mut BytesMut) {
        encode_binary(self.status.as_u8(), &self.header, &self.message, dst);
    }

    /// Decodes the handshake at the start of a byte stream's buffer, consuming it; `None` while
    /// it is incomplete. `limits` bound header + message (as the packet size) and the header.
    pub fn decode(src: &mut BytesMut, limits: impl Into<Limits>) -> Result<Option<Self>, Status> {
        match decode_stream(src, &limits.into())? {
            None => Ok(None),
            Some((byte, header, message)) => Ok(Some(ServerHandshake {
                status: status_from_byte(byte)?,
                header,
                message,
            })),
        }
    }

    /// Decodes a complete binary handshake message (WebSocket).
    pub fn decode_message(message: &[u8], limits: impl Into<Limits>) -> Result<Self, Status> {
        let limits = limits.into();
        let (byte, header, text) = scan(message, &limits)
            .map_err(|stop| stop.truncated("handshake"))
            .and_then(|(byte, header, text, len)| {
                if len == message.len() {
                    Ok((byte, header, text))
                } else {
                    Err(Status::protocol_error("trailing bytes after the handshake"))
                }
            })?;
        Ok(ServerHandshake {
            status: status_from_byte(byte)?,
            header: Header::decode_with(&message[header], limits)?,
            message: String::from_utf8_lossy(&message[text]).into_owned(),
        })
    }

    /// Writes the text form: `STMP<status hex>\nH<header>\nM<message>`, with the lines
    /// present only when not empty.
    ///
    /// ```
    /// use stmp::wire::ServerHandshake;
    ///
    /// let header = [("Content-Type", "application/json"), ("Packet-Format", "text")];
    /// let handshake = ServerHandshake::ok(header.into_iter().collect());
    /// let mut text = bytes::BytesMut::new();
    /// handshake.encode_text(&mut text);
    /// assert_eq!(&text[..], b"STMP0\nHContent-Type:application/json;Packet-Format:text");
    /// assert_eq!(ServerHandshake::decode_text(&text, 1024).unwrap(), handshake);
    /// ```
    pub fn encode_text(&self, dst: &mut BytesMut) {
        dst.put_slice(MAGIC);
        // Writing to a BytesMut cannot fail.
        let _ = write!(dst, "{:X}", self.status.as_u8());
        if !self.header.is_empty() {
            dst.put_slice(b"\nH");
            self.header.encode(dst);
        }
        if !self.message.is_empty() {
            dst.put_slice(b"\nM");
            dst.put_slice(self.message.as_bytes());
        }
    }

    /// Decodes the text form.
    pub fn decode_text(message: &[u8], limits: impl Into<Limits>) -> Result<Self, Status> {
        let limits = limits.into();
        if message.len() > limits.max_packet_size {
            return Err(Status::request_entity_too_large(format!(
                "handshake of {} bytes is over the limit of {} bytes",
                message.len(),
                limits.max_packet_size
            )));
        }
        let rest = message
            .strip_prefix(MAGIC)
            .ok_or_else(|| bad_magic(message))?;
        // The message line runs to the end like a text packet's payload does.
        let (status, header, text) = split_text_handshake(rest)?;
        Ok(ServerHandshake {
            status: parse_status(status)?,
            header: header
                .map(|line| Header::decode_with(line, limits))
                .transpose()?
                .unwrap_or_default(),
            message: String::from_utf8_lossy(text).into_owned(),
        })
    }
}

/// The status, `H` line and message of a text handshake.
type TextParts<'a> = (&'a [u8], Option<&'a [u8]>, &'a [u8]);

/// Splits the text handshake after its magic into the status, the `H` line and the `M` part
/// (which runs to the end of the message).
fn split_text_handshake(rest: &[u8]) -> Result<TextParts<'_>, Status> {
    let newline = |b: &u8| *b == b'\n';
    let mut lines = rest.splitn(2, newline);
    let status = lines.next().unwrap_or_default();
    let mut tail = lines.next();
    let mut header = None;
    while let Some(line) = tail {
        match line.split_first() {
            Some((b'H', body)) if header.is_none() => {
                let mut parts = body.splitn(2, newline);
                header = parts.next();
                tail = parts.next();
            }
            Some((b'M', message)) => return Ok((status, header, message)),
            _ => {
                return Err(Status::protocol_error(format!(
                    "unexpected line {:?} in text handshake",
                    String::from_utf8_lossy(&line[..line.len().min(16)])
                )));
            }
        }
    }
    Ok((status, header, &[]))
}

fn status_from_byte(byte: u8) -> Result<Code, Status> {
    Code::from_u8(byte)
        .ok_or_else(|| Status::protocol_error(format!("unknown handshake status {byte:#04x}")))
}

fn bad_magic(src: &[u8]) -> Status {
    let shown = &src[..src.len().min(4)];
    Status::protocol_error(format!(
        "handshake magic {:?} is not STMP",
        String::from_utf8_lossy(shown)
    ))
}

fn encode_binary(byte: u8, header: &Header, message: &str, dst: &mut BytesMut) {
    let header_len = header.encoded_len();
    dst.reserve(4 + 1 + 2 * varint::MAX_LEN + header_len + message.len());
    dst.put_slice(MAGIC);
    dst.put_u8(byte);
    varint::put(dst, header_len as u64);
    header.encode(dst);
    varint::put(dst, message.len() as u64);
    dst.put_slice(message.as_bytes());
}

type Range = std::ops::Range<usize>;

/// Finds the parts of a binary handshake: its version/status byte, header, message and length.
fn scan(src: &[u8], limits: &Limits) -> Result<(u8, Range, Range, usize), Stop> {
    // Refuse a wrong magic as soon as its first differing byte arrives.
    let seen = src.len().min(MAGIC.len());
    if src[..seen] != MAGIC[..seen] {
        return Err(Stop::Invalid(bad_magic(src)));
    }
    let mut cursor = Cursor::new(src);
    cursor.take(MAGIC.len())?;
    let byte = cursor.u8()?;
    let mut budget = Budget::new(limits.max_packet_size);
    let announced = cursor.uvarint("handshake header")?;
    check_header_size(announced, limits)?;
    let header_len = budget.charge("handshake header", announced)?;
    let header = cursor.take(header_len)?;
    let message_len = cursor.length("handshake message", &mut budget)?;
    let message = cursor.take(message_len)?;
    Ok((byte, header, message, cursor.position()))
}

fn decode_stream(
    src: &mut BytesMut,
    limits: &Limits,
) -> Result<Option<(u8, Header, String)>, Status> {
    match scan(src, limits) {
        Ok((byte, header, message, len)) => {
            let bytes: Bytes = src.split_to(len).freeze();
            let header = Header::decode_with(&bytes[header], limits)?;
            Ok(Some((
                byte,
                header,
                String::from_utf8_lossy(&bytes[message]).into_owned(),
            )))
        }
        Err(Stop::Incomplete(_)) => Ok(None),
        Err(Stop::Invalid(status)) => Err(status),
    }
}
