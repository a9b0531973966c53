//! What the quick-start tests share: a listener that forwards room events to the test.

use std::time::Duration;

use quick_start::{RoomEventsListener, UserExitEvent, UserJoinEvent};
use stmp::Context;
use tokio::sync::mpsc;
use tokio::time::timeout;

pub const WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    Join(String),
    Exit(String),
}

/// Forwards the room's events to the test.
pub struct Recorder(pub mpsc::UnboundedSender<Event>);

impl RoomEventsListener for Recorder {
    async fn user_join(&self, _ctx: Context, event: UserJoinEvent) {
        let _ = self.0.send(Event::Join(event.user));
    }

    async fn user_exit(&self, _ctx: Context, event: UserExitEvent) {
        let _ = self.0.send(Event::Exit(event.user));
    }
}

pub async fn next(events: &mut mpsc::UnboundedReceiver<Event>) -> Event {
    timeout(WAIT, events.recv())
        .await
        .expect("no event within the deadline")
        .expect("listener gone")
}
