//! The sizes a decoder accepts from a peer.

use super::DEFAULT_MAX_PACKET_SIZE;

/// Default limit of one header block in wire bytes: 16 KiB.
pub const DEFAULT_MAX_HEADER_SIZE: usize = 16 << 10;

/// Default limit of the entries of one header block: 256.
pub const DEFAULT_MAX_HEADER_ENTRIES: usize = 256;

/// The sizes every decoder checks while it decodes, before it buffers or allocates.
///
/// A header has limits of its own, well under the packet's: a decoded entry costs a few dozen
/// bytes of memory whatever its wire size, so `a:;a:;…` would cost ~24× its wire size if only
/// the packet size bounded it. Oversized input is a
/// [`RequestEntityTooLarge`](crate::Code::RequestEntityTooLarge).
///
/// Every decoder takes `impl Into<Limits>`; a bare `usize` is a packet size limit with the
/// default header limits.
///
/// ```
/// use bytes::Bytes;
/// use stmp::{Code, wire::{Limits, Packet}};
///
/// let limits = Limits::default().with_max_header_entries(2);
/// let three = Bytes::from_static(b"N1\nHa:1;b:2;c:3");
/// let error = Packet::decode_text(three.clone(), limits).unwrap_err();
/// assert_eq!(error.code(), Code::RequestEntityTooLarge);
/// assert!(Packet::decode_text(three, 1 << 20).is_ok()); // 3 entries are within the default
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Method + header + payload of one packet; header + message of a handshake.
    pub max_packet_size: usize,
    /// The header block of one packet or handshake, in wire bytes.
    pub max_header_size: usize,
    /// The entries of one header block (a key with two values counts twice).
    pub max_header_entries: usize,
}

impl Limits {
    /// 16 MiB packets, 16 KiB and 256 entries per header.
    pub const DEFAULT: Limits = Limits {
        max_packet_size: DEFAULT_MAX_PACKET_SIZE,
        max_header_size: DEFAULT_MAX_HEADER_SIZE,
        max_header_entries: DEFAULT_MAX_HEADER_ENTRIES,
    };

    /// These limits with another packet size limit.
    pub const fn with_max_packet_size(mut self, max: usize) -> Limits {
        self.max_packet_size = max;
        self
    }

    /// These limits with another header size limit.
    pub const fn with_max_header_size(mut self, max: usize) -> Limits {
        self.max_header_size = max;
        self
    }

    /// These limits with another header entry limit.
    pub const fn with_max_header_entries(mut self, max: usize) -> Limits {
        self.max_header_entries = max;
        self
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

/// A packet size limit, with the default header limits.
impl From<usize> for Limits {
    fn from(max_packet_size: usize) -> Self {
        Limits::DEFAULT.with_max_packet_size(max_packet_size)
    }
}

impl From<&Limits> for Limits {
    fn from(limits: &Limits) -> Self {
        *limits
    }
}
