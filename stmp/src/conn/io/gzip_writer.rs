//! The write side of a gzip stream, batch by batch: a pure function of the bytes given, with
//! no I/O, so the writer hands the socket one buffer per batch as it does without gzip.
//!
//! Each batch ends with a sync flush, so the peer can inflate every packet of it at once; the
//! stream goes on across batches (one gzip member per direction, its window shared by all).
//! The deflating is [`DeflateStream`]'s: the fixed Huffman codes zlib's fastest level uses
//! too. A real-time stream is many small batches, each ended by a sync flush, and dynamic
//! trees built per batch cost more than they save on a packet of a few dozen bytes.

use crc32fast::Hasher as Crc32;

use crate::deflater::DeflateStream;

/// A gzip member's header (RFC 1952): deflate, no flags, no time, XFL 4 (the fastest
/// compression), OS 255 (unknown).
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 4, 255];

/// The compressed bytes kept between batches; a larger buffer is given back.
const KEEP_OUTPUT: usize = 64 << 10;

/// One direction's gzip stream.
pub(crate) struct GzipWriter {
    stream: DeflateStream,
    /// The checksum and length (modulo 2³²) of everything sent, for the trailer.
    crc: Crc32,
    sent: u32,
    /// The compressed bytes of the batch (or trailer) last made.
    output: Vec<u8>,
    started: bool,
    finished: bool,
}

impl GzipWriter {
    pub(crate) fn new() -> Self {
        GzipWriter {
            stream: DeflateStream::new(),
            crc: Crc32::new(),
            sent: 0,
            output: Vec::new(),
            started: false,
            finished: false,
        }
    }

    /// Compresses `plain` as the next batch of the stream, ended by a sync flush; returns the
    /// bytes to write (the gzip header comes with the first batch).
    pub(crate) fn batch(&mut self, plain: &[u8]) -> &[u8] {
        self.reset_output();
        if !self.finished {
            self.start();
            self.crc.update(plain);
            // The trailer's ISIZE is the length modulo 2³² (RFC 1952).
            self.sent = self.sent.wrapping_add(plain.len() as u32);
            self.stream.batch(plain, &mut self.output);
        }
        &self.output
    }

    /// Ends the stream: the last block and the gzip trailer (CRC and length). Later batches
    /// are empty.
    pub(crate) fn finish(&mut self) -> &[u8] {
        self.reset_output();
        if !self.finished {
            self.start();
            self.stream.finish(&mut self.output);
            let crc = self.crc.clone().finalize();
            self.output.extend_from_slice(&crc.to_le_bytes());
            self.output.extend_from_slice(&self.sent.to_le_bytes());
            self.finished = true;
        }
        &self.output
    }

    fn start(&mut self) {
        if !std::mem::replace(&mut self.started, true) {
            self.output.extend_from_slice(&GZIP_HEADER);
        }
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
        let mut gzip = GzipWriter::new();
        let batches: [&[u8]; 3] = [b"first batch", &[0x5A; 5000], b""];
        let mut wire = Vec::new();
        let mut plain = Vec::new();
        for batch in batches {
            wire.extend_from_slice(gzip.batch(batch));
            plain.extend_from_slice(batch);
            assert_eq!(inflate_available(&wire, plain.len()), plain);
        }
        wire.extend_from_slice(gzip.finish());
        let mut whole = Vec::new();
        flate2::read::GzDecoder::new(&wire[..])
            .read_to_end(&mut whole)
            .unwrap();
        assert_eq!(whole, plain, "the trailer's CRC and length check out");
        assert!(gzip.batch(b"late").is_empty(), "nothing after the end");
    }

    #[test]
    fn incompressible_batches_larger_than_the_reserve_come_out_whole() {
        let mut gzip = GzipWriter::new();
        let mut x = 0x2545_f491_u32;
        let noise: Vec<u8> = (0..300_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        let wire = gzip.batch(&noise).to_vec();
        assert_eq!(inflate_available(&wire, noise.len()), noise);
    }

    /// The level shows in the gzip header's XFL byte: 4 for the fastest, 0 for the default.
    #[test]
    fn the_stream_is_compressed_at_the_fastest_level() {
        let mut gzip = GzipWriter::new();
        let wire = gzip.batch(b"{\"room\":\"lobby\"}");
        assert_eq!(&wire[..3], &[0x1f, 0x8b, 8], "a gzip member");
        assert_eq!(wire[8], 4, "XFL: compressed with the fastest level");
    }
}
