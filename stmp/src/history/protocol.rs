//! The recovery extension on the STMP 1.0 wire: header entries only, so peers that do not know
//! them (stmp-go) pass them by.
//!
//! - An event of a stream carries `stmp-position: s=<stream>&e=<epoch>&o=<offset>`.
//! - A client that tracks positions says `stmp-history: 1` in its handshake, with one
//!   `stmp-resume: s=…&e=…&o=…` entry per stream it wants to resume.
//! - When such a client joins a stream, the server replays what it missed, then sends it a
//!   notify of [`POSITION_METHOD`] whose header holds `stmp-position` (the position after the
//!   replay) and, when the client asked to resume, `stmp-recovered: true|false`.
//!
//! Values are `application/x-www-form-urlencoded`, so any stream name travels as a valid HTTP
//! header value in a WebSocket upgrade.

use crate::wire::Header;

/// The header key of an event's (or the position notify's) position.
pub const POSITION: &str = "stmp-position";
/// The handshake key of a position the client resumes from (one entry per stream).
pub const RESUME: &str = "stmp-resume";
/// The handshake key by which a client says it tracks positions.
pub const SUPPORTS: &str = "stmp-history";
/// The header key of the position notify's outcome: `true` or `false`.
pub const RECOVERED: &str = "stmp-recovered";
/// The method of the position notify (sent by name, with an empty payload).
pub const POSITION_METHOD: &str = "stmp.History.Position";

/// Resume entries a client sends at most; with [`MAX_RESUME_BYTES`] it keeps the handshake
/// well inside the server's header limits (256 entries, 16 KiB) next to the application's.
pub const MAX_RESUME_ENTRIES: usize = 128;
/// Bytes of resume entries a client sends at most.
pub const MAX_RESUME_BYTES: usize = 8 * 1024;

/// A place in a stream: the last offset seen, within an epoch.
///
/// ```
/// use stmp::history::StreamPosition;
///
/// let position = StreamPosition::new("room:lobby", "5f2a", 42);
/// let value = position.to_value();
/// assert_eq!(value, "s=room%3Alobby&e=5f2a&o=42");
/// assert_eq!(StreamPosition::parse(&value), Some(position));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StreamPosition {
    /// The stream (a room's name).
    pub stream: String,
    /// The epoch the offset belongs to.
    pub epoch: String,
    /// The offset of the last event seen (0: none yet).
    pub offset: u64,
}

impl StreamPosition {
    /// A position.
    pub fn new(stream: impl Into<String>, epoch: impl Into<String>, offset: u64) -> Self {
        StreamPosition {
            stream: stream.into(),
            epoch: epoch.into(),
            offset,
        }
    }

    /// The header value: `s=<stream>&e=<epoch>&o=<offset>`, form-urlencoded.
    pub fn to_value(&self) -> String {
        form_urlencoded::Serializer::new(String::new())
            .append_pair("s", &self.stream)
            .append_pair("e", &self.epoch)
            .append_pair("o", &self.offset.to_string())
            .finish()
    }

    /// Reads a header value; `None` unless it has a stream, an epoch and a decimal offset.
    pub fn parse(value: &str) -> Option<StreamPosition> {
        let (stream, epoch, offset) = StreamPosition::parse_parts(value)?;
        Some(StreamPosition {
            stream: stream.into_owned(),
            epoch: epoch.into_owned(),
            offset,
        })
    }

    /// Reads a header value into its parts without copying them where they need no
    /// decoding (the usual stream name): `(stream, epoch, offset)`.
    pub(crate) fn parse_parts(
        value: &str,
    ) -> Option<(std::borrow::Cow<'_, str>, std::borrow::Cow<'_, str>, u64)> {
        let (mut stream, mut epoch, mut offset) = (None, None, None);
        for (key, value) in form_urlencoded::parse(value.as_bytes()) {
            match &*key {
                "s" => stream = Some(value),
                "e" => epoch = Some(value),
                "o" => offset = value.parse::<u64>().ok(),
                _ => {}
            }
        }
        Some((stream?, epoch?, offset?))
    }

    /// The position in a header's `stmp-position` entry.
    pub fn from_header(header: &Header) -> Option<StreamPosition> {
        header.get(POSITION).and_then(StreamPosition::parse)
    }
}

/// The header values of one stream's positions, offset after offset: a replay stamps each
/// event it sends with one, and the stream and epoch are encoded once, not for each.
pub(crate) struct PositionValues {
    /// `s=<stream>&e=<epoch>&o=`, form-urlencoded as [`StreamPosition::to_value`] writes it.
    prefix: String,
}

impl PositionValues {
    pub(crate) fn new(stream: &str, epoch: &str) -> PositionValues {
        let mut prefix = form_urlencoded::Serializer::new(String::new())
            .append_pair("s", stream)
            .append_pair("e", epoch)
            .finish();
        // Digits need no encoding.
        prefix.push_str("&o=");
        PositionValues { prefix }
    }

    /// The value of `offset`'s position.
    pub(crate) fn at(&self, offset: u64) -> String {
        use std::fmt::Write as _;
        let mut value = String::with_capacity(self.prefix.len() + 20);
        value.push_str(&self.prefix);
        let _ = write!(value, "{offset}");
        value
    }
}

/// The positions a handshake asks to resume, keyed by stream; at most `max` are read, and
/// entries that do not parse are skipped.
pub(crate) fn resume_positions(handshake: &Header, max: usize) -> Vec<StreamPosition> {
    handshake
        .get_all(RESUME)
        .take(max)
        .filter_map(StreamPosition::parse)
        .collect()
}

/// Whether a handshake says the client tracks positions.
pub(crate) fn supports(handshake: &Header) -> bool {
    handshake.get(SUPPORTS) == Some("1")
}

/// Adds the history entries to a client's handshake: support, and the positions to resume,
/// newest first, within [`MAX_RESUME_ENTRIES`] and [`MAX_RESUME_BYTES`].
pub(crate) fn add_handshake_entries<'a>(
    header: &mut Header,
    newest_first: impl IntoIterator<Item = &'a StreamPosition>,
) {
    header.insert(SUPPORTS, "1");
    header.remove(RESUME);
    let mut bytes = 0;
    for position in newest_first.into_iter().take(MAX_RESUME_ENTRIES) {
        let value = position.to_value();
        bytes += RESUME.len() + value.len() + 2;
        if bytes > MAX_RESUME_BYTES {
            break;
        }
        header.append(RESUME, value);
    }
}

/// The header of the position notify.
pub(crate) fn position_header(position: &StreamPosition, recovered: Option<bool>) -> Header {
    let mut header = Header::new();
    header.append(POSITION, position.to_value());
    if let Some(recovered) = recovered {
        header.append(RECOVERED, if recovered { "true" } else { "false" });
    }
    header
}

/// Reads the outcome of a position notify: `Some(true|false)` when it answers a resume.
pub(crate) fn recovered(header: &Header) -> Option<bool> {
    match header.get(RECOVERED) {
        Some("true") => Some(true),
        Some("false") => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_survive_any_stream_name() {
        for name in ["lobby", "a b", "x&s=y", "é;:%\n", ""] {
            let position = StreamPosition::new(name, "ep", u64::MAX);
            let value = position.to_value();
            assert!(value.bytes().all(|b| b.is_ascii_graphic()), "{value}");
            assert_eq!(StreamPosition::parse(&value), Some(position));
        }
    }

    #[test]
    fn a_streams_values_are_its_positions_values() {
        for name in ["lobby", "a b", "x&s=y&o=1", "é;:%\n", ""] {
            let values = PositionValues::new(name, "e p");
            for offset in [0, 1, 42, u64::MAX] {
                let position = StreamPosition::new(name, "e p", offset);
                assert_eq!(values.at(offset), position.to_value());
            }
        }
    }

    #[test]
    fn malformed_positions_are_none() {
        for value in [
            "",
            "s=a&e=b",
            "s=a&e=b&o=-1",
            "s=a&e=b&o=1x",
            "%%%",
            "o=1&e=b",
        ] {
            assert_eq!(StreamPosition::parse(value), None, "{value:?}");
        }
    }

    #[test]
    fn handshake_entries_stay_within_their_budget_newest_first() {
        let positions: Vec<_> = (0..1000)
            .map(|n| StreamPosition::new(format!("room-{n:04}"), "epoch", n))
            .collect();
        let mut header = Header::new();
        header.append("token", "t");
        add_handshake_entries(&mut header, &positions);
        let resumed = resume_positions(&header, usize::MAX);
        assert_eq!(resumed.len(), MAX_RESUME_ENTRIES);
        assert_eq!(resumed[0], positions[0]);
        assert!(supports(&header));
        assert_eq!(header.get("token"), Some("t"));

        let long: Vec<_> = (0..100)
            .map(|n| StreamPosition::new("r".repeat(500) + &n.to_string(), "e", 1))
            .collect();
        let mut header = Header::new();
        add_handshake_entries(&mut header, &long);
        assert!(header.encoded_len() <= MAX_RESUME_BYTES + 32);
        assert!(header.get_all(RESUME).count() < 20);

        // Entries from an earlier attempt are replaced, not added to.
        add_handshake_entries(&mut header, &long[..1]);
        assert_eq!(header.get_all(RESUME).count(), 1);
    }

    #[test]
    fn recovered_outcome_round_trips() {
        let position = StreamPosition::new("s", "e", 3);
        for outcome in [Some(true), Some(false), None] {
            let header = position_header(&position, outcome);
            assert_eq!(recovered(&header), outcome);
            assert_eq!(StreamPosition::from_header(&header), Some(position.clone()));
        }
    }
}
