//! Publishing: an event to a room, to a user's devices, or to everyone.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use bytes::Bytes;
use serde::Serialize;
use stmp::{Audience, Delivery};

use crate::error::ApiError;
use crate::{Event, Shared};

/// What a publish did.
#[derive(Serialize)]
pub(crate) struct Published {
    /// Connections the event was queued on.
    queued: usize,
    /// Connections that missed it (send queue full, or closing).
    dropped: usize,
}

impl From<Delivery> for Published {
    fn from(delivery: Delivery) -> Published {
        Published {
            queued: delivery.queued,
            dropped: delivery.dropped,
        }
    }
}

pub(crate) async fn to_room(
    State(state): State<Shared>,
    Path((room, method)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Published>, ApiError> {
    let rooms = state
        .rooms
        .as_ref()
        .ok_or_else(|| ApiError::not_found("this server has no rooms"))?;
    let event = parse(&state, &method, &headers, &body)?;
    send(&event, rooms.to(&room), "room", &room)
}

pub(crate) async fn to_user(
    State(state): State<Shared>,
    Path((user, method)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Published>, ApiError> {
    let users = state
        .users
        .as_ref()
        .ok_or_else(|| ApiError::not_found("this server has no users"))?;
    let event = parse(&state, &method, &headers, &body)?;
    send(&event, users.to(&user), "user", &user)
}

pub(crate) async fn to_everyone(
    State(state): State<Shared>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Published>, ApiError> {
    let event = parse(&state, &method, &headers, &body)?;
    send(&event, state.server.everyone(), "everyone", "")
}

fn parse(
    state: &Shared,
    method: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Event, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    Ok(state.events.parse(method, content_type, body)?)
}

fn send(
    event: &Event,
    audience: Audience<'_>,
    to: &str,
    name: &str,
) -> Result<Json<Published>, ApiError> {
    let delivery = event.send_to(audience)?;
    // Debug, not info: a line per publish cost the API a third of its publishes per second
    // where the log takes INFO (`benches/publish.rs`), and a busy publisher's lines would bury
    // the rest. The metrics count what was queued and dropped (`stmp::telemetry`).
    tracing::debug!(
        method = event.method().name,
        to,
        name,
        queued = delivery.queued,
        dropped = delivery.dropped,
        "published over HTTP"
    );
    Ok(Json(delivery.into()))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing::Level;
    use tracing_subscriber::layer::{Context, SubscriberExt as _};

    use super::send;
    use crate::Events;

    /// Records the level of every event logged while it is the thread's subscriber.
    #[derive(Clone, Default)]
    struct Levels(Arc<Mutex<Vec<Level>>>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Levels {
        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            self.0.lock().unwrap().push(*event.metadata().level());
        }
    }

    #[test]
    fn a_publish_is_logged_at_debug_so_a_busy_publisher_does_not_flood_an_info_log() {
        let events = Events::new()
            .with(
                quick_start::FILE_DESCRIPTOR_SET,
                quick_start::room_events::METHODS,
            )
            .unwrap();
        let method = quick_start::room_events::USER_JOIN.name;
        let event = events
            .parse(method, "application/json", br#"{"user": "ops"}"#)
            .unwrap();
        let rooms = stmp::Rooms::new();
        let levels = Levels::default();
        let subscriber = tracing_subscriber::registry().with(levels.clone());
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..3 {
                let published = send(&event, rooms.to("lobby"), "room", "lobby");
                assert!(published.is_ok());
            }
        });
        assert_eq!(*levels.0.lock().unwrap(), [Level::DEBUG; 3]);
    }
}
