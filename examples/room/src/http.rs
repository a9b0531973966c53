//! The chat's HTTP API (stmp-http): backends publish into rooms and to users, operators list
//! rooms and presence, close connections, drain the server and scrape `/metrics`.

use stmp::Status;
use stmp_http::{Events, HttpApi};

use crate::server::Chat;
use crate::{FILE_DESCRIPTOR_SET, chat_events};

/// The API of `server`, behind the bearer `token`: the chat's rooms and users, its events
/// (`stmp.examples.room.ChatEvents.*`) and the process's Prometheus metrics.
pub fn api(chat: &Chat, server: &stmp::Server, token: &str) -> Result<HttpApi, Status> {
    let events = Events::new().with(FILE_DESCRIPTOR_SET, chat_events::METHODS)?;
    HttpApi::builder(server.clone(), token)
        .rooms(chat.rooms().clone())
        .users(chat.users().clone())
        .events(events)
        .metrics(stmp_http::prometheus::install()?)
        .build()
}
