//! permessage-deflate (RFC 7692), in the form where neither side keeps its LZ77 window from one
//! message to the next ("no context takeover" both ways).
//!
//! Each message is compressed and inflated on its own, so a connection holds no compression
//! state at all: a message is deflated in one pass with a hash table sized to it
//! ([`deflate_message`](crate::deflater::deflate_message)), and inflated by an inflater that
//! belongs to the thread, reset per message. Keeping the window would compress small, similar
//! messages better, but would cost every connection a window each way (32 KiB to inflate; to
//! deflate, the history and a hash table of [`DeflateStream`](crate::deflater::DeflateStream))
//! for as long as it lives, where browsers keep thousands of idle ones, and a broadcast could
//! no longer deflate its event once for every connection. Messages under [`MIN_DEFLATED`]
//! bytes, and those deflate does not shrink, go out plain: the extension lets each message
//! choose.
//!
//! Negotiation is over strings ([`accepts_offer`], [`agreed_by_server`]); the codec over bytes
//! ([`deflate`], [`MessageInflater`]). Neither does I/O.

use crate::Status;

/// The extension's name in `Sec-WebSocket-Extensions`.
const NAME: &str = "permessage-deflate";

/// What a server answers to an offer it takes, and what our client offers: both sides reset
/// their window after each message.
pub(crate) const AGREEMENT: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// Messages shorter than this go out plain: the few bytes deflate may save are not worth a
/// pass over them.
pub(crate) const MIN_DEFLATED: usize = 128;

/// The window our matches reach back over, the largest: a client that offers a smaller
/// `server_max_window_bits` is declined rather than given a compressor of its own.
const WINDOW_BITS: u8 = 15;

/// Whether one of the client's offers (the values of its `Sec-WebSocket-Extensions` headers)
/// is a permessage-deflate we take. An offer with a parameter we do not know, one given twice,
/// or a bad value is declined (RFC 7692 section 5), as is one that asks for a window under
/// [`WINDOW_BITS`]; the client may have sent another that we take.
///
/// ```text
/// "permessage-deflate; client_max_window_bits"       taken (what browsers offer)
/// "permessage-deflate; server_max_window_bits=10"    declined
/// "x-webkit-deflate-frame, permessage-deflate"       taken (the second)
/// ```
pub(crate) fn accepts_offer<'a>(values: impl IntoIterator<Item = &'a str>) -> bool {
    values
        .into_iter()
        .flat_map(|value| value.split(','))
        .filter_map(|offer| parse(offer).ok())
        .any(|params| {
            params.iter().all(|(name, value)| match *name {
                "server_no_context_takeover" | "client_no_context_takeover" => value.is_none(),
                "server_max_window_bits" => value.and_then(window_bits) == Some(WINDOW_BITS),
                // Tells us the client can take a smaller window; we ask for none.
                "client_max_window_bits" => value.is_none_or(|bits| window_bits(bits).is_some()),
                _ => false,
            })
        })
}

/// Whether the server took our offer ([`AGREEMENT`]), from its response's
/// `Sec-WebSocket-Extensions`; `offered` says whether we made it. A response we cannot honour
/// fails the connection (RFC 6455 section 4.1): an extension we did not offer, or parameters
/// outside what we offered.
pub(crate) fn agreed_by_server(offered: bool, response: Option<&str>) -> Result<bool, Status> {
    let Some(response) = response.filter(|value| !value.trim().is_empty()) else {
        return Ok(false);
    };
    let refuse = |why: &str| {
        Err(Status::protocol_error(format!(
            "websocket upgrade answered with extensions {response:?}: {why}"
        )))
    };
    if !offered {
        return refuse("none was offered");
    }
    if response.contains(',') {
        return refuse("more than the one offered");
    }
    let Ok(params) = parse(response) else {
        return refuse("not a permessage-deflate we understand");
    };
    // We offered server_no_context_takeover, so a server that takes the offer says it
    // (RFC 7692 section 7.1.1.1); our inflater keeps no window.
    if !params
        .iter()
        .any(|(name, _)| *name == "server_no_context_takeover")
    {
        return refuse("the server would keep its window between messages");
    }
    let understood = params.iter().all(|(name, value)| match *name {
        "server_no_context_takeover" | "client_no_context_takeover" => value.is_none(),
        // The server's window: ours inflates any.
        "server_max_window_bits" => value.and_then(window_bits).is_some(),
        // Not offered, so not to be answered (RFC 7692 section 7.1.2.2).
        _ => false,
    });
    match understood {
        true => Ok(true),
        false => refuse("parameters outside our offer"),
    }
}

/// A permessage-deflate offer or response's parameters, each once; `Err` when it names another
/// extension or is malformed.
fn parse(extension: &str) -> Result<Vec<(&str, Option<&str>)>, ()> {
    let mut parts = extension.split(';').map(str::trim);
    if !parts
        .next()
        .is_some_and(|name| name.eq_ignore_ascii_case(NAME))
    {
        return Err(());
    }
    let mut params: Vec<(&str, Option<&str>)> = Vec::new();
    for part in parts {
        let (name, value) = match part.split_once('=') {
            Some((name, value)) => {
                let value = value.trim();
                // A value may be a quoted string (RFC 7692 section 5.1).
                let value = value
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(value);
                (name.trim(), Some(value))
            }
            None => (part, None),
        };
        if name.is_empty() || params.iter().any(|(seen, _)| *seen == name) {
            return Err(());
        }
        params.push((name, value));
    }
    Ok(params)
}

/// A window size in bits, 8 to 15, written as 1*DIGIT without a leading zero.
fn window_bits(value: &str) -> Option<u8> {
    if value.starts_with('0') || value.len() > 2 {
        return None;
    }
    value.parse().ok().filter(|bits| (8..=15).contains(bits))
}

#[cfg(feature = "gzip")]
pub(crate) use codec::{MessageInflater, deflate, deflate_remembered};

#[cfg(feature = "gzip")]
mod codec {
    use std::cell::RefCell;

    use bytes::{Bytes, BytesMut};
    use flate2::{Decompress, FlushDecompress};

    use super::WINDOW_BITS;
    use crate::Status;
    use crate::conn::io::{InflationLimit, InflationMeter};

    /// What a sync flush ends with, and what a message's deflated bytes are sent without
    /// (RFC 7692 section 7.2.1).
    const TAIL: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];

    /// The most a message's buffer grows by at once while it is inflated; below it, the
    /// buffer doubles. Each step's room is zeroed before it is written, so the room given
    /// stays near what the message needs.
    const MAX_INFLATE_STEP: usize = 64 << 10;

    thread_local! {
        static INFLATER: RefCell<Decompress> =
            RefCell::new(Decompress::new_with_window_bits(false, WINDOW_BITS));
    }

    /// Messages up to this long are remembered once deflated ([`LastDeflated`]).
    const MAX_REMEMBERED: usize = 64 << 10;

    /// The last message deflated on a thread, and what it deflated to (`None`: it did not
    /// shrink). A broadcast writes one message to many connections in turn, and without
    /// context takeover it deflates to the same bytes for each: it is deflated once, then
    /// copied. Keyed by the message's bytes themselves, so it can only ever give a message's
    /// own deflated form.
    #[derive(Default)]
    struct LastDeflated {
        plain: Vec<u8>,
        deflated: Option<Vec<u8>>,
    }

    thread_local! {
        static LAST: RefCell<LastDeflated> = RefCell::default();
    }

    /// Appends `plain` deflated to `dst`, as a message's payload, and returns true; when
    /// deflate does not make it shorter, leaves `dst` as it was and returns false.
    pub(crate) fn deflate(plain: &[u8], dst: &mut BytesMut) -> bool {
        let start = dst.len();
        crate::deflater::deflate_message(plain, dst);
        if dst.len() - start < plain.len() {
            return true;
        }
        dst.truncate(start);
        false
    }

    /// [`deflate`], for a message that may be written to many connections in turn (an
    /// event): the last one is remembered ([`LastDeflated`]).
    pub(crate) fn deflate_remembered(plain: &[u8], dst: &mut BytesMut) -> bool {
        LAST.with_borrow_mut(|last| {
            if last.plain == plain {
                return match &last.deflated {
                    Some(deflated) => {
                        dst.extend_from_slice(deflated);
                        true
                    }
                    None => false,
                };
            }
            let start = dst.len();
            let shrank = deflate(plain, dst);
            if plain.len() <= MAX_REMEMBERED {
                last.plain.clear();
                last.plain.extend_from_slice(plain);
                let mut deflated = last.deflated.take().unwrap_or_default();
                deflated.clear();
                deflated.extend_from_slice(&dst[start..]);
                last.deflated = shrank.then_some(deflated);
            }
            shrank
        })
    }

    /// Inflates a connection's compressed messages, each on its own, within `max_message`
    /// bytes each and the connection's [`InflationLimit`] over all: a message of a few
    /// kilobytes that would inflate to gigabytes is refused once past the first.
    #[derive(Debug)]
    pub(crate) struct MessageInflater {
        max_message: usize,
        meter: InflationMeter,
    }

    impl MessageInflater {
        pub(crate) fn new(max_message: usize, limit: InflationLimit) -> Self {
            MessageInflater {
                max_message,
                meter: InflationMeter::new(limit, "the websocket connection's deflated data"),
            }
        }

        /// The message whose deflated payload (without its tail) is `compressed`.
        pub(crate) fn inflate(&mut self, compressed: &[u8]) -> Result<Bytes, Status> {
            INFLATER.with_borrow_mut(|inflater| {
                inflater.reset(false);
                self.inflate_with(inflater, compressed)
            })
        }

        /// Checks the limits step by step, so that a message over them costs at most one
        /// step's work past them.
        fn inflate_with(
            &mut self,
            inflater: &mut Decompress,
            compressed: &[u8],
        ) -> Result<Bytes, Status> {
            let max_message = self.max_message;
            let too_large = || {
                Status::request_entity_too_large(format!(
                    "websocket message inflates past the limit of {max_message} bytes"
                ))
            };
            let bad = |e: &dyn std::fmt::Display| {
                Status::protocol_error(format!("websocket message that does not inflate: {e}"))
            };
            // Room for one byte past the limit: what shows a message over it.
            let cap = max_message.saturating_add(1);
            let mut out =
                BytesMut::with_capacity(compressed.len().saturating_mul(4).max(256).min(cap));
            for chunk in [compressed, &TAIL[..]] {
                let mut input = chunk;
                loop {
                    if out.len() == out.capacity() {
                        if out.len() >= cap {
                            return Err(too_large());
                        }
                        let step = out.len().clamp(256, MAX_INFLATE_STEP);
                        out.reserve(step.min(cap - out.len()));
                    }
                    let start = out.len();
                    let room = out.capacity() - start;
                    out.resize(start + room, 0);
                    let before = (inflater.total_in(), inflater.total_out());
                    let status = inflater
                        .decompress(input, &mut out[start..], FlushDecompress::Sync)
                        .map_err(|e| bad(&e))?;
                    let consumed = (inflater.total_in() - before.0) as usize;
                    let produced = (inflater.total_out() - before.1) as usize;
                    out.truncate(start + produced);
                    input = &input[consumed..];
                    if out.len() > max_message {
                        return Err(too_large());
                    }
                    self.meter.record(consumed as u64, produced as u64)?;
                    if status == flate2::Status::StreamEnd {
                        // A final block: what follows it (the tail we add) is not read.
                        return Ok(out.freeze());
                    }
                    if input.is_empty() && produced < room {
                        break;
                    }
                    if consumed == 0 && produced == 0 {
                        return Err(bad(&"no progress"));
                    }
                }
            }
            Ok(out.freeze())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_browsers_and_libraries_make_are_taken() {
        for offer in [
            "permessage-deflate",
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; client_max_window_bits=15",
            "permessage-deflate; client_max_window_bits=\"12\"",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; server_max_window_bits=15",
            "PerMessage-Deflate ;client_max_window_bits",
            AGREEMENT,
        ] {
            assert!(accepts_offer([offer]), "{offer}");
        }
    }

    #[test]
    fn a_declined_offer_leaves_the_next_one_to_take() {
        assert!(accepts_offer([
            "x-webkit-deflate-frame",
            "permessage-deflate; server_max_window_bits=10, permessage-deflate",
        ]));
        assert!(!accepts_offer([
            "x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=10"
        ]));
    }

    #[test]
    fn malformed_or_unknown_parameters_decline_the_offer() {
        for offer in [
            "",
            "deflate",
            "permessage-deflate; x=1",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_max_window_bits; client_max_window_bits",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; client_max_window_bits=16",
            "permessage-deflate; client_max_window_bits=015",
            "permessage-deflate; client_max_window_bits=abc",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; ;",
        ] {
            assert!(!accepts_offer([offer]), "{offer:?}");
        }
        assert!(!accepts_offer([]));
    }

    #[test]
    fn the_client_takes_only_the_answer_to_what_it_offered() {
        assert!(!agreed_by_server(true, None).unwrap());
        assert!(!agreed_by_server(false, Some("")).unwrap());
        assert!(agreed_by_server(true, Some(AGREEMENT)).unwrap());
        assert!(
            agreed_by_server(
                true,
                Some("permessage-deflate; server_no_context_takeover; server_max_window_bits=10")
            )
            .unwrap()
        );
        for (offered, response) in [
            (false, AGREEMENT),
            (true, "permessage-deflate"),
            (true, "permessage-deflate; client_no_context_takeover"),
            (
                true,
                "permessage-deflate; server_no_context_takeover; client_max_window_bits=10",
            ),
            (true, "x-other; server_no_context_takeover"),
            (
                true,
                "permessage-deflate; server_no_context_takeover, x-other",
            ),
        ] {
            let refused = agreed_by_server(offered, Some(response)).unwrap_err();
            assert_eq!(refused.code(), crate::Code::ProtocolError, "{response}");
        }
    }

    #[cfg(feature = "gzip")]
    mod codec {
        use bytes::BytesMut;
        use flate2::{Compress, Compression, FlushCompress};

        use super::super::{MIN_DEFLATED, MessageInflater, deflate, deflate_remembered};
        use crate::Code;
        use crate::conn::io::InflationLimit;

        fn inflater(max_message: usize) -> MessageInflater {
            MessageInflater::new(max_message, InflationLimit::default())
        }

        #[test]
        fn the_rfc_example_inflates() {
            // RFC 7692 section 7.2.3.1: "Hello" in one compressed message.
            let hello = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
            assert_eq!(&inflater(64).inflate(&hello).unwrap()[..], b"Hello");
            // Section 7.2.3.3: the same, in a block without compression.
            let stored = [
                0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
            ];
            assert_eq!(&inflater(64).inflate(&stored).unwrap()[..], b"Hello");
        }

        #[test]
        fn what_is_deflated_inflates_back_each_message_on_its_own() {
            let mut inflater = inflater(1 << 20);
            for text in [
                "a".repeat(MIN_DEFLATED),
                "{\"room\":\"lobby\",\"text\":\"hello\"}".repeat(40),
                (0..5000)
                    .map(|i| char::from(b'a' + (i * 7 % 26) as u8))
                    .collect(),
            ] {
                let mut dst = BytesMut::from(&b"head"[..]);
                assert!(deflate(text.as_bytes(), &mut dst));
                assert!(dst.len() < 4 + text.len());
                assert_eq!(&dst[..4], b"head");
                let inflated = inflater.inflate(&dst[4..]).unwrap();
                assert!(inflated == text.as_bytes(), "{} bytes differ", text.len());
            }
        }

        #[test]
        fn a_message_deflated_again_comes_out_the_same() {
            let one = "{\"text\":\"hello\"}".repeat(20);
            let two = "{\"text\":\"world\"}".repeat(30);
            let noise: Vec<u8> = (0..300).map(|_| fastrand::u8(..)).collect();
            let mut first = Vec::new();
            for plain in [one.as_bytes(), two.as_bytes(), &noise[..]] {
                let mut dst = BytesMut::new();
                let shrank = deflate_remembered(plain, &mut dst);
                first.push((shrank, dst));
            }
            // Again, each twice in a row and in turns: the same bytes, which inflate back.
            let mut inflater = inflater(1 << 16);
            for plain in [
                one.as_bytes(),
                one.as_bytes(),
                &noise[..],
                two.as_bytes(),
                one.as_bytes(),
            ] {
                let mut dst = BytesMut::from(&b"head"[..]);
                let shrank = deflate_remembered(plain, &mut dst);
                let index = [one.as_bytes(), two.as_bytes(), &noise[..]]
                    .iter()
                    .position(|p| *p == plain)
                    .unwrap();
                assert_eq!((shrank, &dst[4..]), (first[index].0, &first[index].1[..]));
                match shrank {
                    true => assert!(inflater.inflate(&dst[4..]).unwrap() == plain),
                    false => assert_eq!(&dst[..], b"head"),
                }
            }
        }

        #[test]
        fn what_deflate_cannot_shorten_is_left_plain() {
            let noise: Vec<u8> = (0..512).map(|_| fastrand::u8(..)).collect();
            let mut dst = BytesMut::from(&b"head"[..]);
            assert!(!deflate(&noise, &mut dst));
            assert_eq!(&dst[..], b"head");
        }

        /// What a peer sends to make us inflate much: `plain` at the best level.
        fn deflated_hard(plain: &[u8]) -> Vec<u8> {
            let mut compressor = Compress::new(Compression::best(), false);
            let mut out = Vec::with_capacity(plain.len() / 100 + 64);
            compressor
                .compress_vec(plain, &mut out, FlushCompress::Sync)
                .unwrap();
            assert_eq!(compressor.total_in(), plain.len() as u64);
            assert!(out.ends_with(&[0, 0, 0xFF, 0xFF]));
            out.truncate(out.len() - 4);
            out
        }

        #[test]
        fn a_bomb_is_refused_at_the_message_limit() {
            let bomb = deflated_hard(&vec![0u8; 1 << 20]);
            assert!(bomb.len() < 2 << 10, "{} bytes", bomb.len());
            let refused = inflater(64 << 10).inflate(&bomb).unwrap_err();
            assert_eq!(refused.code(), Code::RequestEntityTooLarge);
            // Exactly at the limit is taken.
            assert_eq!(inflater(1 << 20).inflate(&bomb).unwrap().len(), 1 << 20);
            // Under a far larger message limit, the ratio stops a bomb as it inflates.
            let bomb = deflated_hard(&vec![0u8; 4 << 20]);
            let refused = inflater(64 << 20).inflate(&bomb).unwrap_err();
            assert_eq!(refused.code(), Code::RequestEntityTooLarge);
            assert!(
                refused
                    .message()
                    .contains("deflated data inflates more than 64x"),
                "{refused}"
            );
        }

        #[test]
        fn messages_under_the_limit_are_still_held_to_the_inflation_ratio() {
            // Each message inflates some 500 times its size: well under the message limit,
            // over the ratio, so the burst runs out after a few.
            let small = deflated_hard(&vec![b'x'; 60 << 10]);
            let mut inflater = MessageInflater::new(
                1 << 20,
                InflationLimit {
                    max_ratio: 64,
                    burst: 256 << 10,
                },
            );
            let taken = (0..64)
                .take_while(|_| inflater.inflate(&small).is_ok())
                .count();
            assert!((4..=5).contains(&taken), "{taken} messages taken");
        }

        #[test]
        fn garbage_is_a_protocol_error_never_a_panic() {
            for _ in 0..2000 {
                // Message limits from none at all to far more than the bytes given.
                let mut inflater = inflater(fastrand::usize(..1 << 12));
                let len = fastrand::usize(..64);
                let bytes: Vec<u8> = (0..len).map(|_| fastrand::u8(..)).collect();
                if let Err(status) = inflater.inflate(&bytes) {
                    assert!(
                        matches!(
                            status.code(),
                            Code::ProtocolError | Code::RequestEntityTooLarge
                        ),
                        "{status}"
                    );
                }
            }
        }
    }
}
