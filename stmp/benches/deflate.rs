//! stmp's deflater against zlib-rs's level 1 (through flate2), on chat messages as JSON, 64
//! different ones in turn (one message deflated over and over trains the branch predictor and
//! flatters both):
//!
//! - `message`: each message on its own from an empty window, as permessage-deflate without
//!   context takeover sends it (zlib-rs: a stream reset before each one);
//! - `stream`: 1 KiB batches of one stream, each ended by a sync flush, as a gzip connection
//!   sends them.
//!
//! Run with `cargo bench -p stmp --bench deflate`. Throughput is in plain bytes; each group
//! also prints the bytes out per message, ours and zlib-rs's, once.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use flate2::{Compress, Compression, FlushCompress};

// The deflater is private to the crate; the benchmark compiles its source as a module of its
// own rather than widen the public API for it.
#[allow(dead_code, unused_imports)]
#[path = "../src/deflater/mod.rs"]
mod deflater;

const SIZES: [(usize, &str); 4] = [
    (256, "256B"),
    (1 << 10, "1KiB"),
    (4 << 10, "4KiB"),
    (64 << 10, "64KiB"),
];

/// `count` different chat messages of about `len` bytes each.
fn messages(len: usize, count: usize) -> Vec<Vec<u8>> {
    const WORDS: [&str; 16] = [
        "hello", "room", "lobby", "see", "you", "at", "the", "meeting", "tomorrow", "ok", "thanks",
        "who", "is", "joining", "today", "ready",
    ];
    let mut rng = fastrand::Rng::with_seed(1951);
    (0..count)
        .map(|_| {
            let mut text = String::with_capacity(len + 128);
            while text.len() < len {
                text.push_str(&format!(
                    "{{\"id\":{},\"room\":\"room-{}\",\"user\":\"user{}\",\"text\":\"",
                    rng.u32(100_000_000..1_000_000_000),
                    rng.u8(..8),
                    rng.u16(..500)
                ));
                for word in 0..rng.usize(3..12) {
                    if word > 0 {
                        text.push(' ');
                    }
                    text.push_str(WORDS[rng.usize(..WORDS.len())]);
                }
                text.push_str("\"},");
            }
            let mut bytes = text.into_bytes();
            bytes.truncate(len);
            bytes
        })
        .collect()
}

fn zlib_deflate(zlib: &mut Compress, plain: &[u8], out: &mut Vec<u8>) {
    out.clear();
    zlib.compress_vec(plain, out, FlushCompress::Sync)
        .expect("deflate");
}

fn message(c: &mut Criterion) {
    let mut group = c.benchmark_group("message");
    for (size, label) in SIZES {
        let inputs = messages(size, 64);
        group.throughput(Throughput::Bytes(size as u64));
        let mut dst = BytesMut::with_capacity(size * 2);
        let mut zlib = Compress::new(Compression::fast(), false);
        let mut out = Vec::with_capacity(size * 2);
        deflater::deflate_message(&inputs[0], &mut dst);
        zlib_deflate(&mut zlib, &inputs[0], &mut out);
        eprintln!(
            "message {label}: {} B out, zlib-rs {} B",
            dst.len(),
            out.len() - 4
        );
        group.bench_function(BenchmarkId::new("stmp", label), |b| {
            let mut turn = 0;
            b.iter(|| {
                turn = (turn + 1) % inputs.len();
                dst.clear();
                deflater::deflate_message(black_box(&inputs[turn]), &mut dst);
                black_box(dst.len())
            })
        });
        group.bench_function(BenchmarkId::new("zlib-rs", label), |b| {
            let mut turn = 0;
            b.iter(|| {
                turn = (turn + 1) % inputs.len();
                zlib.reset();
                zlib_deflate(&mut zlib, black_box(&inputs[turn]), &mut out);
                black_box(out.len())
            })
        });
    }
    group.finish();
}

fn stream(c: &mut Criterion) {
    let mut group = c.benchmark_group("stream");
    let batches = messages(1 << 10, 512);
    group.throughput(Throughput::Bytes(1 << 10));
    let mut ours = deflater::DeflateStream::new();
    let mut zlib = Compress::new(Compression::fast(), false);
    let mut out = Vec::with_capacity(4 << 10);
    let (mut ours_out, mut zlib_out) = (0, 0);
    for batch in &batches {
        out.clear();
        ours.batch(batch, &mut out);
        ours_out += out.len();
        zlib_deflate(&mut zlib, batch, &mut out);
        zlib_out += out.len();
    }
    eprintln!(
        "stream 1KiB batches: {} B out per batch, zlib-rs {} B",
        ours_out / batches.len(),
        zlib_out / batches.len()
    );
    group.bench_function(BenchmarkId::new("stmp", "1KiB"), |b| {
        let mut turn = 0;
        b.iter(|| {
            turn = (turn + 1) % batches.len();
            out.clear();
            ours.batch(black_box(&batches[turn]), &mut out);
            black_box(out.len())
        })
    });
    group.bench_function(BenchmarkId::new("zlib-rs", "1KiB"), |b| {
        let mut turn = 0;
        b.iter(|| {
            turn = (turn + 1) % batches.len();
            zlib_deflate(&mut zlib, black_box(&batches[turn]), &mut out);
            black_box(out.len())
        })
    });
    group.finish();
}

criterion_group!(benches, message, stream);
criterion_main!(benches);
