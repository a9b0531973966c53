//! A deflate stream: batch after batch, each ended by a sync flush, with matches reaching back
//! into the batches before it (a gzip connection's direction).

use super::{Bits, MAX_DISTANCE, MIN_MATCH, code_block, hash, hash_bits_for, read_u32, worst_case};

/// The most a stream's hash table grows to, in bits: 4,096 entries, 16 KiB. A server holds a
/// stream per gzip connection and touches each one's table at every batch, so a larger one
/// misses the cache more than it finds matches: against 16,384 entries, 1 KiB JSON batches
/// came out 2 % larger, and three alternated pairs at 64 connections × 1 measured the same or
/// less CPU per call.
const MAX_STREAM_HASH_BITS: u32 = 12;

/// A batch is coded in blocks of at most this much, so that positions (and the history
/// buffer) stay small whatever the batch.
const MAX_BLOCK: usize = 256 << 10;

/// History is let go once it holds this much: then only the last window's worth stays.
/// Sliding every batch would cost a pass over the table per batch.
const SLIDE_AT: usize = 2 * MAX_DISTANCE;

/// A history buffer that a large batch grew past this is given back after it.
const KEEP_CAPACITY: usize = SLIDE_AT + (16 << 10);

/// A sync flush on a byte boundary: an empty stored block (BFINAL 0, BTYPE 00, padded to the
/// byte), then its LEN and NLEN.
const EMPTY_STORED_BLOCK: [u8; 5] = [0x00, 0x00, 0x00, 0xFF, 0xFF];

/// How every sync flush ends: the empty stored block's LEN and NLEN.
const FLUSHED: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];

/// A stored block holds at most this many bytes.
const MAX_STORED: usize = u16::MAX as usize;

/// One direction's deflate stream. It holds nothing until its first batch; then the window of
/// plain bytes its matches reach into, and a hash table that grows with it to 16 KiB: a
/// connection that only ever sends small packets keeps a small one.
#[derive(Default)]
pub(crate) struct DeflateStream {
    /// The last bytes coded (at most [`SLIDE_AT`] plus a block): what matches reach into.
    history: Vec<u8>,
    /// Per hash of four bytes, where in `history` they were last seen (position + 1; 0 for
    /// never).
    heads: Vec<u32>,
}

impl DeflateStream {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Appends `plain` to `out`, coded as the stream's next blocks and ended by a sync flush:
    /// what was written so far inflates whole. Incompressible bytes go in stored blocks.
    pub(crate) fn batch(&mut self, plain: &[u8], out: &mut Vec<u8>) {
        if plain.is_empty() {
            out.extend_from_slice(&EMPTY_STORED_BLOCK);
        }
        for block in plain.chunks(MAX_BLOCK) {
            self.block(block, out);
        }
        if self.history.capacity() > KEEP_CAPACITY {
            self.slide(MAX_DISTANCE);
            self.history.shrink_to(KEEP_CAPACITY);
        }
    }

    /// Appends the stream's last block: empty, final. Every batch before it ended on a byte
    /// boundary, so it takes two bytes.
    pub(crate) fn finish(&mut self, out: &mut Vec<u8>) {
        // BFINAL 1, BTYPE 01, then the end-of-block code (seven zero bits).
        out.extend_from_slice(&[0b011, 0]);
        self.history = Vec::new();
        self.heads = Vec::new();
    }

    /// Codes `plain` as one block, or stored blocks if coding does not shrink it, ended by a
    /// sync flush.
    fn block(&mut self, plain: &[u8], out: &mut Vec<u8>) {
        if self.history.len() + plain.len() > SLIDE_AT {
            self.slide(MAX_DISTANCE);
        }
        let start = self.history.len();
        self.history.extend_from_slice(plain);
        self.fit_table(start);
        let at = out.len();
        out.resize(at + worst_case(plain.len()) + FLUSHED.len(), 0);
        let mut bits = Bits::new(&mut out[at..]);
        code_block(&self.history, start, &mut self.heads, &mut bits);
        // The sync flush: an empty stored block's head, up to the byte's end, then its
        // lengths.
        bits.put(0, 3);
        let coded = bits.finish();
        out.truncate(at + coded);
        out.extend_from_slice(&FLUSHED);
        let stored = plain.len().div_ceil(MAX_STORED) * EMPTY_STORED_BLOCK.len() + plain.len();
        if coded + FLUSHED.len() > stored + EMPTY_STORED_BLOCK.len() {
            // Stored blocks, each on a byte boundary: its head padded to the byte, LEN, NLEN.
            out.truncate(at);
            for chunk in plain.chunks(MAX_STORED) {
                let len = chunk.len() as u16;
                out.push(0x00);
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(&(!len).to_le_bytes());
                out.extend_from_slice(chunk);
            }
            out.extend_from_slice(&EMPTY_STORED_BLOCK);
        }
    }

    /// Grows the table to the history's size, `start` bytes of it coded already. A table of
    /// another size hashes differently, so those bytes' positions are hashed again: matches
    /// go on reaching into them. It only grows, a handful of times in a stream's life.
    fn fit_table(&mut self, start: usize) {
        let bits = hash_bits_for(self.history.len()).min(MAX_STREAM_HASH_BITS);
        if self.heads.len() >= 1 << bits {
            return;
        }
        self.heads = vec![0; 1 << bits];
        // Positions with four bytes after them: all of those coded, unless the block is short.
        let hashed = start.min((self.history.len() + 1).saturating_sub(MIN_MATCH));
        for at in 0..hashed {
            self.heads[hash(read_u32(&self.history, at), bits)] = at as u32 + 1;
        }
    }

    /// Keeps only the last `keep` bytes of history, and moves the table's positions with them.
    fn slide(&mut self, keep: usize) {
        let Some(gone) = self.history.len().checked_sub(keep) else {
            return;
        };
        self.history.drain(..gone);
        let gone = gone as u32;
        for head in &mut self.heads {
            *head = head.saturating_sub(gone);
        }
    }
}

#[cfg(test)]
mod tests {
    use flate2::{Decompress, FlushDecompress};

    use super::*;

    /// Inflates the stream's bytes so far, checking they all inflate at once.
    struct Peer {
        inflater: Decompress,
        plain: Vec<u8>,
    }

    impl Peer {
        fn new() -> Self {
            Peer {
                inflater: Decompress::new(false),
                plain: Vec::new(),
            }
        }

        fn take(&mut self, wire: &[u8]) -> &[u8] {
            let from = self.plain.len();
            let mut input = wire;
            while !input.is_empty() {
                self.plain.reserve(input.len() * 20 + 1024);
                let before = self.inflater.total_in();
                self.inflater
                    .decompress_vec(input, &mut self.plain, FlushDecompress::Sync)
                    .unwrap();
                let read = (self.inflater.total_in() - before) as usize;
                input = &input[read..];
            }
            &self.plain[from..]
        }
    }

    fn json(rng: &mut fastrand::Rng, len: usize) -> Vec<u8> {
        let words = ["hello", "room", "lobby", "meeting", "ok", "today", "ready"];
        let mut text = String::new();
        while text.len() < len {
            text.push_str(&format!(
                "{{\"id\":{},\"text\":\"{} {}\"}}",
                rng.u32(..1_000_000),
                words[rng.usize(..words.len())],
                words[rng.usize(..words.len())]
            ));
        }
        text.into_bytes()
    }

    #[test]
    fn every_batch_inflates_whole_on_arrival() {
        let mut rng = fastrand::Rng::with_seed(1951);
        let mut stream = DeflateStream::new();
        let mut peer = Peer::new();
        for round in 0..400 {
            let batch: Vec<u8> = match round % 4 {
                0 => {
                    let len = rng.usize(0..3000);
                    json(&mut rng, len)
                }
                1 => (0..rng.usize(0..3000)).map(|_| rng.u8(..)).collect(),
                2 => vec![rng.u8(..); rng.usize(0..70_000)],
                _ => (0..rng.usize(0..300_000)).map(|_| rng.u8(..3)).collect(),
            };
            let mut wire = Vec::new();
            stream.batch(&batch, &mut wire);
            assert!(wire.ends_with(&FLUSHED), "a sync flush ends it");
            assert!(peer.take(&wire) == batch, "round {round} differs");
        }
        let mut end = Vec::new();
        stream.finish(&mut end);
        let mut rest = Vec::with_capacity(16);
        let status = peer
            .inflater
            .decompress_vec(&end, &mut rest, FlushDecompress::Finish)
            .unwrap();
        assert_eq!(status, flate2::Status::StreamEnd);
        assert!(rest.is_empty());
    }

    #[test]
    fn an_inflater_written_apart_from_zlib_reads_the_whole_stream() {
        let mut rng = fastrand::Rng::with_seed(1952);
        let mut stream = DeflateStream::new();
        let (mut wire, mut plain) = (Vec::new(), Vec::new());
        for round in 0..60 {
            let len = rng.usize(0..20_000);
            let batch = match round % 3 {
                0 => json(&mut rng, len),
                1 => (0..len).map(|_| rng.u8(..)).collect(),
                _ => (0..len * 10).map(|_| rng.u8(..3)).collect(),
            };
            stream.batch(&batch, &mut wire);
            plain.extend_from_slice(&batch);
        }
        stream.finish(&mut wire);
        let back = miniz_oxide::inflate::decompress_to_vec(&wire).unwrap();
        assert!(back == plain, "{} bytes differ", plain.len());
    }

    #[test]
    fn later_batches_copy_from_earlier_ones() {
        let mut rng = fastrand::Rng::with_seed(7);
        let message = json(&mut rng, 1000);
        let mut stream = DeflateStream::new();
        let mut peer = Peer::new();
        let mut sizes = Vec::new();
        for _ in 0..3 {
            let mut wire = Vec::new();
            stream.batch(&message, &mut wire);
            assert_eq!(peer.take(&wire), message);
            sizes.push(wire.len());
        }
        // The same message again is a few matches into the last one.
        assert!(
            sizes[1] * 10 < sizes[0] && sizes[2] * 10 < sizes[0],
            "{sizes:?}"
        );
        // Past the window it cannot be copied: after 40 KB of noise it is coded afresh.
        let noise: Vec<u8> = (0..40_000).map(|_| rng.u8(..)).collect();
        let mut wire = Vec::new();
        stream.batch(&noise, &mut wire);
        assert!(
            wire.len() <= noise.len() + 2 * EMPTY_STORED_BLOCK.len(),
            "noise in a stored block: {} B",
            wire.len()
        );
        assert_eq!(peer.take(&wire), noise);
        let mut wire = Vec::new();
        stream.batch(&message, &mut wire);
        assert_eq!(peer.take(&wire), message);
        assert!(wire.len() > 200, "{} B", wire.len());
    }

    #[test]
    fn text_deflates_about_as_small_as_a_zlib_stream_makes_it() {
        use flate2::{Compress, Compression, FlushCompress};
        let mut rng = fastrand::Rng::with_seed(3);
        let mut stream = DeflateStream::new();
        let mut zlib = Compress::new(Compression::fast(), false);
        let (mut ours, mut theirs) = (0, 0);
        for _ in 0..300 {
            let len = rng.usize(100..4000);
            let batch = json(&mut rng, len);
            let mut wire = Vec::new();
            stream.batch(&batch, &mut wire);
            ours += wire.len();
            let mut out = Vec::with_capacity(batch.len() * 2 + 64);
            zlib.compress_vec(&batch, &mut out, FlushCompress::Sync)
                .unwrap();
            theirs += out.len();
        }
        assert!(ours * 100 <= theirs * 105, "{ours} B, zlib {theirs} B");
    }

    #[test]
    fn an_idle_stream_holds_nothing_and_a_large_batch_is_let_go() {
        let mut stream = DeflateStream::new();
        let mut wire = Vec::new();
        stream.batch(b"", &mut wire);
        assert_eq!(wire, EMPTY_STORED_BLOCK);
        assert_eq!(stream.history.capacity() + stream.heads.capacity(), 0);
        stream.batch(&[b'x'; 100], &mut wire);
        assert!(
            stream.heads.len() <= 256,
            "a small table for small batches: {}",
            stream.heads.len()
        );
        stream.batch(&vec![b'x'; 1 << 20], &mut wire);
        assert!(stream.history.capacity() <= KEEP_CAPACITY);
    }
}
