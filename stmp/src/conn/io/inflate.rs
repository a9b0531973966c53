//! Bounds how far a gzip stream may inflate, so that a few kilobytes on the wire cannot make
//! the server decompress and decode gigabytes.
//!
//! The accounting is a pure [`InflationMeter`]; [`BoundedGzip`] is the thin `AsyncRead` that
//! feeds it the bytes consumed on the compressed side and produced on the plain side.

#[cfg(feature = "gzip")]
use std::io;
#[cfg(feature = "gzip")]
use std::pin::Pin;
#[cfg(feature = "gzip")]
use std::task::{Context, Poll, ready};

#[cfg(feature = "gzip")]
use async_compression::tokio::bufread::GzipDecoder;
#[cfg(feature = "gzip")]
use tokio::io::{AsyncBufRead, AsyncRead, ReadBuf};

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
    /// Inflated bytes still allowed; never above the burst.
    allowance: u64,
}

#[cfg_attr(not(feature = "gzip"), allow(dead_code))]
impl InflationMeter {
    pub(crate) fn new(limit: InflationLimit) -> Self {
        InflationMeter {
            limit,
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
                "the gzip stream inflates more than {}x its compressed size beyond a burst of \
                 {} bytes",
                self.limit.max_ratio, self.limit.burst
            ))),
        }
    }
}

/// Counts the compressed bytes the decoder consumes.
#[cfg(feature = "gzip")]
struct Counted<R> {
    inner: R,
    consumed: u64,
}

#[cfg(feature = "gzip")]
impl<R: AsyncRead + Unpin> AsyncRead for Counted<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        self.consumed += (buf.filled().len() - before) as u64;
        Poll::Ready(Ok(()))
    }
}

#[cfg(feature = "gzip")]
impl<R: AsyncBufRead + Unpin> AsyncBufRead for Counted<R> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        Pin::new(&mut self.get_mut().inner).poll_fill_buf(cx)
    }

    fn consume(mut self: Pin<&mut Self>, amt: usize) {
        self.consumed += amt as u64;
        Pin::new(&mut self.inner).consume(amt);
    }
}

/// A gzip decoder that fails with [`RequestEntityTooLarge`](crate::Code::RequestEntityTooLarge)
/// (carried in the `io::Error`) once the stream inflates past its [`InflationLimit`].
#[cfg(feature = "gzip")]
pub(crate) struct BoundedGzip<R> {
    decoder: GzipDecoder<Counted<R>>,
    meter: InflationMeter,
    /// Compressed bytes already recorded in the meter.
    recorded: u64,
}

#[cfg(feature = "gzip")]
impl<R: AsyncBufRead + Unpin> BoundedGzip<R> {
    pub(crate) fn new(compressed: R, limit: InflationLimit) -> Self {
        BoundedGzip {
            decoder: GzipDecoder::new(Counted {
                inner: compressed,
                consumed: 0,
            }),
            meter: InflationMeter::new(limit),
            recorded: 0,
        }
    }
}

#[cfg(feature = "gzip")]
impl<R: AsyncBufRead + Unpin> AsyncRead for BoundedGzip<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.decoder).poll_read(cx, buf))?;
        let inflated = (buf.filled().len() - before) as u64;
        let consumed = this.decoder.get_ref().consumed;
        let compressed = consumed - this.recorded;
        this.recorded = consumed;
        this.meter
            .record(compressed, inflated)
            .map_err(io::Error::other)?;
        Poll::Ready(Ok(()))
    }
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
        let mut meter = InflationMeter::new(LIMIT);
        meter.record(0, 100).unwrap();
        meter.record(10, 40).unwrap();
        let error = meter.record(0, 1).unwrap_err();
        assert_eq!(error.code(), Code::RequestEntityTooLarge);
        assert!(error.message().contains("4x"), "{error}");
    }

    #[test]
    fn compressed_bytes_refill_up_to_the_burst_only() {
        let mut meter = InflationMeter::new(LIMIT);
        // Incompressible input earns far more than the burst; only the burst is kept.
        meter.record(1_000, 0).unwrap();
        meter.record(0, 100).unwrap();
        assert!(meter.record(0, 1).is_err());
    }

    #[test]
    fn a_stream_within_the_ratio_runs_forever() {
        let mut meter = InflationMeter::new(LIMIT);
        for _ in 0..10_000 {
            meter.record(25, 100).unwrap();
        }
    }

    #[test]
    fn saturates_instead_of_overflowing() {
        let mut meter = InflationMeter::new(InflationLimit {
            max_ratio: u32::MAX,
            burst: usize::MAX,
        });
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
        let mut reader = BoundedGzip::new(std::io::Cursor::new(compressed), limit);
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

    /// Varied bytes that compress a little, as real payloads do.
    #[cfg(feature = "gzip")]
    fn fastrand_bytes(i: u32) -> [u8; 4] {
        let x = i.wrapping_mul(2_654_435_761);
        [b'a' + (x % 26) as u8, b'{', (x >> 8) as u8, b'"']
    }
}
