//! The header block: `key:value;key:value`, multi-valued, with `%`-escaping.

use std::fmt;

use bytes::BufMut;

use super::Limits;
use crate::Status;

/// A multi-valued header: ordered `key → value` entries; a key may appear several times.
///
/// Keys are compared exactly (case-sensitive), as stmp-go does. On the wire the entries are
/// `key:value` pairs joined by `;`, with `:`, `\n`, `;` and `%` escaped as `%3A`, `%0A`, `%3B`
/// and `%25`.
///
/// ```
/// use stmp::wire::Header;
///
/// let mut header = Header::new();
/// header.append("x-k", "v1");
/// header.append("x-k", "v2");
/// header.insert("Accept", "application/json;q=0.9");
/// assert_eq!(header.get("x-k"), Some("v1"));
/// assert_eq!(header.get_all("x-k").collect::<Vec<_>>(), ["v1", "v2"]);
/// assert_eq!(header.to_wire(), b"x-k:v1;x-k:v2;Accept:application/json%3Bq=0.9");
/// assert_eq!(Header::decode(&header.to_wire()).unwrap(), header);
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Header {
    entries: Vec<(String, String)>,
}

impl Header {
    /// An empty header.
    pub const fn new() -> Header {
        Header {
            entries: Vec::new(),
        }
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key`, in order.
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.entries
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether `key` has a value.
    pub fn contains_key(&self, key: &str) -> bool {
        self.entries.iter().any(|(k, _)| k == key)
    }

    /// Adds a value to `key`, keeping the values it has.
    pub fn append(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.entries.push((key.into(), value.into()));
    }

    /// Sets `key` to this one value, replacing the values it had.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        let key = key.into();
        self.remove(&key);
        self.entries.push((key, value.into()));
    }

    /// Removes every value of `key`; returns whether there was one.
    pub fn remove(&mut self, key: &str) -> bool {
        let before = self.entries.len();
        self.entries.retain(|(k, _)| k != key);
        self.entries.len() != before
    }

    /// All entries, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The number of entries (a key with two values counts twice).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there is no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Gives back the room that appends left over: a connection keeps its peer's handshake
    /// header for its whole life.
    #[cfg(feature = "ws")]
    pub(crate) fn shrink_to_fit(&mut self) {
        self.entries.shrink_to_fit();
    }

    #[cfg(all(test, feature = "ws"))]
    pub(crate) fn entries_capacity(&self) -> usize {
        self.entries.capacity()
    }

    /// The length of [`Header::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        let text: usize = self
            .entries
            .iter()
            .map(|(k, v)| escaped_len(k) + 1 + escaped_len(v))
            .sum();
        text + self.entries.len().saturating_sub(1)
    }

    /// Writes the wire form (without a length prefix).
    pub fn encode(&self, dst: &mut impl BufMut) {
        for (index, (key, value)) in self.entries.iter().enumerate() {
            if index > 0 {
                dst.put_u8(b';');
            }
            escape_into(key, dst);
            dst.put_u8(b':');
            escape_into(value, dst);
        }
    }

    /// The wire form as a vector.
    pub fn to_wire(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode(&mut out);
        out
    }

    /// Parses a wire form within the default [`Limits`]. Empty segments (`a:b;;c:d`) are
    /// skipped; a pair without `:`, or bytes that are not UTF-8, are a
    /// [`ProtocolError`](crate::Code::ProtocolError).
    pub fn decode(src: &[u8]) -> Result<Header, Status> {
        Header::decode_with(src, Limits::DEFAULT)
    }

    /// Parses a wire form within `limits`: more bytes than `max_header_size` or more entries
    /// than `max_header_entries` are a
    /// [`RequestEntityTooLarge`](crate::Code::RequestEntityTooLarge), found before any entry is
    /// allocated.
    ///
    /// ```
    /// use stmp::{Code, wire::{Header, Limits}};
    ///
    /// let limits = Limits::default().with_max_header_entries(2);
    /// assert_eq!(Header::decode_with(b"a:1;;b:2", limits).unwrap().len(), 2);
    /// let error = Header::decode_with(b"a:1;b:2;c:3", limits).unwrap_err();
    /// assert_eq!(error.code(), Code::RequestEntityTooLarge);
    /// ```
    pub fn decode_with(src: &[u8], limits: impl Into<Limits>) -> Result<Header, Status> {
        let limits = limits.into();
        check_header_size(src.len() as u64, &limits)?;
        let pairs = || src.split(|b| *b == b';').filter(|pair| !pair.is_empty());
        let count = pairs().count();
        if count > limits.max_header_entries {
            return Err(Status::request_entity_too_large(format!(
                "header has {count} entries, over the limit of {}",
                limits.max_header_entries
            )));
        }
        let mut entries = Vec::with_capacity(count);
        for pair in pairs() {
            let Some(colon) = pair.iter().position(|b| *b == b':') else {
                return Err(Status::protocol_error(format!(
                    "header entry {:?} has no ':'",
                    String::from_utf8_lossy(&pair[..pair.len().min(64)])
                )));
            };
            entries.push((unescape(&pair[..colon])?, unescape(&pair[colon + 1..])?));
        }
        Ok(Header { entries })
    }
}

/// Refuses a header block of `len` wire bytes over the limit; binary decoders call it as soon
/// as the length is announced, before the bytes are awaited.
pub(crate) fn check_header_size(len: u64, limits: &Limits) -> Result<(), Status> {
    if len > limits.max_header_size as u64 {
        return Err(Status::request_entity_too_large(format!(
            "header of {len} bytes is over the limit of {} bytes",
            limits.max_header_size
        )));
    }
    Ok(())
}

fn escape_code(byte: u8) -> Option<&'static [u8; 3]> {
    match byte {
        b':' => Some(b"%3A"),
        b'\n' => Some(b"%0A"),
        b';' => Some(b"%3B"),
        b'%' => Some(b"%25"),
        _ => None,
    }
}

fn escaped_len(text: &str) -> usize {
    text.len() + 2 * text.bytes().filter(|b| escape_code(*b).is_some()).count()
}

/// Writes `text` with the four special bytes escaped (also used for methods in the text form).
pub(crate) fn escape_into(text: &str, dst: &mut impl BufMut) {
    let bytes = text.as_bytes();
    let mut start = 0;
    for (index, byte) in bytes.iter().enumerate() {
        if let Some(code) = escape_code(*byte) {
            dst.put_slice(&bytes[start..index]);
            dst.put_slice(code);
            start = index + 1;
        }
    }
    dst.put_slice(&bytes[start..]);
}

/// Undoes [`escape_into`]. A `%` that does not start one of the four escapes is kept as it is,
/// like stmp-go's replacer does.
pub(crate) fn unescape(src: &[u8]) -> Result<String, Status> {
    let mut out = Vec::with_capacity(src.len());
    let mut index = 0;
    while index < src.len() {
        let byte = src[index];
        if byte == b'%'
            && let Some(decoded) = src.get(index + 1..index + 3).and_then(|hex| {
                match hex.to_ascii_uppercase().as_slice() {
                    b"3A" => Some(b':'),
                    b"0A" => Some(b'\n'),
                    b"3B" => Some(b';'),
                    b"25" => Some(b'%'),
                    _ => None,
                }
            })
        {
            out.push(decoded);
            index += 3;
            continue;
        }
        out.push(byte);
        index += 1;
    }
    String::from_utf8(out).map_err(|_| Status::protocol_error("header is not valid UTF-8"))
}

impl fmt::Debug for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Header {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Header {
        let mut header = Header::new();
        header.extend(iter);
        header
    }
}

impl<K: Into<String>, V: Into<String>> Extend<(K, V)> for Header {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, iter: I) {
        self.entries
            .extend(iter.into_iter().map(|(k, v)| (k.into(), v.into())));
    }
}

impl<'a> IntoIterator for &'a Header {
    type Item = (&'a str, &'a str);
    type IntoIter = Box<dyn Iterator<Item = (&'a str, &'a str)> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_vector_multi_value() {
        let header = Header::decode(b"x-k:v1;x-k:v2").unwrap();
        assert_eq!(header.get_all("x-k").collect::<Vec<_>>(), ["v1", "v2"]);
        assert_eq!(header.to_wire(), b"x-k:v1;x-k:v2");
    }

    #[test]
    fn escapes_all_four_bytes() {
        let header: Header = [("a:b", "c\nd;e%f")].into_iter().collect();
        assert_eq!(header.to_wire(), b"a%3Ab:c%0Ad%3Be%25f");
        assert_eq!(header.encoded_len(), header.to_wire().len());
        assert_eq!(Header::decode(&header.to_wire()).unwrap(), header);
    }

    #[test]
    fn lower_case_escapes_and_stray_percent_are_accepted() {
        let header = Header::decode(b"k:%3a%zz%").unwrap();
        assert_eq!(header.get("k"), Some(":%zz%"));
    }

    #[test]
    fn missing_colon_is_a_protocol_error() {
        let error = Header::decode(b"Accept:text/x;q=0.9").unwrap_err();
        assert_eq!(error.code(), crate::Code::ProtocolError);
        assert!(error.message().contains("q=0.9"), "{error}");
    }

    #[test]
    fn value_may_contain_nothing_and_empty_segments_are_skipped() {
        let header = Header::decode(b";k:;;:v;").unwrap();
        assert_eq!(header.iter().collect::<Vec<_>>(), [("k", ""), ("", "v")]);
    }

    #[test]
    fn insert_replaces_and_remove_removes() {
        let mut header = Header::decode(b"a:1;b:2;a:3").unwrap();
        header.insert("a", "4");
        assert_eq!(header.iter().collect::<Vec<_>>(), [("b", "2"), ("a", "4")]);
        assert!(header.remove("b"));
        assert!(!header.remove("b"));
        assert_eq!(header.len(), 1);
    }

    #[test]
    fn entry_limit_counts_non_empty_segments() {
        let limits = Limits::DEFAULT
            .with_max_header_entries(2)
            .with_max_header_size(usize::MAX);
        assert_eq!(Header::decode_with(b";a:;;b:;", limits).unwrap().len(), 2);
        let error = Header::decode_with(&b"a:;".repeat(100_000), limits).unwrap_err();
        assert_eq!(error.code(), crate::Code::RequestEntityTooLarge);
        assert!(error.message().contains("100000 entries"), "{error}");
    }

    #[test]
    fn size_limit_is_checked_before_parsing() {
        let limits = Limits::DEFAULT.with_max_header_size(4);
        assert!(Header::decode_with(b"ab:c", limits).is_ok());
        let error = Header::decode_with(b"ab:cd", limits).unwrap_err();
        assert_eq!(error.code(), crate::Code::RequestEntityTooLarge);
        assert!(error.message().contains("header of 5 bytes"), "{error}");
    }

    #[test]
    fn default_limits_apply_to_decode() {
        let at_limit = b"a:;".repeat(256);
        assert_eq!(Header::decode(&at_limit).unwrap().len(), 256);
        let over = b"a:;".repeat(257);
        assert!(Header::decode(&over).is_err());
    }
}
