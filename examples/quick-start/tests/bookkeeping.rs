//! The rooms' bookkeeping stays flat however often one connection joins and exits: one close
//! hook per connection, not one per join.

use std::time::Duration;

use quick_start::{ExitRoomInput, JoinRoomInput, RoomServiceClient, Rooms, attach_room_events};
use stmp::{Client, Code};
use tokio::sync::mpsc;
use tokio::time::timeout;

mod common;
use common::{Event, Recorder, WAIT, next};

const CYCLES: usize = 200;

fn join(name: &str) -> JoinRoomInput {
    JoinRoomInput {
        name: name.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_exit_cycles_leave_no_bookkeeping() {
    let rooms = Rooms::new();
    let server = quick_start::server(rooms.clone());
    let addr = server.listen_tcp("127.0.0.1:0").await.unwrap();
    let url = format!("tcp://{addr}");
    let observer = Client::connect(&url).await.unwrap();
    let (tx, mut events) = mpsc::unbounded_channel();
    let _listening = attach_room_events(observer.router(), Recorder(tx));
    RoomServiceClient::new(observer.clone())
        .join_room(join("lobby"))
        .await
        .unwrap();

    let cycler = Client::connect(&url).await.unwrap();
    let service = RoomServiceClient::new(cycler.clone());
    let mut user = String::new();
    for cycle in 0..CYCLES {
        let room = timeout(WAIT, service.join_room(join("lobby")))
            .await
            .expect("JoinRoom timed out")
            .expect("JoinRoom failed");
        user = room.users[1].clone();
        assert_eq!(next(&mut events).await, Event::Join(user.clone()));
        timeout(
            WAIT,
            service.exit_room(ExitRoomInput {
                name: "lobby".into(),
            }),
        )
        .await
        .expect("ExitRoom timed out")
        .expect("ExitRoom failed");
        assert_eq!(next(&mut events).await, Event::Exit(user.clone()));
        assert_eq!(
            rooms.watched_connections(),
            2,
            "after {} join/exit cycles",
            cycle + 1
        );
    }
    assert_eq!(rooms.rooms(), ["lobby"]);
    assert_eq!(rooms.users("lobby").len(), 1);

    // The last join, then a disconnect: the observer hears it once, and the closed
    // connection is forgotten.
    service.join_room(join("lobby")).await.unwrap();
    assert_eq!(next(&mut events).await, Event::Join(user.clone()));
    cycler.close().await;
    assert_eq!(next(&mut events).await, Event::Exit(user));
    assert_eq!(rooms.watched_connections(), 1);
    assert_eq!(rooms.users("lobby").len(), 1);
    assert!(events.try_recv().is_err());

    observer.close().await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_names_and_counts_are_bounded() {
    let rooms = Rooms::new();
    let server = quick_start::server(rooms.clone());
    let addr = server.listen_tcp("127.0.0.1:0").await.unwrap();
    let client = Client::connect(&format!("tcp://{addr}")).await.unwrap();
    let service = RoomServiceClient::new(client.clone());

    let long = "x".repeat(quick_start::MAX_ROOM_NAME + 1);
    let refused = service.join_room(join(&long)).await.unwrap_err();
    assert_eq!(refused.code(), Code::BadRequest, "{refused}");
    let refused = service.join_room(join("")).await.unwrap_err();
    assert_eq!(refused.code(), Code::BadRequest, "{refused}");

    for n in 0..quick_start::MAX_ROOMS_PER_CONN {
        service.join_room(join(&format!("room-{n}"))).await.unwrap();
    }
    let refused = service.join_room(join("one-too-many")).await.unwrap_err();
    assert_eq!(refused.code(), Code::TooManyRequests, "{refused}");
    // Rejoining a room it is in is fine, and so is a new one after exiting one.
    service.join_room(join("room-0")).await.unwrap();
    service
        .exit_room(ExitRoomInput {
            name: "room-0".into(),
        })
        .await
        .unwrap();
    service.join_room(join("one-too-many")).await.unwrap();
    assert_eq!(rooms.rooms().len(), quick_start::MAX_ROOMS_PER_CONN);

    client.close().await;
    server.shutdown(Duration::from_secs(1)).await;
}
