//! Wire-core throughput: a Request with a 32 B, 1 KiB and 64 KiB payload, encoded and decoded in
//! the byte-stream form (`PacketCodec`) and the message form (`Packet::decode_message`), and
//! decoded alone next to a memcpy of the same payload.
//!
//! Run with `cargo bench -p stmp --bench wire`. Throughput is in payload bytes.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use stmp::wire::{Action, Header, Packet, PacketCodec, Request};
use tokio_util::codec::Decoder;

const SIZES: [(usize, &str); 3] = [(32, "32B"), (1 << 10, "1KiB"), (64 << 10, "64KiB")];
const LIMIT: usize = stmp::wire::DEFAULT_MAX_PACKET_SIZE;

fn request(size: usize) -> Packet {
    let payload: Vec<u8> = (0..size).map(|i| i as u8).collect();
    Packet::Request(Request {
        mid: 0x0104,
        action: Action::Id(stmp::wire::action_id(
            "stmp.examples.quick_start.RoomService.JoinRoom",
        )),
        header: Header::new(),
        payload: Bytes::from(payload),
    })
}

fn payload_len(packet: &Packet) -> usize {
    match packet {
        Packet::Request(request) => request.payload.len(),
        _ => 0,
    }
}

fn encode_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode+decode");
    for (size, label) in SIZES {
        let packet = request(size);
        group.throughput(Throughput::Bytes(size as u64));

        group.bench_function(BenchmarkId::new("stream", label), |b| {
            let mut codec = PacketCodec::new();
            let mut buffer = BytesMut::with_capacity(packet.encoded_stream_len());
            b.iter(|| {
                packet.encode_stream(&mut buffer);
                let decoded = codec.decode(&mut buffer).unwrap().unwrap();
                assert_eq!(payload_len(&decoded), size);
                decoded
            });
        });

        group.bench_function(BenchmarkId::new("message", label), |b| {
            b.iter(|| {
                let mut buffer = BytesMut::with_capacity(packet.encoded_stream_len());
                packet.encode_message(&mut buffer);
                let decoded = Packet::decode_message(buffer.freeze(), LIMIT).unwrap();
                assert_eq!(payload_len(&decoded), size);
                decoded
            });
        });
    }
    group.finish();
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for (size, label) in SIZES {
        let packet = request(size);
        group.throughput(Throughput::Bytes(size as u64));

        let mut stream = BytesMut::new();
        packet.encode_stream(&mut stream);
        group.bench_function(BenchmarkId::new("stream", label), |b| {
            let mut codec = PacketCodec::new();
            // Each decode consumes its buffer, so every iteration gets a copy made outside the
            // measurement.
            b.iter_batched(
                || stream.clone(),
                |mut buffer| {
                    let decoded = codec.decode(&mut buffer).unwrap().unwrap();
                    assert_eq!(payload_len(&decoded), size);
                    (decoded, buffer)
                },
                BatchSize::SmallInput,
            );
        });

        let mut message = BytesMut::new();
        packet.encode_message(&mut message);
        let message = message.freeze();
        group.bench_function(BenchmarkId::new("message", label), |b| {
            b.iter(|| {
                let decoded = Packet::decode_message(black_box(message.clone()), LIMIT).unwrap();
                assert_eq!(payload_len(&decoded), size);
                decoded
            });
        });

        // The baseline: copying the payload into a fresh vector.
        let payload = vec![0xa5u8; size];
        group.bench_function(BenchmarkId::new("memcpy", label), |b| {
            b.iter(|| black_box(&payload[..]).to_vec());
        });
    }
    group.finish();
}

criterion_group!(benches, encode_decode, decode);
criterion_main!(benches);
