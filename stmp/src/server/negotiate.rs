//! What the server answers to a client handshake: pure decisions, no I/O.

use crate::Status;
use crate::codec::{Codec, Codecs};
use crate::conn::PacketFormat;
use crate::wire::{Header, Version};

/// The outcome of a successful negotiation.
#[derive(Debug)]
pub(crate) struct Agreement {
    pub(crate) codec: Codec,
    pub(crate) gzip: bool,
    #[cfg_attr(not(feature = "ws"), allow(dead_code))]
    pub(crate) format: PacketFormat,
    /// The header of the server's `Ok` handshake.
    pub(crate) header: Header,
}

/// Which transport the handshake came on: only byte streams compress, only WebSocket has a
/// packet format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    Stream { gzip_allowed: bool },
    WebSocket,
}

/// Picks the codec from `Accept`, gzip from `Accept-Encoding` and the WebSocket packet format
/// from `Packet-Format` (or the Go client's `Accept-Packet-Format`).
pub(crate) fn negotiate(
    version: Version,
    client: &Header,
    codecs: &Codecs,
    transport: Transport,
) -> Result<Agreement, Status> {
    if version.major != Version::V1_0.major {
        return Err(Status::bad_request(format!(
            "unsupported protocol version: {version}"
        )));
    }
    let format = match client
        .get("Packet-Format")
        .or_else(|| client.get("Accept-Packet-Format"))
    {
        None => PacketFormat::Binary,
        Some(f) if f.eq_ignore_ascii_case("binary") => PacketFormat::Binary,
        Some(f) if f.eq_ignore_ascii_case("text") && transport == Transport::WebSocket => {
            PacketFormat::Text
        }
        Some(other) => {
            return Err(Status::bad_request(format!(
                "unsupported packet format: {other}"
            )));
        }
    };
    let accept = client.get_all("Accept").collect::<Vec<_>>().join(",");
    let codec = if accept.trim().is_empty() {
        match format {
            PacketFormat::Binary => Codec::PROTOBUF,
            PacketFormat::Text => Codec::TEXT_DEFAULT,
        }
    } else {
        codecs.negotiate(&accept).ok_or_else(|| {
            Status::bad_request(format!("no supported content-type in candidates: {accept}"))
        })?
    };
    let gzip = matches!(transport, Transport::Stream { gzip_allowed: true })
        && client
            .get_all("Accept-Encoding")
            .flat_map(|list| list.split(','))
            .any(|encoding| {
                encoding
                    .split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .eq_ignore_ascii_case("gzip")
            });
    let mut header = Header::new();
    header.append("Content-Type", codec.content_type());
    if gzip {
        header.append("Content-Encoding", "gzip");
    }
    if transport == Transport::WebSocket {
        header.append("Packet-Format", format.as_str());
    }
    Ok(Agreement {
        codec,
        gzip,
        format,
        header,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Code;

    fn header(pairs: &[(&str, &str)]) -> Header {
        pairs.iter().copied().collect()
    }

    const STREAM: Transport = Transport::Stream { gzip_allowed: true };

    #[test]
    fn go_vectors() {
        let codecs = Codecs::default();
        let t1 = negotiate(
            Version::V1_0,
            &header(&[("Accept", "application/protobuf")]),
            &codecs,
            STREAM,
        )
        .unwrap();
        assert_eq!(t1.header.to_wire(), b"Content-Type:application/protobuf");
        let t11 = negotiate(
            Version::V1_0,
            &header(&[("Accept", "application/xml")]),
            &codecs,
            STREAM,
        )
        .unwrap_err();
        assert_eq!(t11.code(), Code::BadRequest);
        assert_eq!(
            t11.message(),
            "no supported content-type in candidates: application/xml"
        );
        let t12 = negotiate(Version::from_byte(0x20), &header(&[]), &codecs, STREAM).unwrap_err();
        assert_eq!(t12.message(), "unsupported protocol version: 2.0");
        let t15 = negotiate(
            Version::V1_0,
            &header(&[
                ("Accept", "application/protobuf"),
                ("Accept-Encoding", "gzip"),
            ]),
            &codecs,
            STREAM,
        )
        .unwrap();
        assert!(t15.gzip);
        assert_eq!(t15.header.get("Content-Encoding"), Some("gzip"));
    }

    #[cfg(feature = "json")]
    #[test]
    fn go_vector_t13_json() {
        let codecs = Codecs::default();
        let t13 = negotiate(
            Version::V1_0,
            &header(&[("Accept", "text/x, application/json;q=0.9")]),
            &codecs,
            STREAM,
        )
        .unwrap();
        assert_eq!(t13.codec, Codec::JSON);
    }

    #[test]
    fn websocket_formats_and_defaults() {
        let codecs = Codecs::default();
        let w2 = negotiate(
            Version::V1_0,
            &header(&[("Accept-Packet-Format", "text")]),
            &codecs,
            Transport::WebSocket,
        )
        .unwrap();
        assert_eq!(
            (w2.format, w2.codec.clone()),
            (PacketFormat::Text, Codec::TEXT_DEFAULT)
        );
        assert_eq!(w2.header.get("Packet-Format"), Some("text"));
        let binary = negotiate(Version::V1_0, &header(&[]), &codecs, Transport::WebSocket).unwrap();
        assert_eq!(
            (binary.format, binary.codec),
            (PacketFormat::Binary, Codec::PROTOBUF)
        );
        assert!(!binary.gzip);
        let text_on_tcp = negotiate(
            Version::V1_0,
            &header(&[("Packet-Format", "text")]),
            &codecs,
            STREAM,
        );
        assert_eq!(text_on_tcp.unwrap_err().code(), Code::BadRequest);
        let no_gzip = negotiate(
            Version::V1_0,
            &header(&[("Accept-Encoding", "gzip")]),
            &codecs,
            Transport::Stream {
                gzip_allowed: false,
            },
        )
        .unwrap();
        assert!(!no_gzip.gzip);
    }
}
