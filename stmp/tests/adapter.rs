//! The adapter seam between two in-process servers: a test adapter joins two nodes with a
//! channel, shipping broadcasts and presence questions as bytes, and the tests check that a
//! room broadcast, a user send, everyone, presence and the except-list reach across.

mod common;

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use stmp::adapter::{
    Adapter, Answer, BoxFuture, Broadcast, ConnRef, Membership, Node, NodeId, Query, Target,
};
use stmp::codec::Codec;
use stmp::{Audience, Client, Context, Delivery, Server, Status};
use tokio::sync::{mpsc, oneshot};

/// What one node sends the other.
enum Wire {
    Broadcast(Bytes),
    Query(Bytes, oneshot::Sender<Bytes>),
}

/// One end of a two-node "cluster": delivers here and ships everything to the peer.
struct Pair {
    peer: mpsc::UnboundedSender<Wire>,
    inbox: Mutex<Option<mpsc::UnboundedReceiver<Wire>>>,
    changes: Arc<Mutex<Vec<String>>>,
}

/// Two adapters wired to each other, and the membership changes each one heard.
fn pair() -> (Pair, Pair) {
    let (to_b, from_a) = mpsc::unbounded_channel();
    let (to_a, from_b) = mpsc::unbounded_channel();
    let a = Pair {
        peer: to_b,
        inbox: Mutex::new(Some(from_b)),
        changes: Arc::default(),
    };
    let b = Pair {
        peer: to_a,
        inbox: Mutex::new(Some(from_a)),
        changes: Arc::default(),
    };
    (a, b)
}

impl Adapter for Pair {
    fn attach(&self, node: Weak<Node>) {
        let mut inbox = self.inbox.lock().unwrap().take().expect("attached once");
        tokio::spawn(async move {
            while let Some(message) = inbox.recv().await {
                let Some(node) = node.upgrade() else { break };
                match message {
                    Wire::Broadcast(bytes) => {
                        let mut broadcast =
                            Broadcast::from_bytes(bytes).expect("a valid broadcast");
                        node.deliver(&mut broadcast).expect("delivered");
                    }
                    Wire::Query(bytes, reply) => {
                        let query = Query::from_bytes(bytes).expect("a valid query");
                        let _ = reply.send(node.answer(&query).to_bytes());
                    }
                }
            }
        });
    }

    fn broadcast(&self, node: &Node, broadcast: &mut Broadcast<'_>) -> Result<Delivery, Status> {
        let delivery = node.deliver(broadcast)?;
        let bytes = broadcast.to_bytes(node.codecs())?;
        let _ = self.peer.send(Wire::Broadcast(bytes));
        Ok(delivery)
    }

    fn membership(&self, _node: &Node, change: Membership<'_>) {
        self.changes.lock().unwrap().push(format!("{change:?}"));
    }

    fn query(
        &self,
        node: &Node,
        query: Query,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Answer, Status>> {
        let mut answer = node.answer(&query);
        let (reply, replied) = oneshot::channel();
        let _ = self.peer.send(Wire::Query(query.to_bytes(), reply));
        Box::pin(async move {
            if let Ok(Ok(bytes)) = tokio::time::timeout(timeout, replied).await {
                answer.merge(Answer::from_bytes(bytes)?)?;
            }
            Ok(answer)
        })
    }
}

/// A server on `adapter` whose `JOIN_ROOM` takes `room/user`: joins the room, binds the
/// user, and answers with the connection's id.
async fn node(adapter: Pair) -> (Server, String, Arc<Mutex<Vec<String>>>) {
    let changes = adapter.changes.clone();
    let builder = Server::builder().adapter(adapter);
    let (rooms, users) = (builder.rooms(), builder.users());
    let server = builder.build();
    server
        .router()
        .route(&JOIN_ROOM, move |ctx: Context, input: JoinRoomInput| {
            let (rooms, users) = (rooms.clone(), users.clone());
            async move {
                let (room, user) = input.name.split_once('/').unwrap();
                rooms.join(room, ctx.conn());
                users.bind(user, ctx.conn());
                Ok::<_, Status>(RoomModel {
                    name: room.into(),
                    users: vec![ctx.conn().id().to_string()],
                })
            }
        });
    let addr = server.listen_tcp("127.0.0.1:0").await.unwrap();
    (server, format!("tcp://{addr}"), changes)
}

/// A client in `room` as `user`, its events, and how the cluster names its connection.
struct Member {
    client: Client,
    events: mpsc::UnboundedReceiver<String>,
    conn: ConnRef,
}

async fn member(url: &str, node: &Server, codec: Codec, room: &str, user: &str) -> Member {
    let client = within(Client::builder().no_reconnect().codec(codec).connect(url))
        .await
        .unwrap();
    let (tx, events) = mpsc::unbounded_channel();
    let _listener = client
        .router()
        .listen(&USER_JOIN, move |_ctx: Context, e: UserJoinEvent| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(e.user);
            }
        });
    let joined: RoomModel = within(client.call(
        &JOIN_ROOM,
        &JoinRoomInput {
            name: format!("{room}/{user}"),
        },
    ))
    .await
    .unwrap();
    let conn = ConnRef {
        node: node.node().id(),
        id: joined.users[0].parse().unwrap(),
    };
    Member {
        client,
        events,
        conn,
    }
}

async fn next(member: &mut Member) -> String {
    within(member.events.recv()).await.unwrap()
}

fn event(text: &str) -> UserJoinEvent {
    UserJoinEvent { user: text.into() }
}

/// Broadcasts `text` to `target` from `server`, leaving out `except`.
fn send(server: &Server, target: Target, text: &str, except: &[ConnRef]) -> Delivery {
    let mut audience = Audience::on(server.node(), target);
    for conn in except {
        audience = audience.except_ref(*conn);
    }
    stmp::broadcast(audience, &USER_JOIN, &event(text)).unwrap()
}

const PRESENCE: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_rooms_users_everyone_and_presence_through_the_seam() {
    let (adapter_a, adapter_b) = pair();
    let (a, url_a, changes_a) = node(adapter_a).await;
    let (b, url_b, _changes_b) = node(adapter_b).await;
    assert_ne!(a.node().id(), b.node().id());
    // alice has a device on each node; her JSON device makes node B ship JSON too.
    let mut alice_a = member(&url_a, &a, Codec::JSON, "lobby", "alice").await;
    let mut alice_b = member(&url_b, &b, Codec::PROTOBUF, "lobby", "alice").await;
    let mut bob_b = member(&url_b, &b, Codec::PROTOBUF, "lobby", "bob").await;

    // A room broadcast from A reaches B's members; the sender is left out.
    let delivery = send(&a, Target::Room("lobby".into()), "from a", &[alice_a.conn]);
    assert_eq!(
        (delivery.queued, delivery.dropped),
        (0, 0),
        "A's only member is left out"
    );
    assert_eq!(next(&mut alice_b).await, "from a");
    assert_eq!(next(&mut bob_b).await, "from a");

    // A remote connection in the except-list is left out on its own node.
    send(
        &a,
        Target::Room("lobby".into()),
        "not to bob",
        &[bob_b.conn],
    );
    assert_eq!(next(&mut alice_a).await, "not to bob");
    assert_eq!(next(&mut alice_b).await, "not to bob");

    // A user send reaches every device of the user, on both nodes, in each one's codec.
    let from_b = stmp::broadcast(b.users().to("alice"), &USER_JOIN, &event("to alice")).unwrap();
    assert_eq!(from_b.queued, 1, "one of alice's devices is on B");
    assert_eq!(next(&mut alice_a).await, "to alice");
    assert_eq!(next(&mut alice_b).await, "to alice");

    // Everyone, from B.
    send(&b, Target::Everyone, "to everyone", &[]);
    assert_eq!(next(&mut alice_a).await, "to everyone");
    assert_eq!(next(&mut alice_b).await, "to everyone");
    // bob missed "not to bob" and "to alice": his next event is this one.
    assert_eq!(next(&mut bob_b).await, "to everyone");

    // Presence, asked on either node, covers both.
    let members = a.rooms().cluster_members("lobby", PRESENCE).await.unwrap();
    let seen: Vec<(ConnRef, Option<&str>)> = members
        .iter()
        .map(|m| (m.conn, m.user.as_deref()))
        .collect();
    let mut expected = vec![
        (alice_a.conn, Some("alice")),
        (alice_b.conn, Some("alice")),
        (bob_b.conn, Some("bob")),
    ];
    expected.sort();
    assert_eq!(seen, expected);
    assert_eq!(
        a.rooms().members("lobby").len(),
        1,
        "the local form stays local"
    );
    assert_eq!(
        a.users().cluster_online(PRESENCE).await.unwrap(),
        ["alice", "bob"]
    );
    assert!(a.users().cluster_is_online("bob", PRESENCE).await.unwrap());
    assert!(!a.users().is_online("bob"));
    assert_eq!(
        a.rooms()
            .cluster_rooms_of(bob_b.conn, PRESENCE)
            .await
            .unwrap(),
        ["lobby"]
    );
    assert_eq!(b.rooms().cluster_list(PRESENCE).await.unwrap(), ["lobby"]);
    let devices = b.users().cluster_conns("alice", PRESENCE).await.unwrap();
    let nodes: Vec<NodeId> = devices.iter().map(|m| m.conn.node).collect();
    assert!(nodes.contains(&a.node().id()) && nodes.contains(&b.node().id()));

    // Membership changes reach the adapter: the room's first and last member on A.
    within(alice_a.client.close()).await;
    within(async {
        while a
            .rooms()
            .cluster_members("lobby", PRESENCE)
            .await
            .unwrap()
            .len()
            != 2
        {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let id = alice_a.conn.id;
    assert_eq!(
        *changes_a.lock().unwrap(),
        [
            format!("Joined {{ room: \"lobby\", conn: {id}, first: true }}"),
            format!("Bound {{ user: \"alice\", conn: {id}, first: true }}"),
            format!("Left {{ room: \"lobby\", conn: {id}, last: true }}"),
            format!("Unbound {{ user: \"alice\", conn: {id}, last: true }}"),
        ]
    );
    drop((alice_b, bob_b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_leaves_presence_with_this_nodes_answer_at_the_deadline() {
    // The peer end is never attached to a server, so nobody answers its questions.
    let (adapter_a, _unattached) = pair();
    let (a, url_a, _) = node(adapter_a).await;
    let alice = member(&url_a, &a, Codec::PROTOBUF, "lobby", "alice").await;
    let members = within(
        a.rooms()
            .cluster_members("lobby", Duration::from_millis(50)),
    )
    .await
    .unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].conn, alice.conn);
}
