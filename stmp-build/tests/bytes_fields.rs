//! `Builder::bytes`: the snapshot of `tests/protos/options.proto` generated with every `bytes`
//! field as `Bytes`, compiled and run. Protobuf decodes them without copying the payload, the
//! other codecs write what the `Vec<u8>` fields write, and the generated service works with
//! them over a connection.

use bytes::Bytes;
use stmp::codec::Codec;
use stmp::{Client, Context, Server, Status};

#[allow(dead_code)]
mod generated {
    include!("snapshots/options_bytes/options.include.rs");
}

use generated::echo::{Echo, EchoClient as EchoStub, EchoServer as EchoService};
use generated::*;

fn sample() -> Ping {
    Ping {
        text: "hi".into(),
        data: Bytes::from_static(b"\x00\xffbytes"),
        chunks: vec![
            Bytes::from_static(b"\x00\xff"),
            Bytes::new(),
            Bytes::from_static(b"abc"),
        ],
        blob: Some(Bytes::from_static(b"z")),
        ..Ping::default()
    }
}

/// Whether `part` lies inside `whole`'s memory.
fn shares(whole: &Bytes, part: &Bytes) -> bool {
    let range = whole.as_ptr_range();
    !part.is_empty() && range.contains(&part.as_ptr())
}

#[test]
fn protobuf_decodes_bytes_fields_in_the_payload_s_buffer() {
    let payload = Codec::PROTOBUF.encode(&sample()).unwrap();
    let ping: Ping = Codec::PROTOBUF.decode_bytes(&payload).unwrap();
    assert_eq!(ping, sample());
    assert!(shares(&payload, &ping.data), "data was copied");
    assert!(shares(&payload, &ping.chunks[0]), "a chunk was copied");
    assert!(shares(&payload, &ping.chunks[2]), "a chunk was copied");
    assert!(
        shares(&payload, ping.blob.as_ref().unwrap()),
        "blob was copied"
    );
}

#[test]
fn json_and_msgpack_write_them_as_vec_fields_are_written() {
    let json: serde_json::Value =
        serde_json::from_slice(&Codec::JSON.encode(&sample()).unwrap()).unwrap();
    assert_eq!(json["data"], "AP9ieXRlcw==");
    assert_eq!(json["chunks"], serde_json::json!(["AP8=", "", "YWJj"]));
    assert_eq!(json["blob"], "eg==");
    let read: Ping = Codec::JSON
        .decode(br#"{"text": "hi", "data": "AP9ieXRlcw", "chunks": ["AP8", null, "YWJj"], "blob": "eg"}"#)
        .unwrap();
    assert_eq!(read, sample());
    let nothing: Ping = Codec::JSON
        .decode(br#"{"chunks": null, "blob": null}"#)
        .unwrap();
    assert_eq!(nothing, Ping::default());
    for codec in [Codec::JSON, Codec::MSGPACK, Codec::PROTOBUF] {
        let back: Ping = codec.decode(&codec.encode(&sample()).unwrap()).unwrap();
        assert_eq!(back, sample(), "{codec:?}");
    }
}

struct Echoer;

impl Echo for Echoer {
    async fn ping(&self, _ctx: Context, input: Ping) -> Result<Ping, Status> {
        Ok(input)
    }

    async fn shout(&self, _ctx: Context, mut input: Ping) -> Result<Ping, Status> {
        // A slice of the received buffer, handed back without a copy.
        input.data = input.data.slice(..1);
        Ok(input)
    }

    async fn hash(
        &self,
        _ctx: Context,
        _input: Ping,
    ) -> Result<packages::google::protobuf::Empty, Status> {
        Err(Status::not_found("no hashes here"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generated_service_carries_them_over_a_connection() {
    let server = Server::builder()
        .add_service(EchoService::new(Echoer))
        .build();
    let addr = server.listen_tcp("127.0.0.1:0").await.unwrap();
    let work = async {
        for codec in [Codec::PROTOBUF, Codec::JSON] {
            let client = Client::builder()
                .codec(codec.clone())
                .connect(&format!("tcp://{addr}"))
                .await
                .unwrap();
            let echo = EchoStub::new(client.clone());
            assert_eq!(echo.ping(sample()).await.unwrap(), sample(), "{codec:?}");
            let large = Ping {
                data: Bytes::from(vec![7; 1 << 20]),
                ..sample()
            };
            assert_eq!(echo.ping(large.clone()).await.unwrap(), large, "{codec:?}");
            assert_eq!(echo.shout(sample()).await.unwrap().data, &b"\x00"[..]);
            client.close().await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), work)
        .await
        .expect("the calls finish");
    server.shutdown(std::time::Duration::from_secs(1)).await;
}
