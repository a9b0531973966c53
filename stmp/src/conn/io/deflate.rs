//! The write side of a gzip stream, batch by batch: a pure function of the bytes given, with
//! no I/O, so the writer hands the socket one buffer per batch as it does without gzip.
//!
//! Each batch ends with a sync flush, so the peer can inflate every packet of it at once; the
//! stream goes on across batches (one gzip member per direction, its window shared by all).

use flate2::{Compress, Compression, FlushCompress, Status};

/// The largest window, as the peer's inflater expects of a gzip stream.
const WINDOW_BITS: u8 = 15;

/// The compression level. A real-time stream is many small batches, each ended by a sync
/// flush: level 1 (zlib's "quick" strategy) codes them with the fixed Huffman tables, where the
/// default level builds dynamic trees per batch and clears a 48 KiB symbol buffer at every
/// flush — most of the CPU of a gzip connection, for trees whose own size eats the gain on a
/// packet of a few dozen bytes.
const LEVEL: u32 = 1;

/// The compressed bytes kept between batches; a larger buffer is given back.
const KEEP_OUTPUT: usize = 64 << 10;

/// One direction's gzip stream.
pub(crate) struct Deflater {
    compress: Compress,
    /// The compressed bytes of the batch (or trailer) last made.
    output: Vec<u8>,
    finished: bool,
}

impl Deflater {
    pub(crate) fn new() -> Self {
        Deflater {
            compress: Compress::new_gzip(Compression::new(LEVEL), WINDOW_BITS),
            output: Vec::new(),
            finished: false,
        }
    }

    /// Compresses `plain` as the next batch of the stream, ended by a sync flush; returns the
    /// bytes to write (the gzip header comes with the first batch).
    pub(crate) fn batch(&mut self, plain: &[u8]) -> Result<&[u8], crate::Status> {
        self.reset_output();
        if self.finished {
            return Ok(&self.output);
        }
        let mut consumed = 0;
        loop {
            // Room for incompressible input (stored blocks) and the flush marker, so that one
            // call nearly always does it.
            self.output.reserve(plain.len() - consumed + 64);
            let before = self.compress.total_in();
            let spare_before = self.output.capacity() - self.output.len();
            self.deflate(&plain[consumed..], FlushCompress::Sync)?;
            consumed += (self.compress.total_in() - before) as usize;
            let produced = spare_before - (self.output.capacity() - self.output.len());
            // zlib's contract: the flush is complete once a call leaves output space unused.
            if consumed == plain.len() && produced < spare_before {
                return Ok(&self.output);
            }
        }
    }

    /// Ends the stream: the last block and the gzip trailer (CRC and length). Later batches
    /// are empty.
    pub(crate) fn finish(&mut self) -> Result<&[u8], crate::Status> {
        self.reset_output();
        while !self.finished {
            self.output.reserve(64);
            self.finished = self.deflate(&[], FlushCompress::Finish)? == Status::StreamEnd;
        }
        Ok(&self.output)
    }

    /// Deflate fails only on a misused stream, which would be our bug, not the peer's.
    fn deflate(&mut self, input: &[u8], flush: FlushCompress) -> Result<Status, crate::Status> {
        self.compress
            .compress_vec(input, &mut self.output, flush)
            .map_err(|e| crate::Status::internal(format!("gzip: {e}")))
    }

    fn reset_output(&mut self) {
        self.output.clear();
        if self.output.capacity() > KEEP_OUTPUT {
            self.output = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn inflate_available(wire: &[u8], want: usize) -> Vec<u8> {
        let mut decoder = flate2::read::GzDecoder::new(wire);
        let mut plain = vec![0; want];
        decoder.read_exact(&mut plain).unwrap();
        plain
    }

    #[test]
    fn every_batch_inflates_at_once_and_the_trailer_ends_the_stream() {
        let mut deflater = Deflater::new();
        let batches: [&[u8]; 3] = [b"first batch", &[0x5A; 5000], b""];
        let mut wire = Vec::new();
        let mut plain = Vec::new();
        for batch in batches {
            wire.extend_from_slice(deflater.batch(batch).unwrap());
            plain.extend_from_slice(batch);
            assert_eq!(inflate_available(&wire, plain.len()), plain);
        }
        wire.extend_from_slice(deflater.finish().unwrap());
        let mut whole = Vec::new();
        flate2::read::GzDecoder::new(&wire[..])
            .read_to_end(&mut whole)
            .unwrap();
        assert_eq!(whole, plain, "the trailer's CRC and length check out");
        assert!(
            deflater.batch(b"late").unwrap().is_empty(),
            "nothing after the end"
        );
    }

    #[test]
    fn incompressible_batches_larger_than_the_reserve_come_out_whole() {
        let mut deflater = Deflater::new();
        let mut x = 0x2545_f491_u32;
        let noise: Vec<u8> = (0..300_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        let wire = deflater.batch(&noise).unwrap().to_vec();
        assert_eq!(inflate_available(&wire, noise.len()), noise);
    }

    /// The level shows in the gzip header's XFL byte: 4 for the fastest, 0 for the default.
    #[test]
    fn the_stream_is_compressed_at_the_fastest_level() {
        let mut deflater = Deflater::new();
        let wire = deflater.batch(b"{\"room\":\"lobby\"}").unwrap();
        assert_eq!(&wire[..3], &[0x1f, 0x8b, 8], "a gzip member");
        assert_eq!(wire[8], 4, "XFL: compressed with the fastest level");
    }
}
