//! Rooms and users: membership, cleanup on close, and sending to a room or a user.

mod common;

use common::*;
use stmp::{Client, Context, Rooms, Server, Users};
use tokio::sync::mpsc;

/// A server and `n` TCP clients, each listening for `USER_JOIN` into `heard` tagged with its
/// index; returns the server-side connections in client order.
async fn setup(
    n: usize,
) -> (
    Server,
    Vec<Client>,
    Vec<stmp::Conn>,
    mpsc::UnboundedReceiver<(usize, String)>,
) {
    let server = Server::builder().build();
    register(server.router());
    let addr = server.listen_tcp("127.0.0.1:0").await.unwrap();
    let (tx, heard) = mpsc::unbounded_channel();
    let mut clients = Vec::new();
    let mut conns = Vec::new();
    for index in 0..n {
        let client = tcp_client(addr).await;
        let tx = tx.clone();
        let _listener =
            client
                .router()
                .listen(&USER_JOIN, move |_ctx: Context, e: UserJoinEvent| {
                    let tx = tx.clone();
                    async move { tx.send((index, e.user)).unwrap() }
                });
        let local = client.conn().unwrap();
        // Find the server side of this client by the call's remote address.
        let room: RoomModel = within(client.call(&JOIN_ROOM, &JoinRoomInput::default()))
            .await
            .unwrap();
        let conn =
            within(async {
                loop {
                    if let Some(conn) = server.conns().to_vec().into_iter().find(|c| {
                        c.remote_addr().map(|a| a.to_string()) == Some(room.users[0].clone())
                    }) {
                        break conn;
                    }
                    tokio::task::yield_now().await;
                }
            })
            .await;
        drop(local);
        clients.push(client);
        conns.push(conn);
    }
    (server, clients, conns, heard)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_reach_exactly_their_members() {
    let (_server, clients, conns, mut heard) = setup(3).await;
    let rooms = Rooms::new();
    assert!(rooms.join("lobby", &conns[0]));
    assert!(!rooms.join("lobby", &conns[0]));
    rooms.join("lobby", &conns[1]);
    rooms.join("games", &conns[1]);
    rooms.join("games", &conns[2]);
    assert_eq!(rooms.list(), ["games", "lobby"]);
    assert_eq!(rooms.rooms_of(&conns[1]), ["games", "lobby"]);
    assert_eq!(rooms.members("lobby").len(), 2);

    let delivery = stmp::broadcast(
        rooms.to("lobby").except(&conns[0]),
        &USER_JOIN,
        &UserJoinEvent {
            user: "to lobby".into(),
        },
    )
    .unwrap();
    assert_eq!((delivery.queued, delivery.encodings), (1, 1));
    assert_eq!(within(heard.recv()).await.unwrap(), (1, "to lobby".into()));

    stmp::broadcast(
        rooms.to("games"),
        &USER_JOIN,
        &UserJoinEvent {
            user: "to games".into(),
        },
    )
    .unwrap();
    let mut got = vec![
        within(heard.recv()).await.unwrap(),
        within(heard.recv()).await.unwrap(),
    ];
    got.sort();
    assert_eq!(got, [(1, "to games".into()), (2, "to games".into())]);

    // Leaving stops the messages; an empty room disappears.
    assert!(rooms.leave("lobby", &conns[1]));
    assert!(!rooms.leave("lobby", &conns[1]));
    stmp::broadcast(
        rooms.to("lobby"),
        &USER_JOIN,
        &UserJoinEvent {
            user: "after leave".into(),
        },
    )
    .unwrap();
    assert_eq!(
        within(heard.recv()).await.unwrap(),
        (0, "after leave".into())
    );
    rooms.leave("lobby", &conns[0]);
    assert_eq!(rooms.list(), ["games"]);

    // A disconnected client leaves its rooms by itself.
    within(clients[2].close()).await;
    until(|| rooms.members("games").len() == 1).await;
    assert!(rooms.rooms_of(&conns[2]).is_empty());
    within(clients[1].close()).await;
    until(|| rooms.list().is_empty()).await;
    assert!(heard.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_reach_every_device() {
    let (_server, clients, conns, mut heard) = setup(3).await;
    let users = Users::new();
    users.bind("alice", &conns[0]);
    users.bind("alice", &conns[1]);
    users.bind("bob", &conns[2]);
    assert_eq!(users.online(), ["alice", "bob"]);
    assert_eq!(users.user_of(&conns[1]).as_deref(), Some("alice"));
    let delivery = stmp::broadcast(
        users.to("alice"),
        &USER_JOIN,
        &UserJoinEvent { user: "dm".into() },
    )
    .unwrap();
    assert_eq!(delivery.queued, 2);
    let mut got = vec![
        within(heard.recv()).await.unwrap(),
        within(heard.recv()).await.unwrap(),
    ];
    got.sort();
    assert_eq!(got, [(0, "dm".into()), (1, "dm".into())]);
    // Rebinding moves a connection; closing forgets it.
    users.bind("bob", &conns[1]);
    assert_eq!(users.conns("alice").len(), 1);
    assert_eq!(users.conns("bob").len(), 2);
    within(clients[0].close()).await;
    until(|| !users.is_online("alice")).await;
    assert_eq!(users.online(), ["bob"]);
    assert_eq!(users.unbind(&conns[2]).as_deref(), Some("bob"));
    assert!(heard.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_joins_and_leaves_stay_consistent() {
    let (_server, _clients, conns, _heard) = setup(4).await;
    let rooms = Rooms::new();
    let tasks = (0..8).map(|worker| {
        let rooms = rooms.clone();
        let conns = conns.clone();
        tokio::spawn(async move {
            for round in 0..2_000 {
                let room = format!("room-{}", (worker * 31 + round) % 64);
                let conn = &conns[(worker + round) % conns.len()];
                rooms.join(&room, conn);
                if round % 2 == 0 {
                    rooms.leave(&room, conn);
                }
            }
        })
    });
    for task in tasks {
        within(task).await.unwrap();
    }
    // Every membership seen from the room side is seen from the connection side, and back.
    for room in rooms.list() {
        let members = rooms.members(&room);
        assert!(!members.is_empty());
        for conn in members {
            assert!(rooms.rooms_of(&conn).contains(&room));
        }
    }
    for conn in &conns {
        for room in rooms.rooms_of(conn) {
            assert!(rooms.contains(&room, conn));
        }
    }
}
