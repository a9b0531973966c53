//! The nats-server harness itself: a real server on an OS-picked port, restarted on the same
//! port, and a routed cluster; async-nats reconnects and resubscribes across the restart.

use std::time::Duration;

use futures_util::StreamExt;
use stmp_nats::nats_server::{NatsCluster, NatsServer};
use tokio::time::timeout;

const PATIENCE: Duration = Duration::from_secs(20);

/// Publishes on `subject` until `subscriber` sees a message: interest travels to the server
/// (and over routes) asynchronously, so the first publications may find nobody.
async fn publish_until_seen(
    publisher: &async_nats::Client,
    subscriber: &mut async_nats::Subscriber,
    subject: &str,
) -> async_nats::Message {
    timeout(PATIENCE, async {
        loop {
            publisher
                .publish(subject.to_string(), "probe".into())
                .await
                .unwrap();
            publisher.flush().await.unwrap();
            if let Ok(Some(message)) = timeout(Duration::from_millis(50), subscriber.next()).await {
                return message;
            }
        }
    })
    .await
    .expect("the probe never arrived")
}

#[tokio::test]
async fn a_client_resubscribes_after_the_server_restarts_on_the_same_port() {
    let mut server = NatsServer::start().unwrap();
    let port = server.port();
    let client = async_nats::connect(server.url()).await.unwrap();
    let mut subscriber = client.subscribe("greetings").await.unwrap();
    client.flush().await.unwrap();
    client.publish("greetings", "before".into()).await.unwrap();
    let message = timeout(PATIENCE, subscriber.next()).await.unwrap().unwrap();
    assert_eq!(&message.payload[..], b"before");

    server.restart().unwrap();
    assert_eq!(server.port(), port, "restarted on the same port");
    let message = publish_until_seen(&client, &mut subscriber, "greetings").await;
    assert_eq!(&message.payload[..], b"probe");
}

#[tokio::test]
async fn a_three_node_cluster_routes_messages_between_nodes() {
    let mut cluster = NatsCluster::start(3).unwrap();
    let urls: Vec<String> = cluster.nodes().iter().map(|n| n.url()).collect();
    assert_eq!(urls.len(), 3);
    for node in cluster.nodes() {
        assert_eq!(node.routes().unwrap(), 2);
    }
    let first = async_nats::connect(&urls[0]).await.unwrap();
    let last = async_nats::connect(&urls[2]).await.unwrap();
    let mut subscriber = last.subscribe("across").await.unwrap();
    last.flush().await.unwrap();
    publish_until_seen(&first, &mut subscriber, "across").await;

    // The seed node dies and comes back: it routes to the others again.
    cluster.node_mut(0).restart().unwrap();
    cluster.wait_routed().unwrap();
    publish_until_seen(&first, &mut subscriber, "across").await;
}
