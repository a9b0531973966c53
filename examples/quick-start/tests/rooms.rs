//! The quick start end to end: a server and clients in one process, over TCP and over
//! WebSocket, through the generated service, client, listener and broadcaster.

use std::time::Duration;

use quick_start::{
    Empty, ExitRoomInput, JoinRoomInput, RoomServiceClient, Rooms, WS_PATH, attach_room_events,
    room_events, room_service,
};
use stmp::{Client, Codec, PacketFormat};
use tokio::sync::mpsc;
use tokio::time::timeout;

mod common;
use common::{Event, Recorder, WAIT, next};

async fn join(client: &Client, room: &str) -> quick_start::RoomModel {
    let rooms = RoomServiceClient::new(client.clone());
    timeout(
        WAIT,
        rooms.join_room(JoinRoomInput {
            name: room.to_owned(),
        }),
    )
    .await
    .expect("JoinRoom timed out")
    .expect("JoinRoom failed")
}

/// Both clients join; the first sees the second's UserJoin, then its UserExit (when it leaves
/// the room), then a third user's join and exit by disconnect.
async fn two_clients_see_each_other(first: Client, second: Client, third: Client, rooms: Rooms) {
    let (tx, mut events) = mpsc::unbounded_channel();
    let listening = attach_room_events(first.router(), Recorder(tx));
    let (second_tx, mut second_events) = mpsc::unbounded_channel();
    let _second_listening = attach_room_events(second.router(), Recorder(second_tx));

    let room = join(&first, "lobby").await;
    assert_eq!(room.name, "lobby");
    assert_eq!(room.users.len(), 1);
    let first_user = room.users[0].clone();

    let room = join(&second, "lobby").await;
    assert_eq!(room.users.len(), 2);
    assert_eq!(room.users[0], first_user);
    let second_user = room.users[1].clone();
    assert_ne!(second_user, first_user);
    assert_eq!(
        rooms.users("lobby"),
        vec![first_user.clone(), second_user.clone()]
    );

    assert_eq!(next(&mut events).await, Event::Join(second_user.clone()));

    // Joining twice changes nothing and tells nobody.
    assert_eq!(join(&second, "lobby").await.users.len(), 2);

    let left: Empty = timeout(
        WAIT,
        RoomServiceClient::new(second.clone()).exit_room(ExitRoomInput {
            name: "lobby".into(),
        }),
    )
    .await
    .expect("ExitRoom timed out")
    .expect("ExitRoom failed");
    assert_eq!(left, Empty {});
    assert_eq!(next(&mut events).await, Event::Exit(second_user.clone()));
    assert_eq!(rooms.users("lobby"), vec![first_user.clone()]);

    // A user who disconnects leaves too.
    let room = join(&third, "lobby").await;
    let third_user = room.users[1].clone();
    assert_eq!(next(&mut events).await, Event::Join(third_user.clone()));
    third.close().await;
    assert_eq!(next(&mut events).await, Event::Exit(third_user));

    // After detaching, the first recorder hears nothing more. Listeners of one event run in
    // the order they were attached, so once a newer one has the event, an older one still
    // attached would have it too.
    listening.detach();
    let (tx, mut later) = mpsc::unbounded_channel();
    let _listening = attach_room_events(first.router(), Recorder(tx));
    join(&second, "lobby").await;
    assert_eq!(next(&mut later).await, Event::Join(second_user.clone()));
    assert!(events.try_recv().is_err());

    // The first user leaves: the second hears it, and nothing before it (never its own join or
    // exit; the events of one connection arrive in order).
    RoomServiceClient::new(first.clone())
        .exit_room(ExitRoomInput {
            name: "lobby".into(),
        })
        .await
        .unwrap();
    assert_eq!(next(&mut second_events).await, Event::Exit(first_user));
    assert_eq!(rooms.users("lobby"), vec![second_user]);

    first.close().await;
    second.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tcp() {
    let rooms = Rooms::new();
    let server = quick_start::server(rooms.clone());
    let addr = server.listen_tcp("127.0.0.1:0").await.unwrap();
    let url = format!("tcp://{addr}");
    let first = Client::connect(&url).await.unwrap();
    let second = Client::connect(&url).await.unwrap();
    let third = Client::connect(&url).await.unwrap();
    timeout(
        Duration::from_secs(30),
        two_clients_see_each_other(first, second, third, rooms),
    )
    .await
    .expect("scenario timed out");
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_websocket_with_json_and_msgpack() {
    let rooms = Rooms::new();
    let server = quick_start::server(rooms.clone());
    let addr = server.listen_ws("127.0.0.1:0", WS_PATH).await.unwrap();
    let url = format!("ws://{addr}{WS_PATH}");
    // Three codecs in one room: the events are serialised once per content type.
    let first = Client::builder()
        .packet_format(PacketFormat::Text)
        .codec(Codec::JSON)
        .connect(&url)
        .await
        .unwrap();
    let second = Client::builder()
        .codec(Codec::MSGPACK)
        .connect(&url)
        .await
        .unwrap();
    let third = Client::connect(&url).await.unwrap();
    assert_eq!(first.conn().unwrap().codec(), &Codec::JSON);
    assert_eq!(second.conn().unwrap().codec(), &Codec::MSGPACK);
    timeout(
        Duration::from_secs(30),
        two_clients_see_each_other(first, second, third, rooms),
    )
    .await
    .expect("scenario timed out");
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_quic() {
    let rooms = Rooms::new();
    let server = quick_start::server(rooms.clone());
    let (cert, tls) = quick_start::self_signed_tls().unwrap();
    let addr = server.listen_quic("127.0.0.1:0", tls).await.unwrap();
    let url = format!("quic://localhost:{}", addr.port());
    let trust = stmp::tls::client_config(cert.as_bytes()).unwrap();
    let connect = || Client::builder().tls(trust.clone()).connect(&url);
    let first = connect().await.unwrap();
    let second = connect().await.unwrap();
    let third = connect().await.unwrap();
    timeout(
        Duration::from_secs(30),
        two_clients_see_each_other(first, second, third, rooms),
    )
    .await
    .expect("scenario timed out");
    server.shutdown(Duration::from_secs(1)).await;
}

#[test]
fn the_method_table_has_the_reference_actions() {
    assert_eq!(room_service::JOIN_ROOM.action, 0x033648F7);
    assert_eq!(room_service::EXIT_ROOM.action, 0xA7FFD932);
    assert_eq!(room_events::USER_JOIN.action, 0x999B2807);
    assert_eq!(room_events::USER_EXIT.action, 0x827247A2);
    assert_eq!(
        room_service::JOIN_ROOM.name,
        "stmp.examples.quick_start.RoomService.JoinRoom"
    );
    assert_eq!(
        room_service::JOIN_ROOM.input,
        "stmp.examples.quick_start.JoinRoomInput"
    );
    assert_eq!(room_service::EXIT_ROOM.output, "google.protobuf.Empty");
    assert_eq!(
        room_service::METHODS,
        &[room_service::JOIN_ROOM, room_service::EXIT_ROOM]
    );
    assert_eq!(
        room_events::METHODS,
        &[room_events::USER_JOIN, room_events::USER_EXIT]
    );
}

#[test]
fn messages_speak_json_like_stmp_go() {
    use stmp::codec::Codec;
    let room = quick_start::RoomModel {
        name: "lobby".into(),
        users: vec!["127.0.0.1:40001".into()],
    };
    let json = Codec::JSON.encode(&room).unwrap();
    assert_eq!(
        &json[..],
        br#"{"name":"lobby","users":["127.0.0.1:40001"]}"#
    );
    // Go omits empty fields; missing fields take their default.
    let partial: quick_start::RoomModel = Codec::JSON.decode(br#"{"name":"x"}"#).unwrap();
    assert_eq!(partial.users, Vec::<String>::new());
    let empty: Empty = Codec::JSON.decode(b"{}").unwrap();
    assert_eq!(empty, Empty {});
    // The protobuf bytes of the reference vectors (T2).
    let input = JoinRoomInput {
        name: "golden".into(),
    };
    assert_eq!(
        &Codec::PROTOBUF.encode(&input).unwrap()[..],
        b"\x0a\x06golden"
    );
}
