//! DEFLATE (RFC 1951) as real-time traffic wants it: greedy LZ77 matches coded with the fixed
//! Huffman codes, in one pass, each block ended by a sync flush so that the peer can inflate
//! all of it at once. Two forms:
//!
//! - [`deflate_message`]: a message on its own, from an empty window (permessage-deflate with
//!   no context takeover);
//! - [`DeflateStream`]: a stream whose matches reach back into what it sent before (a gzip
//!   connection's batches).
//!
//! Why not zlib: zlib's fastest level codes the same way (fixed codes, greedy matches, the
//! "quick" strategy), and writes within 1 % of the same size on JSON text. But a message
//! compressed without context takeover needs a zlib stream reset before each one, and
//! zlib-rs's reset clears a 128 KiB hash table and its block's tree counts: for a message of a
//! kilobyte that was most of the CPU deflate took (a profile of 1 KiB echoes put 40 % of the
//! busy CPU in that clearing). Here a message's hash table is sized to the message, so
//! clearing it costs in proportion to what is compressed. A zlib stream also holds about
//! 300 KiB from its first byte, where [`DeflateStream`] holds its window and a table that grows
//! with it, to 16 KiB at most. Timed on JSON text, this is faster than zlib-rs's level 1 at
//! every size from 256 B to 1 MiB.

use std::cell::RefCell;

use bytes::BytesMut;

mod stream;

pub(crate) use stream::DeflateStream;

/// Matches reach at most this far back (the window of RFC 1951).
const MAX_DISTANCE: usize = 32 << 10;
const MIN_MATCH: usize = 4;
const MAX_MATCH: usize = 258;
/// The end-of-block symbol.
const END_OF_BLOCK: usize = 256;

/// The hash table's size, in bits, for the largest messages.
const MAX_HASH_BITS: u32 = 14;
/// The hash table's size, in bits, for the smallest messages and streams.
const MIN_HASH_BITS: u32 = 8;

/// The hash table's size, in bits, for `len` bytes: about one entry per byte, within bounds.
fn hash_bits_for(len: usize) -> u32 {
    (usize::BITS - len.leading_zeros()).clamp(MIN_HASH_BITS, MAX_HASH_BITS)
}

thread_local! {
    /// Per position hashed, where it was last seen (position + 1; 0 for never). Kept by the
    /// thread, and cleared only as far as a message uses it.
    static HEADS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// The fixed literal/length codes (RFC 1951 section 3.2.6), bit-reversed as they are written,
/// with their lengths.
const LITERAL_CODES: [(u16, u8); 288] = {
    let mut codes = [(0, 0); 288];
    let mut symbol = 0;
    while symbol < 288 {
        let (code, len) = match symbol {
            0..=143 => (0x30 + symbol, 8),
            144..=255 => (0x190 + symbol - 144, 9),
            256..=279 => (symbol - 256, 7),
            _ => (0xC0 + symbol - 280, 8),
        };
        codes[symbol] = (reverse(code as u16, len), len);
        symbol += 1;
    }
    codes
};

/// The low `len` bits of `code`, in reverse order: Huffman codes go out most significant bit
/// first, into a stream packed from each byte's least significant bit.
const fn reverse(code: u16, len: u8) -> u16 {
    code.reverse_bits() >> (16 - len as u32)
}

/// Bits packed from the least significant end, as DEFLATE lays them out, into a buffer sized
/// for the worst case up front: no write checks for room.
struct Bits<'a> {
    out: &'a mut [u8],
    written: usize,
    pending: u64,
    count: u32,
}

impl Bits<'_> {
    fn new(out: &mut [u8]) -> Bits<'_> {
        Bits {
            out,
            written: 0,
            pending: 0,
            count: 0,
        }
    }

    /// Appends the low `count` bits of `value` (at most 32 at a time).
    fn put(&mut self, value: u32, count: u32) {
        self.pending |= u64::from(value) << self.count;
        self.count += count;
        if self.count >= 32 {
            self.out[self.written..self.written + 4]
                .copy_from_slice(&(self.pending as u32).to_le_bytes());
            self.written += 4;
            self.pending >>= 32;
            self.count -= 32;
        }
    }

    fn literal(&mut self, byte: u8) {
        let (code, len) = LITERAL_CODES[usize::from(byte)];
        self.put(u32::from(code), u32::from(len));
    }

    /// A match of `len` bytes, `distance` back: at most 31 bits, so one `put`.
    fn matched(&mut self, len: usize, distance: usize) {
        let (length_bits, length_count) = LENGTH_CODES[len];
        let (code, extra, extra_bits) = distance_code(distance);
        // Distance codes are all five bits long.
        let distance_bits = u32::from(reverse(code, 5)) | extra << 5;
        self.put(
            length_bits | distance_bits << length_count,
            u32::from(length_count) + 5 + extra_bits,
        );
    }

    /// Writes out the last, partial byte; gives the bytes written.
    fn finish(mut self) -> usize {
        while self.count > 0 {
            self.out[self.written] = self.pending as u8;
            self.written += 1;
            self.pending >>= 8;
            self.count = self.count.saturating_sub(8);
        }
        self.written
    }
}

/// Per match length (3 to 258), its length symbol's code followed by the extra bits, as
/// written, and their count.
const LENGTH_CODES: [(u32, u8); MAX_MATCH + 1] = {
    let mut codes = [(0, 0); MAX_MATCH + 1];
    let mut len = 3;
    while len <= MAX_MATCH {
        let (symbol, extra, extra_bits) = length_code(len);
        let (code, code_len) = LITERAL_CODES[symbol];
        codes[len] = (code as u32 | extra << code_len, code_len + extra_bits as u8);
        len += 1;
    }
    codes
};

/// The length symbol of a match of `len` (3 to 258) bytes, its extra bits' value and count.
const fn length_code(len: usize) -> (usize, u32, u32) {
    if len == MAX_MATCH {
        return (285, 0, 0);
    }
    let above = (len - 3) as u32;
    if above < 8 {
        return (257 + above as usize, 0, 0);
    }
    let log = 31 - above.leading_zeros();
    let extra_bits = log - 2;
    let symbol = 257 + 4 * (log - 1) + ((above >> extra_bits) & 3);
    (symbol as usize, above & ((1 << extra_bits) - 1), extra_bits)
}

/// The distance code of a match `distance` (1 to 32768) bytes back, its extra bits' value and
/// count.
fn distance_code(distance: usize) -> (u16, u32, u32) {
    let above = (distance - 1) as u32;
    if above < 4 {
        return (above as u16, 0, 0);
    }
    let log = 31 - above.leading_zeros();
    let extra_bits = log - 1;
    let code = 2 * log + ((above >> extra_bits) & 1);
    (code as u16, above & ((1 << extra_bits) - 1), extra_bits)
}

/// Where four bytes (`word`) go in a table of `2^hash_bits` entries.
fn hash(word: u32, hash_bits: u32) -> usize {
    (word.wrapping_mul(0x9E37_79B1) >> (32 - hash_bits)) as usize
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

/// How many bytes from `a` and from `b` are the same, up to `limit` (`b` is the later of the
/// two, and `b + limit` within `bytes`); compared eight at a time.
fn common_len(bytes: &[u8], a: usize, b: usize, limit: usize) -> usize {
    let mut len = 0;
    while len + 8 <= limit {
        let mut x = [0; 8];
        let mut y = [0; 8];
        x.copy_from_slice(&bytes[a + len..a + len + 8]);
        y.copy_from_slice(&bytes[b + len..b + len + 8]);
        let differ = u64::from_le_bytes(x) ^ u64::from_le_bytes(y);
        if differ != 0 {
            return len + (differ.trailing_zeros() / 8) as usize;
        }
        len += 8;
    }
    while len < limit && bytes[a + len] == bytes[b + len] {
        len += 1;
    }
    len
}

/// The most bytes [`code_block`] writes for `len` plain bytes, the flush after it included:
/// fixed codes take at most 9 bits a byte (a match fewer than its bytes would).
fn worst_case(len: usize) -> usize {
    len + len / 8 + 16
}

/// Appends `plain` as one fixed-code block followed by the empty stored block of a sync flush,
/// without that block's last four bytes (`00 00 FF FF`): a permessage-deflate payload.
#[cfg_attr(not(feature = "ws"), allow(dead_code))]
pub(crate) fn deflate_message(plain: &[u8], dst: &mut BytesMut) {
    let hash_bits = hash_bits_for(plain.len());
    HEADS.with_borrow_mut(|heads| {
        let size = 1 << hash_bits;
        if heads.len() < size {
            heads.resize(size, 0);
        }
        let heads = &mut heads[..size];
        heads.fill(0);
        let start = dst.len();
        dst.resize(start + worst_case(plain.len()), 0);
        let mut bits = Bits::new(&mut dst[start..]);
        code_block(plain, 0, heads, &mut bits);
        // The sync flush's empty stored block: BFINAL 0, BTYPE 00, then up to the byte's end;
        // its LEN and NLEN (00 00 FF FF) are what permessage-deflate leaves off.
        bits.put(0, 3);
        let written = bits.finish();
        dst.truncate(start + written);
    });
}

/// Codes `data[start..]` as one fixed-code block (not the last), whose matches may reach back
/// into `data` before `start` as far as the window goes. `heads` (a power of two long) holds,
/// per hash of four bytes, where in `data` they were last seen (position + 1; 0 for never);
/// the block's positions are added to it.
fn code_block(data: &[u8], start: usize, heads: &mut [u32], bits: &mut Bits) {
    let hash_bits = heads.len().trailing_zeros();
    // BFINAL 0, BTYPE 01 (fixed codes).
    bits.put(0b010, 3);
    let hash = |word: u32| hash(word, hash_bits);
    let mut at = start;
    let mut misses = 0;
    while at + MIN_MATCH <= data.len() {
        let word = read_u32(data, at);
        let slot = hash(word);
        let seen = heads[slot] as usize;
        heads[slot] = at as u32 + 1;
        if seen > 0 {
            let from = seen - 1;
            let distance = at - from;
            if distance <= MAX_DISTANCE && read_u32(data, from) == word {
                let longest = (data.len() - at).min(MAX_MATCH);
                let len = MIN_MATCH
                    + common_len(data, from + MIN_MATCH, at + MIN_MATCH, longest - MIN_MATCH);
                bits.matched(len, distance);
                misses = 0;
                // The positions inside a match are not hashed: that cost half the time and
                // won about 1 % of the size on text.
                at += len;
                continue;
            }
        }
        // Bytes that keep finding no match are likely to go on not matching (noise, or
        // compressed data): after every 32 misses in a row, one more byte is skipped between
        // lookups.
        misses += 1;
        bits.literal(data[at]);
        at += 1;
        if misses > 32 {
            let skip = misses / 32 - 1;
            for &byte in &data[at..(at + skip).min(data.len())] {
                bits.literal(byte);
            }
            at += skip;
        }
    }
    for &byte in data.get(at..).unwrap_or_default() {
        bits.literal(byte);
    }
    bits.put(u32::from(LITERAL_CODES[END_OF_BLOCK].0), 7);
}

#[cfg(test)]
mod tests {
    use flate2::{Decompress, FlushDecompress};

    use super::*;

    /// `deflated` inflated by zlib-rs, the tail put back.
    fn inflate(deflated: &[u8], len: usize) -> Vec<u8> {
        let mut input = deflated.to_vec();
        input.extend_from_slice(&[0, 0, 0xFF, 0xFF]);
        let mut out = Vec::with_capacity(len + 64);
        let mut inflater = Decompress::new(false);
        inflater
            .decompress_vec(&input, &mut out, FlushDecompress::Sync)
            .unwrap();
        assert_eq!(
            inflater.total_in(),
            input.len() as u64,
            "all the input read"
        );
        out
    }

    fn round_trip(plain: &[u8]) -> usize {
        let mut dst = BytesMut::from(&b"xy"[..]);
        deflate_message(plain, &mut dst);
        assert_eq!(&dst[..2], b"xy");
        let back = inflate(&dst[2..], plain.len());
        assert!(back == plain, "{} bytes differ", plain.len());
        dst.len() - 2
    }

    #[test]
    fn the_rfc_example_is_what_zlib_writes() {
        // RFC 7692 section 7.2.3.1: "Hello" with fixed codes, no match.
        let mut dst = BytesMut::new();
        deflate_message(b"Hello", &mut dst);
        assert_eq!(&dst[..], [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]);
    }

    #[test]
    fn every_length_and_distance_code_is_right() {
        for len in 3..=258 {
            let (symbol, extra, bits) = length_code(len);
            let (base, base_bits) = LENGTH_BASES[symbol - 257];
            assert_eq!((base + extra as usize, bits), (len, base_bits), "{len}");
        }
        for distance in 1..=MAX_DISTANCE {
            let (code, extra, bits) = distance_code(distance);
            let (base, base_bits) = DISTANCE_BASES[usize::from(code)];
            assert_eq!(
                (base + extra as usize, bits),
                (distance, base_bits),
                "{distance}"
            );
        }
    }

    /// RFC 1951 section 3.2.5, as written there: each code's base and extra bits.
    #[rustfmt::skip]
    const LENGTH_BASES: [(usize, u32); 29] = [
        (3, 0), (4, 0), (5, 0), (6, 0), (7, 0), (8, 0), (9, 0), (10, 0), (11, 1), (13, 1),
        (15, 1), (17, 1), (19, 2), (23, 2), (27, 2), (31, 2), (35, 3), (43, 3), (51, 3), (59, 3),
        (67, 4), (83, 4), (99, 4), (115, 4), (131, 5), (163, 5), (195, 5), (227, 5), (258, 0),
    ];
    #[rustfmt::skip]
    const DISTANCE_BASES: [(usize, u32); 30] = [
        (1, 0), (2, 0), (3, 0), (4, 0), (5, 1), (7, 1), (9, 2), (13, 2), (17, 3), (25, 3),
        (33, 4), (49, 4), (65, 5), (97, 5), (129, 6), (193, 6), (257, 7), (385, 7), (513, 8),
        (769, 8), (1025, 9), (1537, 9), (2049, 10), (3073, 10), (4097, 11), (6145, 11),
        (8193, 12), (12289, 12), (16385, 13), (24577, 13),
    ];

    /// Chat messages as JSON, different every time.
    fn chat_json(rng: &mut fastrand::Rng, len: usize) -> Vec<u8> {
        let words = [
            "hello", "room", "lobby", "meeting", "ok", "today", "ready", "deploy",
        ];
        let mut text = String::new();
        while text.len() < len {
            text.push_str(&format!(
                "{{\"id\":{},\"user\":\"user{}\",\"text\":\"",
                rng.u32(1000..100_000),
                rng.u32(..500)
            ));
            for _ in 0..rng.usize(3..12) {
                text.push_str(words[rng.usize(..words.len())]);
                text.push(' ');
            }
            text.push_str("\"},");
        }
        text.into_bytes()
    }

    #[test]
    fn text_deflates_about_as_small_as_zlib_makes_it() {
        use flate2::{Compress, Compression, FlushCompress};
        let mut rng = fastrand::Rng::with_seed(1951);
        for len in [200, 1000, 5000, 70_000] {
            let plain = chat_json(&mut rng, len);
            let ours = round_trip(&plain);
            let mut zlib = Compress::new(Compression::fast(), false);
            let mut out = Vec::with_capacity(plain.len() * 2);
            zlib.compress_vec(&plain, &mut out, FlushCompress::Sync)
                .unwrap();
            // zlib's output ends with the sync flush's 00 00 FF FF, which ours leaves off.
            let zlib = out.len() - 4;
            assert!(ours * 100 <= zlib * 103, "{len} B: {ours} B, zlib {zlib} B");
            assert!(ours * 3 < plain.len() * 2, "{len} B: {ours} B");
        }
    }

    #[test]
    fn an_inflater_written_apart_from_zlib_reads_it_too() {
        let mut rng = fastrand::Rng::with_seed(1952);
        for len in [0, 5, 300, 1000, 5000, 70_000, 300_000] {
            for plain in [
                chat_json(&mut rng, len),
                (0..len).map(|_| rng.u8(..4)).collect(),
                (0..len).map(|_| rng.u8(..)).collect(),
            ] {
                let mut deflated = BytesMut::new();
                deflate_message(&plain, &mut deflated);
                // The tail permessage-deflate leaves off, then a final empty block: a whole
                // stream for miniz_oxide.
                deflated.extend_from_slice(&[0, 0, 0xFF, 0xFF, 0b011, 0]);
                let back = miniz_oxide::inflate::decompress_to_vec(&deflated).unwrap();
                assert!(back == plain, "{} bytes differ", plain.len());
            }
        }
    }

    #[test]
    fn text_after_noise_is_still_matched() {
        // Lookups grow sparse over noise; the first match must bring them back to every byte.
        let mut rng = fastrand::Rng::with_seed(7);
        let mut message: Vec<u8> = (0..20_000).map(|_| rng.u8(..)).collect();
        let text = chat_json(&mut rng, 20_000);
        message.extend_from_slice(&text);
        let alone = round_trip(&text);
        let after_noise = round_trip(&message);
        assert!(
            after_noise < 20_000 * 9 / 8 + alone * 11 / 10,
            "{after_noise} B, the text alone {alone} B"
        );
    }

    #[test]
    fn messages_of_every_kind_inflate_back() {
        let mut rng = fastrand::Rng::with_seed(7692);
        assert_eq!(round_trip(b""), 2);
        for len in [1, 3, 4, 5, 7, 8, 9, 300] {
            round_trip(&vec![b'a'; len]);
        }
        // Runs longer than the longest match, and than the window.
        let run = round_trip(&vec![0; 100_000]);
        assert!(run < 1_000, "{run} bytes for a run of 100,000");
        // Text, the usual case.
        let words = [
            "{\"room\":",
            "\"lobby\"",
            ",\"text\":",
            "\"hello\"",
            "}",
            "é",
            " ",
        ];
        for _ in 0..300 {
            let text: String = (0..rng.usize(0..2000))
                .map(|_| words[rng.usize(..words.len())])
                .collect();
            let size = round_trip(text.as_bytes());
            assert!(
                text.len() < 200 || size < text.len() / 2,
                "{size} for {}",
                text.len()
            );
        }
        // Noise, and noise with repeats further back than the window reaches.
        for len in [1, 100, 5000, 70_000] {
            let noise: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            round_trip(&noise);
            let mut far = noise.clone();
            far.extend_from_slice(&vec![0; 33_000]);
            far.extend_from_slice(&noise);
            round_trip(&far);
        }
        // Few symbols, many short matches at every distance.
        for _ in 0..200 {
            let bytes: Vec<u8> = (0..rng.usize(0..40_000)).map(|_| rng.u8(..4)).collect();
            round_trip(&bytes);
        }
    }
}
