//! A NATS cluster loses a node mid-test: the stmp node on it fails over to another NATS node
//! and room events, direct messages and cluster presence keep working across every stmp node;
//! the NATS node comes back on the same ports, rejoins the cluster, and a stmp node on it is
//! part of the cluster again.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use stmp::Codec;
use stmp::adapter::NodeId;
use stmp_nats::nats_server::{NatsCluster, NatsServer};
use support::*;

/// Waits until `probe` from `speaker` reaches every one of `listeners` (interest crosses the
/// routes, and a failed-over node resubscribes, in their own time), then checks that one real
/// event reaches every listener and nothing else is waiting for them.
async fn room_reaches(speaker: &Device, listeners: &mut [&mut Device], text: &str) {
    for listener in listeners.iter_mut() {
        listener.hear_from(speaker, "lobby", "probe").await;
    }
    speaker.say("lobby", text).await;
    for listener in listeners.iter_mut() {
        assert_eq!(listener.next_but("probe").await, line("lobby", text));
        assert!(!listener.has_heard(), "an event arrived twice");
    }
}

/// Tells `user` until each of `devices` has heard it once, then checks one real message
/// reaches every device.
async fn dm_reaches(speaker: &Device, user: &str, devices: &mut [&mut Device], text: &str) {
    for device in devices.iter_mut() {
        within(async {
            loop {
                speaker.tell(user, "probe").await;
                if tokio::time::timeout(Duration::from_millis(100), device.next())
                    .await
                    .is_ok()
                {
                    return;
                }
            }
        })
        .await;
    }
    speaker.tell(user, text).await;
    for device in devices.iter_mut() {
        assert_eq!(device.next_but("probe").await, line(user, text));
        assert!(!device.has_heard(), "a message arrived twice");
    }
}

/// Asks `asker` until the lobby's members are on `nodes` (one each, by node id) and `user`'s
/// devices on `user_nodes`: a node that just failed over answers again once its
/// subscriptions are back.
async fn presence_is(asker: &StmpNode, nodes: &[NodeId], user: &str, user_nodes: &[NodeId]) {
    let want_lobby: BTreeSet<NodeId> = nodes.iter().copied().collect();
    let want_user: BTreeSet<NodeId> = user_nodes.iter().copied().collect();
    within(async {
        loop {
            let lobby = asker
                .rooms
                .cluster_members("lobby", PRESENCE)
                .await
                .unwrap();
            let devices = asker.users.cluster_conns(user, PRESENCE).await.unwrap();
            let lobby_nodes: BTreeSet<NodeId> = lobby.iter().map(|m| m.conn.node).collect();
            let user_nodes: BTreeSet<NodeId> = devices.iter().map(|m| m.conn.node).collect();
            if lobby.len() == nodes.len()
                && lobby_nodes == want_lobby
                && devices.len() == want_user.len()
                && user_nodes == want_user
            {
                return;
            }
        }
    })
    .await
}

/// The stmp nodes a NATS node holds, from its monitoring endpoint.
fn stmp_connections(nats: &NatsServer) -> usize {
    let connz: serde_json::Value = serde_json::from_str(&nats.monitor("/connz").unwrap()).unwrap();
    connz["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|conn| conn["name"] == "stmp-nats")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_node_dies_its_stmp_node_fails_over_and_the_restarted_node_rejoins() {
    let mut cluster = NatsCluster::start(3).unwrap();
    let urls: Vec<String> = cluster.nodes().iter().map(|n| n.url()).collect();
    // Each stmp node is given only its own NATS node: it learns the others from the
    // cluster's INFO, which is what it fails over to.
    let nodes = [
        StmpNode::start(&urls[0]).await,
        StmpNode::start(&urls[1]).await,
        StmpNode::start(&urls[2]).await,
    ];
    let ids: Vec<NodeId> = nodes.iter().map(|n| n.server.node().id()).collect();
    let mut d0 = Device::connect(&nodes[0], Codec::JSON).await;
    let mut d1 = Device::connect(&nodes[1], Codec::PROTOBUF).await;
    let mut d2 = Device::connect(&nodes[2], Codec::PROTOBUF).await;
    for device in [&d0, &d1, &d2] {
        device.join("lobby").await;
    }
    d0.sign_in("ann").await;
    d2.sign_in("ann").await;
    d1.sign_in("bob").await;
    room_reaches(&d1, &mut [&mut d0, &mut d2], "before").await;
    dm_reaches(&d1, "ann", &mut [&mut d0, &mut d2], "before").await;
    presence_is(&nodes[1], &ids, "ann", &[ids[0], ids[2]]).await;

    // NATS node 0 (the seed of the others' routes) crashes.
    cluster.node_mut(0).stop();
    // Its stmp node reconnects elsewhere: the two NATS nodes left hold all three.
    within(async {
        while cluster.nodes()[1..]
            .iter()
            .map(stmp_connections)
            .sum::<usize>()
            < 3
            || !nodes[0].adapter.is_connected()
        {
            tokio::task::yield_now().await;
        }
    })
    .await;
    // Every direction through the failed-over node, and around it.
    room_reaches(&d0, &mut [&mut d1, &mut d2], "node 0 on another NATS").await;
    room_reaches(&d1, &mut [&mut d0, &mut d2], "to node 0 again").await;
    dm_reaches(&d1, "ann", &mut [&mut d0, &mut d2], "ann, wherever").await;
    dm_reaches(&d0, "bob", &mut [&mut d1], "bob, from node 0").await;
    for asker in &nodes {
        presence_is(asker, &ids, "ann", &[ids[0], ids[2]]).await;
    }

    // NATS node 0 comes back on the same ports and rejoins the cluster; a new stmp node on it
    // is part of the cluster at once.
    cluster.node_mut(0).restart().unwrap();
    cluster.wait_routed().unwrap();
    let late = StmpNode::start(&urls[0]).await;
    assert_eq!(stmp_connections(&cluster.nodes()[0]), 1);
    let mut d3 = Device::connect(&late, Codec::PROTOBUF).await;
    d3.join("lobby").await;
    d3.sign_in("ann").await;
    let mut all_ids = ids.clone();
    all_ids.push(late.server.node().id());
    room_reaches(
        &d3,
        &mut [&mut d0, &mut d1, &mut d2],
        "from the restarted NATS",
    )
    .await;
    room_reaches(
        &d1,
        &mut [&mut d0, &mut d2, &mut d3],
        "to the restarted NATS",
    )
    .await;
    dm_reaches(
        &d1,
        "ann",
        &mut [&mut d0, &mut d2, &mut d3],
        "ann, all three",
    )
    .await;
    let anns = [ids[0], ids[2], all_ids[3]];
    presence_is(&late, &all_ids, "ann", &anns).await;
    presence_is(&nodes[0], &all_ids, "ann", &anns).await;
}
