//! Three stmp nodes on a real nats-server (and on a three-node NATS cluster): room events,
//! direct messages to every device, cluster-wide presence, a node that crashes mid-test.

mod support;

use std::collections::BTreeSet;
use std::time::Instant;

use stmp::Codec;
use stmp::adapter::NodeId;
use stmp_nats::nats_server::{NatsCluster, NatsServer};
use support::*;

/// Three nodes on one NATS; devices: 0 on node 0 (JSON), 1 on node 1, 2 and 3 on node 2.
/// 0, 1 and 2 are in `lobby`, 3 in `other`.
async fn lobby(urls: [&str; 3]) -> (Vec<StmpNode>, Vec<Device>) {
    let mut nodes = Vec::new();
    for url in urls {
        nodes.push(StmpNode::start(url).await);
    }
    let devices = vec![
        Device::connect(&nodes[0], Codec::JSON).await,
        Device::connect(&nodes[1], Codec::PROTOBUF).await,
        Device::connect(&nodes[2], Codec::PROTOBUF).await,
        Device::connect(&nodes[2], Codec::PROTOBUF).await,
    ];
    for device in &devices[..3] {
        device.join("lobby").await;
    }
    devices[3].join("other").await;
    (nodes, devices)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_events_reach_the_members_on_every_node_and_no_one_else() {
    let nats = NatsServer::start().unwrap();
    let url = nats.url();
    let (_nodes, mut devices) = lobby([&url, &url, &url]).await;

    // A node listens on a room's subject only while it has members there.
    let subjects = subscriptions(&nats);
    assert_eq!(count(&subjects, "stmp.room.lobby"), 3, "{subjects:?}");
    assert_eq!(count(&subjects, "stmp.room.other"), 1, "{subjects:?}");

    devices[1].say("lobby", "hello from node 1").await;
    // Node 0's device speaks JSON: node 1 shipped that encoding too.
    assert_eq!(devices[0].next().await, line("lobby", "hello from node 1"));
    assert_eq!(devices[2].next().await, line("lobby", "hello from node 1"));
    // The sayer (left out) and the device in another room heard nothing: what they hear
    // next, sent after, comes first.
    devices[0].say("lobby", "marker").await;
    assert_eq!(devices[1].next().await, line("lobby", "marker"));
    devices[1].say("other", "marker").await;
    assert_eq!(devices[3].next().await, line("other", "marker"));
    assert_eq!(devices[2].next().await, line("lobby", "marker"));

    // The last member of `other` leaves: its node stops listening.
    devices[3].leave("other").await;
    assert_eq!(count(&subscriptions(&nats), "stmp.room.other"), 0);
    devices[3].join("lobby").await;
    assert_eq!(count(&subscriptions(&nats), "stmp.room.lobby"), 3);
    devices[0].say("lobby", "to all three nodes").await;
    for device in &mut devices[1..] {
        assert_eq!(device.next().await, line("lobby", "to all three nodes"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_messages_reach_every_device_of_a_user_on_any_node() {
    let nats = NatsServer::start().unwrap();
    let url = nats.url();
    let (_nodes, mut devices) = lobby([&url, &url, &url]).await;
    devices[0].sign_in("ann").await;
    devices[2].sign_in("ann").await;
    devices[3].sign_in("bob").await;
    assert_eq!(count(&subscriptions(&nats), "stmp.user.ann"), 2);

    devices[1].tell("ann", "hi ann").await;
    assert_eq!(devices[0].next().await, line("ann", "hi ann"));
    assert_eq!(devices[2].next().await, line("ann", "hi ann"));
    devices[1].tell("bob", "hi bob").await;
    assert_eq!(
        devices[3].next().await,
        line("bob", "hi bob"),
        "bob heard only his"
    );
    // Names that are not subject tokens travel safely.
    devices[3].sign_in("b.o b*>").await;
    devices[0].tell("b.o b*>", "escaped").await;
    assert_eq!(devices[3].next().await, line("b.o b*>", "escaped"));
    assert!(!devices[1].has_heard());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_answered_for_the_whole_cluster() {
    let nats = NatsServer::start().unwrap();
    let url = nats.url();
    let (nodes, devices) = lobby([&url, &url, &url]).await;
    devices[0].sign_in("ann").await;
    devices[2].sign_in("ann").await;
    devices[1].sign_in("bob").await;
    let ids: Vec<NodeId> = nodes.iter().map(|n| n.server.node().id()).collect();

    for asker in &nodes {
        let members = within(asker.rooms.cluster_members("lobby", PRESENCE))
            .await
            .unwrap();
        let where_and_who: BTreeSet<(NodeId, Option<String>)> = members
            .iter()
            .map(|m| (m.conn.node, m.user.clone()))
            .collect();
        assert_eq!(
            where_and_who,
            BTreeSet::from([
                (ids[0], Some("ann".into())),
                (ids[1], Some("bob".into())),
                (ids[2], Some("ann".into())),
            ])
        );
        let rooms = within(asker.rooms.cluster_list(PRESENCE)).await.unwrap();
        assert_eq!(rooms, ["lobby", "other"]);
        let online = within(asker.users.cluster_online(PRESENCE)).await.unwrap();
        assert_eq!(online, ["ann", "bob"]);
        let anns = within(asker.users.cluster_conns("ann", PRESENCE))
            .await
            .unwrap();
        let nodes_of_ann: BTreeSet<NodeId> = anns.iter().map(|m| m.conn.node).collect();
        assert_eq!(nodes_of_ann, BTreeSet::from([ids[0], ids[2]]));
    }
    // Where a connection of another node is.
    let on_node_2 = within(nodes[2].rooms.cluster_members("other", PRESENCE))
        .await
        .unwrap();
    let rooms = within(nodes[0].rooms.cluster_rooms_of(on_node_2[0].conn, PRESENCE))
        .await
        .unwrap();
    assert_eq!(rooms, ["other"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_node_leaves_presence_within_the_deadline_and_the_rest_keep_working() {
    let nats = NatsServer::start().unwrap();
    let url = nats.url();
    let (mut nodes, mut devices) = lobby([&url, &url, &url]).await;
    let lobby_size = within(nodes[0].rooms.cluster_members("lobby", PRESENCE))
        .await
        .unwrap()
        .len();
    assert_eq!(lobby_size, 3);

    let dead = nodes[2].server.node().id();
    nodes[2].kill();
    let asked = Instant::now();
    let members = within(nodes[0].rooms.cluster_members("lobby", PRESENCE))
        .await
        .unwrap();
    assert!(asked.elapsed() < PRESENCE * 2, "{:?}", asked.elapsed());
    assert_eq!(members.len(), 2, "{members:?}");
    assert!(members.iter().all(|m| m.conn.node != dead));

    devices[1].say("lobby", "still here").await;
    assert_eq!(devices[0].next().await, line("lobby", "still here"));
    devices[0].say("lobby", "me too").await;
    assert_eq!(devices[1].next().await, line("lobby", "me too"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_nats_cluster_carries_rooms_users_and_presence() {
    let cluster = NatsCluster::start(3).unwrap();
    let urls: Vec<String> = cluster.nodes().iter().map(|n| n.url()).collect();
    // Each stmp node on its own NATS node.
    let (nodes, mut devices) = lobby([&urls[0], &urls[1], &urls[2]]).await;
    // Interest crosses the routes in its own time.
    let (speaker, rest) = devices.split_at_mut(1);
    rest[0].hear_from(&speaker[0], "lobby", "probe").await;
    rest[1].hear_from(&speaker[0], "lobby", "probe").await;

    devices[1].say("lobby", "across the cluster").await;
    assert_eq!(
        devices[0].next_but("probe").await.text,
        "across the cluster"
    );
    assert_eq!(
        devices[2].next_but("probe").await.text,
        "across the cluster"
    );

    devices[0].sign_in("ann").await;
    devices[3].sign_in("ann").await;
    // A direct message from node 1 reaches ann's devices on nodes 0 and 2 once her
    // subjects' interest has crossed the routes.
    for device in [0, 3] {
        within(async {
            loop {
                devices[1].tell("ann", "dm").await;
                if tokio::time::timeout(
                    std::time::Duration::from_millis(100),
                    devices[device].next(),
                )
                .await
                .is_ok()
                {
                    break;
                }
            }
        })
        .await;
    }
    let anns = within(async {
        loop {
            let anns = nodes[1].users.cluster_conns("ann", PRESENCE).await.unwrap();
            if anns.len() == 2 {
                break anns;
            }
        }
    })
    .await;
    assert_eq!(anns.len(), 2);
    let members = within(nodes[1].rooms.cluster_members("lobby", PRESENCE))
        .await
        .unwrap();
    assert_eq!(members.len(), 3);
}
