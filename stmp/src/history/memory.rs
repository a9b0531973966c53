//! The default backend: each room's history in a ring in this process ([`Stream`]), lost on
//! restart (the epoch is random per process, so a client of the old process is told it
//! cannot recover).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::backend::{self, Backend, RoomHistory};
use super::protocol::{POSITION, PositionValues, StreamPosition};
use super::stream::Stream;
use super::{Event, Joined, Published, lock};
use crate::adapter::{BoxFuture, Broadcast, Target};
use crate::codec::Codec;
use crate::wire::{Header, Notify, Packet};
use crate::{Conn, Status};

/// History kept in this process: per room a ring bounded by the room's
/// [`Retention`](super::Retention), with a random epoch per process. Publishes and joins of a
/// room take the room's lock (never held across an `await`), so they are serialised.
#[derive(Default)]
pub struct InProcess {
    streams: Mutex<HashMap<Arc<str>, SharedStream>>,
}

impl std::fmt::Debug for InProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcess").finish_non_exhaustive()
    }
}

/// One stream's history, locked for each publish and join.
type SharedStream = Arc<Mutex<Stream<Event>>>;

/// A fresh epoch: 64 random bits, so a restarted server never reuses its predecessor's.
fn new_epoch() -> String {
    format!("{:016x}", fastrand::u64(..))
}

impl InProcess {
    fn stream(&self, room: &RoomHistory<'_>) -> SharedStream {
        let mut streams = lock(&self.streams);
        if let Some(stream) = streams.get(room.name) {
            return stream.clone();
        }
        let stream = Arc::new(Mutex::new(Stream::new(new_epoch(), room.retention)));
        streams.insert(Arc::from(room.name), stream.clone());
        stream
    }

    fn publish_now(
        &self,
        room: RoomHistory<'_>,
        event: Event,
        exclude: Option<&Conn>,
    ) -> Result<Published, Status> {
        let node = room.rooms.node();
        let stream = self.stream(&room);
        let mut stream = lock(&stream);
        // Encoded before it is stamped: an event that cannot be encoded takes no offset.
        let size = event
            .payload(node.codecs().first().unwrap_or(&Codec::PROTOBUF))?
            .len();
        let offset = stream.push(event.clone(), size, Instant::now());
        let position = StreamPosition::new(room.name, stream.epoch(), offset);
        // Through the server's adapter, like every room broadcast, with the position in the
        // header; the encodings are the kept event's, so a replay reuses them.
        let mut encode = |codec: &Codec| event.payload(codec);
        let mut broadcast = Broadcast::new(
            event.method(),
            Target::Room(room.name.to_owned()),
            node.id(),
            &mut encode,
        );
        backend::stamp(&mut broadcast, &position);
        if let Some(sender) = exclude {
            broadcast.except(node.conn_ref(sender));
        }
        let delivery = node.broadcast(&mut broadcast)?;
        // The sender does not hear its own event, but its position moves past it, or a
        // resume would replay it.
        if let Some(sender) = exclude
            && room.rooms.contains(room.name, sender)
        {
            backend::send_position(sender, &position, None);
        }
        Ok(Published { position, delivery })
    }

    fn join_now(
        &self,
        room: RoomHistory<'_>,
        conn: &Conn,
        resume: Option<StreamPosition>,
    ) -> Joined {
        let stream = self.stream(&room);
        let mut stream = lock(&stream);
        if room.rooms.contains(room.name, conn) {
            return Joined::default();
        }
        let epoch = stream.epoch().to_owned();
        let mut outcome = Joined {
            joined: true,
            ..Joined::default()
        };
        if let Some(from) = resume {
            let recovered = match stream.since(&from.epoch, from.offset, Instant::now()) {
                Ok(missed) => {
                    let mut complete = true;
                    let values = PositionValues::new(room.name, &epoch);
                    for (offset, event) in missed {
                        let queued = replay_packet(event, conn.codec(), values.at(offset))
                            .is_ok_and(|packet| conn.offer_event(packet));
                        if !queued {
                            complete = false;
                            break;
                        }
                        outcome.replayed += 1;
                    }
                    complete
                }
                Err(reason) => {
                    tracing::debug!(
                        conn = conn.id(),
                        room = room.name,
                        ?reason,
                        "cannot recover"
                    );
                    false
                }
            };
            outcome.recovered = Some(recovered);
        }
        room.rooms.join(room.name, conn);
        let position = StreamPosition::new(room.name, epoch, stream.top());
        backend::send_position(conn, &position, outcome.recovered);
        outcome
    }
}

fn replay_packet(event: &Event, codec: &Codec, position: String) -> Result<Packet, Status> {
    let mut header = Header::new();
    header.append(POSITION, position);
    Ok(Packet::Notify(Notify {
        action: event.method().wire_action(),
        header,
        payload: event.payload(codec)?,
    }))
}

impl Backend for InProcess {
    fn publish<'a>(
        &'a self,
        room: RoomHistory<'a>,
        event: Event,
        exclude: Option<&'a Conn>,
    ) -> BoxFuture<'a, Result<Published, Status>> {
        Box::pin(std::future::ready(self.publish_now(room, event, exclude)))
    }

    fn join<'a>(
        &'a self,
        room: RoomHistory<'a>,
        conn: &'a Conn,
        resume: Option<StreamPosition>,
    ) -> BoxFuture<'a, Joined> {
        Box::pin(std::future::ready(self.join_now(room, conn, resume)))
    }

    fn position<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Option<StreamPosition>> {
        let position = lock(&self.streams).get(room).cloned().map(|stream| {
            let stream = lock(&stream);
            StreamPosition::new(room, stream.epoch(), stream.top())
        });
        Box::pin(std::future::ready(position))
    }
}
