//! An event published from descriptors reaches each codec exactly as the generated type of
//! its message would have been encoded: the generated type decodes it back to the same value.

use stmp::codec::Codec;
use stmp_http::Events;

#[allow(dead_code, clippy::all)]
mod generated {
    include!("../../stmp-build/tests/snapshots/options/options.include.rs");
}

use generated::*;

/// A ping with every kind of field the codecs treat specially.
fn sample() -> Ping {
    Ping {
        text: "héllo \"quoted\"".into(),
        sent_at: i64::MIN + 7,
        color: Color::Green as i32,
        data: vec![0, 159, 255, 10],
        body: Some(ping::Body::BigId(u64::MAX - 3)),
        counts: [("a".to_owned(), -5), ("b".to_owned(), i64::MAX)].into(),
        maybe: Some(0),
        palette: vec![Color::Red as i32, Color::Green as i32],
        nested: Some(ping::Nested {
            color: Color::Red as i32,
        }),
        stamps: vec![1, -1, 1 << 60],
        chunks: vec![vec![0, 255], Vec::new(), b"abc".to_vec()],
        blob: Some(vec![1, 2, 3]),
    }
}

fn events() -> Events {
    Events::new()
        .with(FILE_DESCRIPTOR_SET, echo::METHODS)
        .unwrap()
}

#[test]
fn protobuf_in_every_codec_out_decodes_to_the_same_message() {
    let ping = sample();
    let protobuf = Codec::PROTOBUF.encode(&ping).unwrap();
    let event = events()
        .parse("options.Echo.Ping", "application/protobuf", &protobuf)
        .unwrap();
    for codec in [Codec::PROTOBUF, Codec::JSON, Codec::MSGPACK] {
        let payload = event.encode(&codec).unwrap();
        let back: Ping = codec
            .decode(&payload)
            .unwrap_or_else(|e| panic!("{codec:?}: {e}"));
        assert_eq!(back, ping, "{codec:?}");
    }
    // The very JSON the generated type writes (names, numbers, base64), not merely JSON it
    // reads back: clients of other languages see the same either way.
    let json: serde_json::Value =
        serde_json::from_slice(&event.encode(&Codec::JSON).unwrap()).unwrap();
    let expected: serde_json::Value =
        serde_json::from_slice(&Codec::JSON.encode(&ping).unwrap()).unwrap();
    assert_eq!(json, expected);
}

#[test]
fn json_in_reads_what_the_json_codec_writes() {
    let ping = sample();
    let json = Codec::JSON.encode(&ping).unwrap();
    let event = events()
        .parse(
            "options.Echo.Ping",
            "application/json; charset=utf-8",
            &json,
        )
        .unwrap();
    let back: Ping = Codec::PROTOBUF
        .decode(&event.encode(&Codec::PROTOBUF).unwrap())
        .unwrap();
    assert_eq!(back, ping);
}

#[test]
fn events_not_in_the_descriptors_are_refused() {
    const STRAY: stmp::Method =
        stmp::Method::new("x.Events.Stray", "x.Missing", "google.protobuf.Empty");
    let error = Events::new()
        .with(FILE_DESCRIPTOR_SET, &[STRAY])
        .unwrap_err();
    assert_eq!(error.code(), stmp::Code::BadRequest);
    assert!(error.message().contains("x.Missing"), "{error}");
}

#[test]
fn descriptor_sets_that_share_imports_combine() {
    // Both import google/protobuf/empty.proto.
    let events = events()
        .with(
            quick_start::FILE_DESCRIPTOR_SET,
            quick_start::room_events::METHODS,
        )
        .unwrap();
    assert!(events.method("options.Echo.Ping").is_some());
    let event = events
        .parse(
            "stmp.examples.quick_start.RoomEvents.UserJoin",
            "application/json",
            br#"{"user": "x"}"#,
        )
        .unwrap();
    assert_eq!(&event.encode(&Codec::PROTOBUF).unwrap()[..], b"\x0a\x01x");
}
