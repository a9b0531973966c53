//! A broadcast as a value: what to send, to whom, and the payload encoded per content type,
//! so an adapter can ship it to other nodes and they deliver it without re-serialising.

use std::borrow::Cow;

use bytes::Bytes;

use super::frame::{Reader, Writer};
use super::{ConnRef, NodeId};
use crate::codec::Codec;
use crate::conn::{DeferredWrites, EventOffer, EventRef};
use crate::wire::{Action, Header, Notify, Packet};
use crate::{Conn, Delivery, Method, Status};

/// The version byte that starts [`Broadcast::to_bytes`]; a node refuses other versions.
const VERSION: u8 = 1;

/// Who a broadcast is for, by name, so it means the same on every node.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// Every member of a room.
    Room(String),
    /// Every connection (device) of a user.
    User(String),
    /// Every connection of the server.
    Everyone,
}

/// Serialises the event for one codec; a broadcast calls it at most once per content type.
pub type Encode<'a> = dyn FnMut(&Codec) -> Result<Bytes, Status> + 'a;

/// One event on its way to a [`Target`]: the method, the connections left out, an optional
/// header and the payload per content type, encoded on demand.
///
/// Local delivery encodes lazily, for the content types its members use; an adapter that
/// ships the broadcast calls [`to_bytes`](Self::to_bytes), which encodes it for every codec
/// the server accepts, and the receiving node rebuilds it with
/// [`from_bytes`](Self::from_bytes) and delivers it through [`Node::deliver`](super::Node::deliver).
///
/// ```
/// use bytes::Bytes;
/// use stmp::Method;
/// use stmp::adapter::{Broadcast, NodeId, Target};
/// use stmp::codec::Codec;
///
/// const PING: Method = Method::new("demo.Events.Ping", "demo.PingEvent", "google.protobuf.Empty");
/// let mut encode = |codec: &Codec| Ok(Bytes::from(codec.content_type().to_owned()));
/// let mut broadcast = Broadcast::new(&PING, Target::Room("lobby".into()), NodeId::new(7), &mut encode);
/// broadcast.header_mut().insert("offset", "42");
/// let bytes = broadcast.to_bytes(&[Codec::PROTOBUF, Codec::JSON]).unwrap();
///
/// let mut received = Broadcast::from_bytes(bytes).unwrap();
/// assert_eq!(received.target(), &Target::Room("lobby".into()));
/// assert_eq!(received.header().get("offset"), Some("42"));
/// assert_eq!(&received.payload(&Codec::JSON).unwrap().unwrap()[..], b"application/json");
/// ```
pub struct Broadcast<'a> {
    action: Action,
    name: Cow<'static, str>,
    target: Target,
    origin: NodeId,
    except: Vec<ConnRef>,
    header: Header,
    payloads: Payloads<'a>,
}

impl std::fmt::Debug for Broadcast<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broadcast")
            .field("method", &self.name)
            .field("target", &self.target)
            .field("origin", &self.origin)
            .field("except", &self.except)
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

/// The payload per content type, and what makes the missing ones.
pub(crate) struct Payloads<'a> {
    encoded: Vec<(Cow<'static, str>, Bytes)>,
    encode: Option<&'a mut Encode<'a>>,
    /// Serialisations this node made.
    serialised: usize,
}

impl<'a> Broadcast<'a> {
    /// A broadcast of `method` from node `origin` to `target`, serialised by `encode` once
    /// per content type that turns out to be needed.
    pub fn new(
        method: &Method,
        target: Target,
        origin: NodeId,
        encode: &'a mut Encode<'a>,
    ) -> Broadcast<'a> {
        Broadcast {
            action: method.wire_action(),
            name: Cow::Borrowed(method.name),
            target,
            origin,
            except: Vec::new(),
            header: Header::new(),
            payloads: Payloads::lazy(encode),
        }
    }

    /// Leaves `conn` out.
    pub fn except(&mut self, conn: ConnRef) -> &mut Self {
        self.except.push(conn);
        self
    }

    /// The method's wire action.
    pub fn action(&self) -> &Action {
        &self.action
    }

    /// The method's full name (for logs).
    pub fn method_name(&self) -> &str {
        &self.name
    }

    /// Who it is for.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The node it was sent from.
    pub fn origin(&self) -> NodeId {
        self.origin
    }

    /// The connections left out.
    pub fn excluded(&self) -> &[ConnRef] {
        &self.except
    }

    /// Whether `conn` is left out.
    pub fn excludes(&self, conn: ConnRef) -> bool {
        self.except.contains(&conn)
    }

    /// The header every recipient's notify carries (empty unless set).
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The header, to add entries to.
    pub fn header_mut(&mut self) -> &mut Header {
        &mut self.header
    }

    /// How many times this node serialised the event.
    pub fn serialisations(&self) -> usize {
        self.payloads.serialised
    }

    /// The payload for `codec`: encoded now if this node has the event and has not encoded
    /// it for that content type yet; `None` when the broadcast came from another node that
    /// did not ship that content type.
    pub fn payload(&mut self, codec: &Codec) -> Result<Option<Bytes>, Status> {
        self.payloads.get(codec)
    }

    /// The target, and a sender that queues the event on connections of this node.
    pub(crate) fn split(&mut self) -> (&Target, Sender<'_, 'a>) {
        (
            &self.target,
            Sender {
                action: &self.action,
                name: &self.name,
                header: &self.header,
                except: &self.except,
                payloads: &mut self.payloads,
                delivery: Delivery::default(),
                error: None,
                to_write: DeferredWrites::default(),
            },
        )
    }

    /// The broadcast as bytes for other nodes, with the payload encoded for each of
    /// `codecs` (those the server accepts, [`Node::codecs`](super::Node::codecs)).
    pub fn to_bytes(&mut self, codecs: &[Codec]) -> Result<Bytes, Status> {
        for codec in codecs {
            self.payload(codec)?;
        }
        let mut out = Writer::default();
        out.u8(VERSION);
        match &self.action {
            Action::Id(id) => {
                out.u8(0);
                out.uvarint(*id);
            }
            Action::Method(name) => {
                out.u8(1);
                out.str(name);
            }
        }
        out.str(&self.name);
        match &self.target {
            Target::Everyone => out.u8(0),
            Target::Room(room) => {
                out.u8(1);
                out.str(room);
            }
            Target::User(user) => {
                out.u8(2);
                out.str(user);
            }
        }
        out.uvarint(self.origin.get());
        out.uvarint(self.except.len() as u64);
        for conn in &self.except {
            out.uvarint(conn.node.get());
            out.uvarint(conn.id);
        }
        out.bytes(&self.header.to_wire());
        let wanted: Vec<&(Cow<'static, str>, Bytes)> = self
            .payloads
            .encoded
            .iter()
            .filter(|(ct, _)| codecs.iter().any(|c| c.content_type() == ct))
            .collect();
        out.uvarint(wanted.len() as u64);
        for (content_type, payload) in wanted {
            out.str(content_type);
            out.bytes(payload);
        }
        Ok(out.finish())
    }

    /// A broadcast shipped by [`to_bytes`](Self::to_bytes). Malformed input is a
    /// `ProtocolError`, never a panic; payloads share `bytes`' buffer.
    pub fn from_bytes(bytes: Bytes) -> Result<Broadcast<'static>, Status> {
        let mut src = Reader::new(bytes);
        let version = src.u8("version")?;
        if version != VERSION {
            return Err(Status::protocol_error(format!(
                "adapter message version {version}, expected {VERSION}"
            )));
        }
        let action = match src.u8("action kind")? {
            0 => Action::Id(src.uvarint("action id")?),
            1 => Action::Method(src.string("action name")?),
            other => {
                return Err(Status::protocol_error(format!(
                    "malformed adapter message: action kind {other}"
                )));
            }
        };
        let name = Cow::Owned(src.string("method name")?);
        let target = match src.u8("target kind")? {
            0 => Target::Everyone,
            1 => Target::Room(src.string("room")?),
            2 => Target::User(src.string("user")?),
            other => {
                return Err(Status::protocol_error(format!(
                    "malformed adapter message: target kind {other}"
                )));
            }
        };
        let origin = NodeId::new(src.uvarint("origin")?);
        let excluded = src.count("except count", 2)?;
        let mut except = Vec::with_capacity(excluded);
        for _ in 0..excluded {
            let node = NodeId::new(src.uvarint("except node")?);
            let id = src.uvarint("except id")?;
            except.push(ConnRef { node, id });
        }
        let header = Header::decode(&src.bytes("header")?)?;
        let count = src.count("payload count", 2)?;
        let mut encoded = Vec::with_capacity(count);
        for _ in 0..count {
            let content_type = src.string("content type")?;
            let payload = src.bytes("payload")?;
            encoded.push((Cow::Owned(content_type), payload));
        }
        src.finish("the payloads")?;
        Ok(Broadcast {
            action,
            name,
            target,
            origin,
            except,
            header,
            payloads: Payloads {
                encoded,
                encode: None,
                serialised: 0,
            },
        })
    }
}

impl<'a> Payloads<'a> {
    pub(crate) fn lazy(encode: &'a mut Encode<'a>) -> Payloads<'a> {
        Payloads {
            encoded: Vec::with_capacity(1),
            encode: Some(encode),
            serialised: 0,
        }
    }

    fn get(&mut self, codec: &Codec) -> Result<Option<Bytes>, Status> {
        let content_type = codec.content_type();
        if let Some((_, payload)) = self.encoded.iter().find(|(ct, _)| ct == content_type) {
            return Ok(Some(payload.clone()));
        }
        let Some(encode) = self.encode.as_mut() else {
            return Ok(None);
        };
        let payload = encode(codec)?;
        self.serialised += 1;
        self.encoded
            .push((Cow::Owned(content_type.to_owned()), payload.clone()));
        Ok(Some(payload))
    }
}

/// Queues one event on connections of this node, counting what happened. The first
/// encoding error stops it.
pub(crate) struct Sender<'b, 'a> {
    action: &'b Action,
    name: &'b str,
    header: &'b Header,
    except: &'b [ConnRef],
    payloads: &'b mut Payloads<'a>,
    delivery: Delivery,
    error: Option<Status>,
    /// Events handed back by connections whose writers wait: written by [`finish`](Self::finish).
    to_write: DeferredWrites,
}

impl<'b, 'a> Sender<'b, 'a> {
    /// A sender of a broadcast that has no target: a list of connections.
    pub(crate) fn to_conns(
        action: &'b Action,
        name: &'b str,
        header: &'b Header,
        payloads: &'b mut Payloads<'a>,
    ) -> Sender<'b, 'a> {
        Sender {
            action,
            name,
            header,
            except: &[],
            payloads,
            delivery: Delivery::default(),
            error: None,
            to_write: DeferredWrites::default(),
        }
    }

    /// Queues the event on `conn` of node `node`, unless it is left out.
    pub(crate) fn offer(&mut self, node: NodeId, conn: &Conn) {
        if self.error.is_some()
            || self.except.contains(&ConnRef {
                node,
                id: conn.id(),
            })
        {
            return;
        }
        let Some(event) = self.event(conn) else {
            return;
        };
        match conn.offer_event_to_write(event, &mut self.to_write) {
            EventOffer::Queued | EventOffer::HandedBack => self.delivery.queued += 1,
            EventOffer::Dropped => {
                tracing::debug!(conn = conn.id(), method = self.name, "event dropped");
                self.delivery.dropped += 1;
            }
        }
    }

    /// The event's packet for the content type of `conn`, made the first time one of its
    /// connections needs it: every connection of a content type is sent the same packet.
    /// `None` when there is none (counted, or the encoding error kept).
    fn event(&mut self, conn: &Conn) -> Option<EventRef> {
        let codec = conn.codec();
        if let Some(event) = self.to_write.event(codec) {
            return Some(event);
        }
        let payload = match self.payloads.get(codec) {
            Ok(Some(payload)) => payload,
            Ok(None) => {
                tracing::warn!(
                    conn = conn.id(),
                    method = self.name,
                    content_type = codec.content_type(),
                    "a broadcast from another node has no payload for this content type"
                );
                self.delivery.dropped += 1;
                return None;
            }
            Err(error) => {
                self.error = Some(error);
                return None;
            }
        };
        let packet = Packet::Notify(Notify {
            action: self.action.clone(),
            header: self.header.clone(),
            payload,
        });
        Some(self.to_write.add_event(codec, packet))
    }

    /// What the delivery did, or the encoding error that stopped it.
    pub(crate) fn finish(mut self) -> Result<Delivery, Status> {
        // Written even when an encoding error stopped the broadcast part-way: those events
        // are queued already.
        std::mem::take(&mut self.to_write).finish();
        if let Some(error) = self.error {
            return Err(error);
        }
        self.delivery.encodings = self.payloads.serialised;
        crate::telemetry::events_delivered(&self.delivery);
        Ok(self.delivery)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Codecs;

    const TICK: Method = Method::new("test.Events.Tick", "test.Tick", "google.protobuf.Empty");

    /// Every codec this build has (json and msgpack are features).
    fn every_codec() -> Vec<Codec> {
        Codecs::default().list().to_vec()
    }

    fn shipped() -> Bytes {
        let mut encode = |codec: &Codec| Ok(Bytes::from(codec.content_type().to_owned()));
        let mut broadcast = Broadcast::new(
            &TICK,
            Target::User("alice".into()),
            NodeId::new(1),
            &mut encode,
        );
        broadcast.except(ConnRef {
            node: NodeId::new(2),
            id: 300,
        });
        broadcast.header_mut().insert("epoch", "e;1");
        broadcast.to_bytes(&every_codec()).unwrap()
    }

    #[test]
    fn a_shipped_broadcast_comes_back_whole_with_every_codec_and_no_encoder() {
        let mut received = Broadcast::from_bytes(shipped()).unwrap();
        assert_eq!(received.action(), &TICK.wire_action());
        assert_eq!(received.method_name(), TICK.name);
        assert_eq!(received.target(), &Target::User("alice".into()));
        assert_eq!(received.origin(), NodeId::new(1));
        assert!(received.excludes(ConnRef {
            node: NodeId::new(2),
            id: 300
        }));
        assert!(!received.excludes(ConnRef {
            node: NodeId::new(1),
            id: 300
        }));
        assert_eq!(received.header().get("epoch"), Some("e;1"));
        for codec in every_codec() {
            let payload = received.payload(&codec).unwrap().unwrap();
            assert_eq!(&payload[..], codec.content_type().as_bytes());
        }
        assert_eq!(
            received.serialisations(),
            0,
            "the receiver never re-serialises"
        );
    }

    #[test]
    fn local_delivery_encodes_only_what_is_asked_once_per_content_type() {
        let mut calls = 0;
        let mut encode = |_: &Codec| {
            calls += 1;
            Ok(Bytes::from_static(b"x"))
        };
        let mut broadcast = Broadcast::new(&TICK, Target::Everyone, NodeId::new(1), &mut encode);
        for _ in 0..3 {
            broadcast.payload(&Codec::PROTOBUF).unwrap();
        }
        assert_eq!(broadcast.serialisations(), 1);
        drop(broadcast);
        assert_eq!(calls, 1);
    }

    #[test]
    fn every_truncation_and_corruption_is_an_error_not_a_panic() {
        let bytes = shipped();
        for len in 0..bytes.len() {
            let error = Broadcast::from_bytes(bytes.slice(..len)).unwrap_err();
            assert_eq!(error.code(), crate::Code::ProtocolError, "length {len}");
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(Broadcast::from_bytes(Bytes::from(longer)).is_err());
        // A forged count cannot make the reader reserve more than the message holds.
        let mut forged = Writer::default();
        forged.u8(VERSION);
        forged.u8(0);
        forged.uvarint(1);
        forged.str("m");
        forged.u8(0);
        forged.uvarint(1);
        forged.uvarint(u64::MAX);
        assert!(Broadcast::from_bytes(forged.finish()).is_err());
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for round in 0..2000 {
            let mut noisy = bytes.to_vec();
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let at = (state as usize) % noisy.len();
            noisy[at] = (state >> 32) as u8;
            // Either a broadcast or an error; reaching the next round is the test.
            let _ = Broadcast::from_bytes(Bytes::from(noisy)).map(|b| b.target().clone());
            let _ = round;
        }
    }
}
