//! Bounds how far a gzip stream may inflate, so that a few kilobytes on the wire cannot make
//! the server decompress and decode gigabytes.
//!
//! The accounting is a pure [`InflationMeter`]; [`BoundedGzip`] is the thin `AsyncRead` that
//! feeds it the bytes consumed on the compressed side and produced on the plain side.
//!
//! The gzip member's header and trailer (RFC 1952) are read here, around a raw inflater, so
//! that the checksum is `crc32fast`'s: zlib-rs's own takes a byte at a time below 64 bytes,
//! and a stream of small packets is all small inputs.

#[cfg(feature = "gzip")]
use std::io;
#[cfg(feature = "gzip")]
use std::pin::Pin;
#[cfg(feature = "gzip")]
use std::task::{Context, Poll};

#[cfg(feature = "gzip")]
use bytes::{Buf, BytesMut};
#[cfg(feature = "gzip")]
use flate2::{Decompress, FlushDecompress};
#[cfg(feature = "gzip")]
use tokio::io::{AsyncRead, ReadBuf};

use crate::Status;

/// How far a gzip stream may inflate: over any stretch of the stream, the inflated bytes may
/// be at most `burst + max_ratio × the compressed bytes of that stretch`.
///
/// The burst absorbs a highly compressible packet or the start of the stream; the ratio bounds
/// what a peer gains by compressing (a stream of Pings inflates ~1000×).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct InflationLimit {
    pub(crate) max_ratio: u32,
    pub(crate) burst: usize,
}

impl Default for InflationLimit {
    fn default() -> Self {
        InflationLimit {
            max_ratio: 64,
            burst: 1 << 20,
        }
    }
}

/// A token bucket refilled by compressed bytes and drained by inflated ones.
#[derive(Debug)]
#[cfg_attr(not(feature = "gzip"), allow(dead_code))]
pub(crate) struct InflationMeter {
    limit: InflationLimit,
    /// What is inflated, as the error names it: "the gzip stream".
    what: &'static str,
    /// Inflated bytes still allowed; never above the burst.
    allowance: u64,
}

#[cfg_attr(not(feature = "gzip"), allow(dead_code))]
impl InflationMeter {
    pub(crate) fn new(limit: InflationLimit, what: &'static str) -> Self {
        InflationMeter {
            limit,
            what,
            allowance: limit.burst as u64,
        }
    }

    /// Records that `compressed` bytes were consumed to produce `inflated` bytes.
    pub(crate) fn record(&mut self, compressed: u64, inflated: u64) -> Result<(), Status> {
        let earned = compressed.saturating_mul(u64::from(self.limit.max_ratio));
        self.allowance = self
            .allowance
            .saturating_add(earned)
            .min(self.limit.burst as u64);
        match self.allowance.checked_sub(inflated) {
            Some(left) => {
                self.allowance = left;
                Ok(())
            }
            None => Err(Status::request_entity_too_large(format!(
                "{} inflates more than {}x its compressed size beyond a burst of {} bytes",
                self.what, self.limit.max_ratio, self.limit.burst
            ))),
        }
    }
}

/// How many compressed bytes are read from the transport at a time.
#[cfg(feature = "gzip")]
const READ_COMPRESSED: usize = 2 << 10;

/// The most inflated bytes one read produces.
#[cfg(feature = "gzip")]
const INFLATE_AT_ONCE: usize = 16 << 10;

/// Where a [`BoundedGzip`] is in its gzip member.
#[cfg(feature = "gzip")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Member {
    Header,
    Deflated,
    /// The CRC-32 and length of what was inflated.
    Trailer,
    /// Past the trailer: what follows is not inflated.
    Ended,
}

/// A gzip stream's inflated bytes, read from a transport that carries it, failing with
/// [`RequestEntityTooLarge`](crate::Code::RequestEntityTooLarge) (carried in the `io::Error`)
/// once the stream inflates past its [`InflationLimit`]. The compressed buffer is given back
/// whenever it is drained, so an idle connection holds none.
#[cfg(feature = "gzip")]
pub(crate) struct BoundedGzip<R> {
    transport: R,
    compressed: BytesMut,
    /// Raw deflate: the header and trailer around it are read here.
    inflater: Decompress,
    meter: InflationMeter,
    member: Member,
    /// The checksum of everything inflated, for the trailer.
    crc: crc32fast::Hasher,
}

#[cfg(feature = "gzip")]
impl<R: AsyncRead + Unpin> BoundedGzip<R> {
    /// `leftover` holds compressed bytes already read from the transport.
    pub(crate) fn new(transport: R, leftover: BytesMut, limit: InflationLimit) -> Self {
        BoundedGzip {
            transport,
            compressed: leftover,
            inflater: Decompress::new(false),
            meter: InflationMeter::new(limit, "the gzip stream"),
            member: Member::Header,
            crc: crc32fast::Hasher::new(),
        }
    }

    /// Takes the member's header off the buffered bytes; false while it is not all there.
    fn read_header(&mut self) -> io::Result<bool> {
        match super::gzip_header::header_len(&self.compressed).map_err(invalid)? {
            Some(len) => {
                self.compressed.advance(len);
                self.member = Member::Deflated;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Checks the trailer against what was inflated; false while it is not all there.
    fn read_trailer(&mut self) -> io::Result<bool> {
        if self.compressed.len() < 8 {
            return Ok(false);
        }
        let crc = self.compressed.get_u32_le();
        let len = self.compressed.get_u32_le();
        if crc != self.crc.clone().finalize() {
            return Err(invalid(
                "the gzip stream's checksum does not match its data",
            ));
        }
        // ISIZE is the length modulo 2³² (RFC 1952).
        if len != self.inflater.total_out() as u32 {
            return Err(invalid("the gzip stream's length does not match its data"));
        }
        self.member = Member::Ended;
        Ok(true)
    }

    /// Inflates what is buffered into `out`; returns the bytes produced.
    fn inflate(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let (in_before, out_before) = (self.inflater.total_in(), self.inflater.total_out());
        let status = self
            .inflater
            .decompress(&self.compressed, out, FlushDecompress::None)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let consumed = self.inflater.total_in() - in_before;
        let produced = self.inflater.total_out() - out_before;
        self.compressed.advance(consumed as usize);
        self.crc.update(&out[..produced as usize]);
        if status == flate2::Status::StreamEnd {
            self.member = Member::Trailer;
        }
        self.meter
            .record(consumed, produced)
            .map_err(io::Error::other)?;
        Ok(produced as usize)
    }
}

#[cfg(feature = "gzip")]
impl<R: AsyncRead + Unpin> AsyncRead for BoundedGzip<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            let progressed = match this.member {
                Member::Ended => return Poll::Ready(Ok(())),
                Member::Header => this.read_header()?,
                Member::Trailer => this.read_trailer()?,
                Member::Deflated if this.compressed.is_empty() => false,
                Member::Deflated => {
                    // Only what one call may fill is initialised (zeroed): the caller's buffer
                    // can be as large as the largest packet allowed.
                    let room = buf.remaining().min(INFLATE_AT_ONCE);
                    let produced = this.inflate(buf.initialize_unfilled_to(room))?;
                    buf.advance(produced);
                    if produced > 0 {
                        return Poll::Ready(Ok(()));
                    }
                    if this.member == Member::Deflated && !this.compressed.is_empty() {
                        // Input left and room in `buf`, yet nothing came out: a stuck stream.
                        return Poll::Ready(Err(invalid("the gzip stream makes no progress")));
                    }
                    this.member != Member::Deflated
                }
            };
            if progressed {
                continue;
            }
            if this.compressed.capacity() == 0 {
                this.compressed = BytesMut::with_capacity(READ_COMPRESSED);
            } else {
                this.compressed.reserve(READ_COMPRESSED);
            }
            let read = tokio_util::io::poll_read_buf(
                Pin::new(&mut this.transport),
                cx,
                &mut this.compressed,
            );
            let Poll::Ready(read) = read else {
                if this.compressed.is_empty() {
                    this.compressed = BytesMut::new();
                }
                return Poll::Pending;
            };
            match read {
                Ok(0) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the gzip stream ends without its trailer",
                    )));
                }
                Ok(_) => {}
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
    }
}

#[cfg(feature = "gzip")]
fn invalid(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

#[cfg(test)]
mod tests {
    #[cfg(feature = "gzip")]
    use std::io::Write as _;

    #[cfg(feature = "gzip")]
    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::Code;

    const LIMIT: InflationLimit = InflationLimit {
        max_ratio: 4,
        burst: 100,
    };

    #[test]
    fn the_burst_is_spent_once_then_the_ratio_holds() {
        let mut meter = InflationMeter::new(LIMIT, "the gzip stream");
        meter.record(0, 100).unwrap();
        meter.record(10, 40).unwrap();
        let error = meter.record(0, 1).unwrap_err();
        assert_eq!(error.code(), Code::RequestEntityTooLarge);
        assert!(error.message().contains("4x"), "{error}");
    }

    #[test]
    fn compressed_bytes_refill_up_to_the_burst_only() {
        let mut meter = InflationMeter::new(LIMIT, "the gzip stream");
        // Incompressible input earns far more than the burst; only the burst is kept.
        meter.record(1_000, 0).unwrap();
        meter.record(0, 100).unwrap();
        assert!(meter.record(0, 1).is_err());
    }

    #[test]
    fn a_stream_within_the_ratio_runs_forever() {
        let mut meter = InflationMeter::new(LIMIT, "the gzip stream");
        for _ in 0..10_000 {
            meter.record(25, 100).unwrap();
        }
    }

    #[test]
    fn saturates_instead_of_overflowing() {
        let limit = InflationLimit {
            max_ratio: u32::MAX,
            burst: usize::MAX,
        };
        let mut meter = InflationMeter::new(limit, "the gzip stream");
        meter.record(u64::MAX, 0).unwrap();
        meter.record(u64::MAX, u64::MAX).unwrap();
    }

    #[cfg(feature = "gzip")]
    fn gzip(plain: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(plain).unwrap();
        encoder.finish().unwrap()
    }

    #[cfg(feature = "gzip")]
    async fn inflate(compressed: Vec<u8>, limit: InflationLimit) -> (Vec<u8>, io::Result<()>) {
        let mut reader = BoundedGzip::new(&compressed[..], BytesMut::new(), limit);
        let mut plain = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match reader.read(&mut chunk).await {
                Ok(0) => return (plain, Ok(())),
                Ok(n) => plain.extend_from_slice(&chunk[..n]),
                Err(error) => return (plain, Err(error)),
            }
        }
    }

    #[cfg(feature = "gzip")]
    #[tokio::test]
    async fn a_bomb_stops_after_burst_plus_ratio_times_its_size() {
        let bomb = gzip(&vec![0x80; 64 << 20]);
        let limit = InflationLimit {
            max_ratio: 8,
            burst: 64 << 10,
        };
        let (plain, result) = inflate(bomb.clone(), limit).await;
        let error = result.unwrap_err();
        let status = Status::from(error);
        assert_eq!(status.code(), Code::RequestEntityTooLarge, "{status}");
        let bound = limit.burst + 8 * bomb.len() + 4096;
        assert!(
            plain.len() <= bound,
            "{} inflated, bound {bound}",
            plain.len()
        );
    }

    #[cfg(feature = "gzip")]
    #[tokio::test]
    async fn ordinary_data_inflates_whole() {
        let text: Vec<u8> = (0..200_000u32)
            .flat_map(|i| fastrand_bytes(i).into_iter())
            .collect();
        let (plain, result) = inflate(gzip(&text), InflationLimit::default()).await;
        result.unwrap();
        assert_eq!(plain, text);
    }

    #[cfg(feature = "gzip")]
    #[tokio::test]
    async fn bytes_read_before_start_the_stream_and_an_idle_reader_holds_no_buffer() {
        let compressed = gzip(b"hello, stmp");
        let (mut peer, ours) = tokio::io::duplex(1024);
        // The header only: taken whole, so nothing is left waiting.
        let leftover = BytesMut::from(&compressed[..10]);
        let mut reader = BoundedGzip::new(ours, leftover, InflationLimit::default());
        let mut chunk = [0u8; 64];
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let pending = Pin::new(&mut reader).poll_read(&mut cx, &mut ReadBuf::new(&mut chunk));
        assert!(pending.is_pending());
        assert_eq!(
            reader.compressed.capacity(),
            0,
            "drained and waiting: given back"
        );

        use tokio::io::AsyncWriteExt as _;
        peer.write_all(&compressed[10..]).await.unwrap();
        let mut plain = Vec::new();
        reader.read_to_end(&mut plain).await.unwrap();
        assert_eq!(plain, b"hello, stmp");
    }

    #[cfg(feature = "gzip")]
    #[tokio::test]
    async fn corrupt_or_truncated_streams_are_errors() {
        let mut corrupt = gzip(&[7; 1000]);
        corrupt[12] ^= 0xff;
        let (_, result) = inflate(corrupt, InflationLimit::default()).await;
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::InvalidData);

        let whole = gzip(&[7; 1000]);
        let (_, result) =
            inflate(whole[..whole.len() - 4].to_vec(), InflationLimit::default()).await;
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }

    #[cfg(feature = "gzip")]
    #[tokio::test]
    async fn a_trailer_that_does_not_match_the_data_is_refused() {
        let whole = gzip(b"hello, stmp");
        let (plain, result) = inflate(whole.clone(), InflationLimit::default()).await;
        result.unwrap();
        assert_eq!(plain, b"hello, stmp");
        let trailer = whole.len() - 8;
        for (at, what) in [(trailer, "checksum"), (trailer + 4, "length")] {
            let mut wrong = whole.clone();
            wrong[at] ^= 1;
            let (_, result) = inflate(wrong, InflationLimit::default()).await;
            let error = result.unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidData);
            assert!(error.to_string().contains(what), "{error}");
        }
    }

    #[cfg(feature = "gzip")]
    #[tokio::test]
    async fn a_member_that_comes_a_byte_at_a_time_inflates_whole() {
        let text: Vec<u8> = (0..3_000u32).flat_map(fastrand_bytes).collect();
        let mut encoder = flate2::GzBuilder::new()
            .filename("room.log")
            .write(Vec::new(), flate2::Compression::fast());
        encoder.write_all(&text).unwrap();
        let compressed = encoder.finish().unwrap();
        let (mut peer, ours) = tokio::io::duplex(1);
        let feeding = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt as _;
            for byte in compressed {
                peer.write_all(&[byte]).await.unwrap();
            }
        });
        let mut reader = BoundedGzip::new(ours, BytesMut::new(), InflationLimit::default());
        let mut plain = Vec::new();
        reader.read_to_end(&mut plain).await.unwrap();
        feeding.await.unwrap();
        assert_eq!(plain, text);
    }

    /// Varied bytes that compress a little, as real payloads do.
    #[cfg(feature = "gzip")]
    fn fastrand_bytes(i: u32) -> [u8; 4] {
        let x = i.wrapping_mul(2_654_435_761);
        [b'a' + (x % 26) as u8, b'{', (x >> 8) as u8, b'"']
    }
}
