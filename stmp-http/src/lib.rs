//! # stmp-http
//!
//! An HTTP API served next to a [`stmp::Server`], on an address of its own, for backends
//! that are not stmp clients and for operators:
//!
//! | route | does |
//! |---|---|
//! | `POST /v1/rooms/{room}/events/{method}` | publishes an event to every member of a room |
//! | `POST /v1/users/{user}/events/{method}` | … to every connection (device) of a user |
//! | `POST /v1/events/{method}` | … to every connection of the server |
//! | `GET /v1/rooms` | the rooms and how many members each has |
//! | `GET /v1/rooms/{room}` | a room's members (connections) |
//! | `GET /v1/users` | presence: the users online and their connection counts |
//! | `GET /v1/users/{user}` | a user's presence and connections |
//! | `POST /v1/connections/{id}/close` | closes a connection with a status |
//! | `POST /v1/users/{user}/close` | closes every connection of a user with a status |
//! | `POST /drain` | graceful shutdown of the stmp server ([`stmp::Server::shutdown`]) |
//! | `GET /metrics` | the runtime's metrics in Prometheus's text format |
//! | `GET /health` | `200 {"status":"ok"}`, or `503 {"status":"draining"}` once shutdown began |
//!
//! Every route but `/health` needs `Authorization: Bearer <token>`. An event's body is its
//! method's input message: JSON (`Content-Type: application/json`, proto field names or
//! lowerCamel, as protobuf's JSON mapping reads them) checked against the message's
//! descriptor, so an unknown field or a wrong type is a 400 with a message; or the message's
//! protobuf bytes (`application/protobuf`). Each connection gets the event in its own codec,
//! encoded once per codec. Publishes answer `{"queued": n, "dropped": m}`; errors are
//! `{"error": "…"}`. A close takes `{"code": "Unauthorized", "reason": "…"}` (both optional;
//! the code is a [`stmp::Code`] name).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use stmp_http::{Events, HttpApi};
//!
//! let rooms = stmp::Rooms::new();
//! let server = quick_start::server(quick_start::Rooms::new());
//! server.listen_tcp("127.0.0.1:5001").await?;
//! let events = Events::new()
//!     .with(quick_start::FILE_DESCRIPTOR_SET, quick_start::room_events::METHODS)?;
//! let api = HttpApi::builder(server, "s3cret")
//!     .rooms(rooms)
//!     .events(events)
//!     .metrics(stmp_http::prometheus::install()?)
//!     .build()?;
//! let addr = api.listen("127.0.0.1:5080").await?;
//! // curl -H 'Authorization: Bearer s3cret' -H 'Content-Type: application/json' \
//! //   -d '{"user": "ops"}' http://127.0.0.1:5080/v1/rooms/lobby/events/stmp.examples.quick_start.RoomEvents.UserJoin
//! # let _ = addr; Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod admin;
mod auth;
mod error;
mod events;
mod operations;
pub mod prometheus;
mod publish;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use stmp::{Rooms, Server, Status, Users};
use tokio::net::{TcpListener, ToSocketAddrs};

pub use events::{Event, Events, PROTOBUF};
pub use prometheus::Metrics;

/// What the handlers share.
struct State {
    server: Server,
    rooms: Option<Rooms>,
    users: Option<Users>,
    events: Events,
    metrics: Option<Metrics>,
    drain_deadline: Duration,
}

type Shared = Arc<State>;

/// Configures an [`HttpApi`].
pub struct HttpApiBuilder {
    state: State,
    token: String,
}

impl HttpApiBuilder {
    /// The rooms the room routes read and publish to. Without them those routes are 404s.
    pub fn rooms(mut self, rooms: Rooms) -> Self {
        self.state.rooms = Some(rooms);
        self
    }

    /// The users the user and presence routes read, publish to and close. Without them those
    /// routes are 404s.
    pub fn users(mut self, users: Users) -> Self {
        self.state.users = Some(users);
        self
    }

    /// The events that may be published.
    pub fn events(mut self, events: Events) -> Self {
        self.state.events = events;
        self
    }

    /// Serves `GET /metrics` from this recorder (see [`prometheus::install`]).
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.state.metrics = Some(metrics);
        self
    }

    /// How long `POST /drain` lets in-flight calls finish. Default 10 s.
    pub fn drain_deadline(mut self, deadline: Duration) -> Self {
        self.state.drain_deadline = deadline;
        self
    }

    /// The API; an empty token is refused (`BadRequest`).
    pub fn build(self) -> Result<HttpApi, Status> {
        if self.token.trim().is_empty() {
            return Err(Status::bad_request("the HTTP API needs a non-empty token"));
        }
        Ok(HttpApi {
            state: Arc::new(self.state),
            token: Arc::from(self.token.trim()),
        })
    }
}

/// The HTTP API of one stmp server. Cheap to clone.
#[derive(Clone)]
pub struct HttpApi {
    state: Shared,
    token: Arc<str>,
}

impl std::fmt::Debug for HttpApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpApi")
            .field("events", &self.state.events.names())
            .finish_non_exhaustive()
    }
}

impl HttpApi {
    /// A builder for the API of `server`, behind the bearer `token`.
    pub fn builder(server: Server, token: impl Into<String>) -> HttpApiBuilder {
        HttpApiBuilder {
            state: State {
                server,
                rooms: None,
                users: None,
                events: Events::new(),
                metrics: None,
                drain_deadline: Duration::from_secs(10),
            },
            token: token.into(),
        }
    }

    /// The routes, to serve yourself or to merge into an axum app.
    pub fn router(&self) -> Router {
        let protected = Router::new()
            .route("/v1/rooms", get(admin::list_rooms))
            .route("/v1/rooms/{room}", get(admin::room))
            .route("/v1/users", get(admin::list_users))
            .route("/v1/users/{user}", get(admin::user))
            .route("/v1/connections/{id}/close", post(admin::close_connection))
            .route("/v1/users/{user}/close", post(admin::close_user))
            .route("/v1/rooms/{room}/events/{method}", post(publish::to_room))
            .route("/v1/users/{user}/events/{method}", post(publish::to_user))
            .route("/v1/events/{method}", post(publish::to_everyone))
            .route("/drain", post(operations::drain))
            .route("/metrics", get(operations::metrics))
            .route_layer(axum::middleware::from_fn_with_state(
                self.token.clone(),
                auth::require_token,
            ));
        Router::new()
            .route("/health", get(operations::health))
            .merge(protected)
            .with_state(self.state.clone())
    }

    /// Binds `addr` (port 0 lets the OS pick) and serves the API there until the process
    /// ends; returns the bound address.
    pub async fn listen(&self, addr: impl ToSocketAddrs) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let router = self.router();
        tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, router).await {
                tracing::error!(%error, "the HTTP API stopped");
            }
        });
        tracing::info!(%local, "HTTP API listening");
        Ok(local)
    }
}
