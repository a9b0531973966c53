//! The snapshot of `tests/protos/options.proto` compiled and run: the stmp options are
//! honoured, the serde support reads what other peers write, and the generated server, client,
//! listener and event functions work over a real connection. (`tests/snapshots.rs` checks the
//! snapshot is what the generator writes today.)

use std::time::Duration;

use stmp::codec::Codec;
use stmp::{Client, Context, Server, Status};
use tokio::sync::mpsc;
use tokio::time::timeout;

#[allow(dead_code)]
mod generated {
    include!("snapshots/options/options.include.rs");
}

use generated::echo::{Echo, EchoClient as EchoStub, EchoServer as EchoService};
use generated::lobby::{Lobby, LobbyClient, LobbyServer};
use generated::*;

#[test]
fn option_ids_make_the_actions() {
    // (stmp.service) = 0x12, (stmp.method) = 3 and 0xFF.
    assert_eq!(echo::PING.action, 0x1203);
    assert_eq!(echo::SHOUT.action, 0x12FF);
    assert_eq!(echo::PING.name, "options.Echo.Ping");
    // No (stmp.method): MurmurHash3 of the name, as without options.
    assert_eq!(
        echo::HASH.action,
        stmp::wire::action_id("options.Echo.Hash")
    );
    assert_eq!(echo::HASH.output, "google.protobuf.Empty");
    assert_eq!(alert_service::FIRE.action, 0x1301);
    assert_eq!(
        lobby::POKE.action,
        stmp::wire::action_id("options.Lobby.Poke")
    );
    assert_eq!(echo::METHODS, &[echo::PING, echo::SHOUT, echo::HASH]);
}

// The kinds: Echo is a service by (stmp.kind) although its name has no suffix; AlertService
// is events only by (stmp.kind) although its name ends in "Service"; Lobby is both.
#[allow(unused_imports)]
mod kinds {
    use super::generated::alert_service::{AlertServiceListener, attach_alert_service, fire};
    use super::generated::echo::{Echo, EchoClient, EchoServer};
    use super::generated::lobby::{
        Lobby, LobbyClient, LobbyListener, LobbyServer, attach_lobby, poke,
    };
    // Would not compile: there is no echo::EchoListener, no alert_service::AlertServiceServer.
}

#[test]
fn messages_named_like_generated_items_do_not_collide_with_them() {
    // The package's messages…
    let message = EchoServer {
        name: "a message".into(),
    };
    let _ = (EchoClient {}, LobbyListener {}, AlertServiceListener {});
    assert_eq!(message.name, "a message");
    // …and the service's items, in the service's module.
    let _server = echo::EchoServer::new(Echoer);
    fn is_listener<L: lobby::LobbyListener>() {}
    is_listener::<Poker>();
}

struct Echoer;

/// A ping with this text tells [`NOTIFIED`] it reached the server (sent as a typed notify).
const NOTIFIED_TEXT: &str = "sent as a notify";
static NOTIFIED: std::sync::LazyLock<tokio::sync::Notify> =
    std::sync::LazyLock::new(tokio::sync::Notify::new);

impl Echo for Echoer {
    async fn ping(&self, _ctx: Context, input: Ping) -> Result<Ping, Status> {
        if input.text == NOTIFIED_TEXT {
            NOTIFIED.notify_one();
        }
        Ok(input)
    }

    async fn shout(&self, _ctx: Context, mut input: Ping) -> Result<Ping, Status> {
        input.text = input.text.to_uppercase();
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

struct Alarm(mpsc::UnboundedSender<Ping>);

impl alert_service::AlertServiceListener for Alarm {
    async fn fire(&self, _ctx: Context, event: Ping) {
        let _ = self.0.send(event);
    }
}

fn sample() -> Ping {
    Ping {
        text: "hi".into(),
        sent_at: -9_007_199_254_740_993,
        color: Color::Green as i32,
        data: b"\x00\xffbytes".to_vec(),
        body: Some(ping::Body::BigId(u64::MAX)),
        counts: [("a".to_owned(), 3)].into(),
        maybe: Some(7),
        palette: vec![Color::Red as i32, Color::Green as i32],
        nested: Some(ping::Nested {
            color: Color::Red as i32,
        }),
        stamps: vec![1, -2],
        chunks: vec![b"\x00\xff".to_vec(), Vec::new(), b"abc".to_vec()],
        blob: Some(b"z".to_vec()),
    }
}

#[test]
fn json_uses_proto_names_numbers_and_base64() {
    let json: serde_json::Value =
        serde_json::from_slice(&Codec::JSON.encode(&sample()).unwrap()).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "text": "hi",
            "sent_at": -9_007_199_254_740_993i64,
            "color": 2,
            "data": "AP9ieXRlcw==",
            "big_id": u64::MAX,
            "counts": {"a": 3},
            "maybe": 7,
            "palette": [1, 2],
            "nested": {"color": 1},
            "stamps": [1, -2],
            "chunks": ["AP8=", "", "YWJj"],
            "blob": "eg==",
        })
    );
    for codec in [Codec::JSON, Codec::MSGPACK, Codec::PROTOBUF] {
        let back: Ping = codec.decode(&codec.encode(&sample()).unwrap()).unwrap();
        assert_eq!(back, sample(), "{codec:?}");
    }
}

#[test]
fn json_reads_camel_case_strings_and_names() {
    let ping: Ping = Codec::JSON
        .decode(
            br#"{"sentAt": "-9007199254740993", "color": "COLOR_GREEN", "bigId": "18446744073709551615",
                "maybe": "7", "palette": ["COLOR_RED", 2], "nested": {"color": "COLOR_RED"},
                "stamps": ["1", -2], "data": "AP9ieXRlcw", "text": "hi", "counts": {"a": 3},
                "chunks": ["AP8", null, "YWJj"], "blob": "eg"}"#,
        )
        .unwrap();
    assert_eq!(ping, sample());
    let note: Ping = Codec::JSON.decode(br#"{"note": "n"}"#).unwrap();
    assert_eq!(note.body, Some(ping::Body::Note("n".into())));
    let empty: Ping = Codec::JSON.decode(b"{}").unwrap();
    assert_eq!(empty, Ping::default());
    let nil: Ping = Codec::JSON.decode(br#"{"chunks": null}"#).unwrap();
    assert_eq!(nil, Ping::default());
    assert!(
        Codec::JSON
            .decode::<Ping>(br#"{"color": "COLOR_BLUE"}"#)
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generated_code_works_over_a_connection() {
    let server = Server::builder()
        .add_service(EchoService::new(Echoer))
        .build();
    assert!(server.router().serves(&echo::PING));
    assert!(server.router().serves(&echo::SHOUT));
    let addr = server.listen_tcp("127.0.0.1:0").await.unwrap();
    let client = Client::builder()
        .codec(Codec::JSON)
        .connect(&format!("tcp://{addr}"))
        .await
        .unwrap();
    let (tx, mut fired) = mpsc::unbounded_channel();
    let handle = alert_service::attach_alert_service(client.router(), Alarm(tx));

    let echo = EchoStub::new(client.clone());
    let work = async {
        assert_eq!(echo.ping(sample()).await.unwrap(), sample());
        assert_eq!(echo.shout(sample()).await.unwrap().text, "HI");
        let status = echo.hash(sample()).await.unwrap_err();
        assert_eq!(status.code(), stmp::Code::NotFound);
        // A typed notify: no answer, nothing made up.
        let notified = Ping {
            text: NOTIFIED_TEXT.into(),
            ..sample()
        };
        let (): () = echo.notify_ping(notified).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), NOTIFIED.notified())
            .await
            .expect("the notify reached the server's handler");

        // Server → client events, to everyone.
        let delivery = alert_service::fire(server.everyone(), &sample()).unwrap();
        assert_eq!(delivery.queued, 1);
        assert_eq!(fired.recv().await.unwrap(), sample());

        // And back through the server-side connection: the client is the callee.
        let conn = server.conns().to_vec().pop().unwrap();
        let delivery = alert_service::fire(&conn, &Ping::default()).unwrap();
        assert_eq!(delivery.encodings, 1);
        assert_eq!(fired.recv().await.unwrap(), Ping::default());
        let list = [conn.clone()];
        assert_eq!(alert_service::fire(&list, &sample()).unwrap().queued, 1);
        assert_eq!(fired.recv().await.unwrap(), sample());
        let set = stmp::ConnSet::new();
        set.insert(conn.clone());
        let left_out = stmp::Audience::from(&set).except(&conn);
        assert_eq!(alert_service::fire(left_out, &sample()).unwrap().queued, 0);

        // To a room (with and without the one member excluded), and to a user's devices.
        let rooms = server.rooms();
        rooms.join("lobby", &conn);
        let excluded = alert_service::fire(rooms.to("lobby").except(&conn), &sample()).unwrap();
        assert_eq!(excluded.queued, 0);
        let delivery = alert_service::fire(rooms.to("lobby"), &sample()).unwrap();
        assert_eq!(delivery.queued, 1);
        assert_eq!(fired.recv().await.unwrap(), sample());
        let users = server.users();
        users.bind("alice", &conn);
        let delivery = alert_service::fire(users.to("alice"), &Ping::default()).unwrap();
        assert_eq!(delivery.queued, 1);
        assert_eq!(fired.recv().await.unwrap(), Ping::default());
        assert_eq!(
            alert_service::fire(users.to("bob"), &sample())
                .unwrap()
                .queued,
            0
        );
    };
    timeout(Duration::from_secs(20), work)
        .await
        .expect("timed out");
    handle.detach();
    client.close().await;
    server.shutdown(Duration::from_secs(1)).await;
}

/// Lobby is both a service and events: the client serves it, the server calls it through the
/// client's connection, and events flow from the client to a listener on the server.
struct Poker(mpsc::UnboundedSender<String>);

impl Lobby for Poker {
    async fn poke(&self, _ctx: Context, mut input: Ping) -> Result<Ping, Status> {
        input.text = format!("poked {}", input.text);
        Ok(input)
    }
}

impl lobby::LobbyListener for Poker {
    async fn poke(&self, ctx: Context, event: Ping) {
        let from = ctx.conn().remote_addr().is_some();
        let _ = self.0.send(format!("{} {from}", event.text));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_and_events_go_both_ways() {
    let server = Server::builder().build();
    let (tx, mut heard) = mpsc::unbounded_channel();
    let handle = lobby::attach_lobby(server.router(), Poker(tx.clone()));
    let addr = server.listen_tcp("127.0.0.1:0").await.unwrap();
    let client = Client::builder()
        .add_service(LobbyServer::new(Poker(tx)))
        .connect(&format!("tcp://{addr}"))
        .await
        .unwrap();
    let work = async {
        // Server → client call, through the server side's Conn.
        let conn = loop {
            if let Some(conn) = server.conns().to_vec().pop() {
                break conn;
            }
            tokio::task::yield_now().await;
        };
        let lobby = LobbyClient::new(conn);
        let answer = lobby
            .poke(Ping {
                text: "you".into(),
                ..Ping::default()
            })
            .await
            .unwrap();
        assert_eq!(answer.text, "poked you");
        // Client → server event, heard by the listener attached to the server's router.
        let delivery = lobby::poke(
            &client.conn().unwrap(),
            &Ping {
                text: "hello".into(),
                ..Ping::default()
            },
        )
        .unwrap();
        assert_eq!(delivery.queued, 1);
        assert_eq!(heard.recv().await.unwrap(), "hello true");
    };
    timeout(Duration::from_secs(20), work)
        .await
        .expect("timed out");
    handle.detach();
    client.close().await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[test]
fn the_descriptor_set_describes_every_method_message() {
    let pool = prost_reflect::DescriptorPool::decode(FILE_DESCRIPTOR_SET).unwrap();
    for method in echo::METHODS
        .iter()
        .chain(alert_service::METHODS)
        .chain(lobby::METHODS)
    {
        for message in [method.input, method.output] {
            assert!(
                pool.get_message_by_name(message).is_some(),
                "{} names {message}, which the set lacks",
                method.name
            );
        }
    }
    let ping = pool.get_message_by_name("options.Ping").unwrap();
    // text, sent_at, color, data, note, big_id, counts, maybe, palette, nested, stamps, chunks,
    // blob.
    assert_eq!(ping.fields().count(), 13);
    // Only what the messages need: no source info, no option-only imports.
    assert!(pool.get_file_by_name("stmp/options.proto").is_none());
    assert!(
        pool.files()
            .all(|file| file.file_descriptor_proto().source_code_info.is_none())
    );
}
