//! Events typed by descriptors: a method's name finds its input message, a body in JSON or
//! protobuf becomes that message, and the message reaches connections of every codec.

use std::collections::HashMap;

use bytes::Bytes;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, SerializeOptions};
use stmp::wire::Header;
use stmp::{Audience, Codec, Delivery, Method, Status};

/// The events the API may publish, with the descriptors of their messages.
///
/// ```
/// use stmp_http::Events;
///
/// let events = Events::new()
///     .with(quick_start::FILE_DESCRIPTOR_SET, quick_start::room_events::METHODS)
///     .unwrap();
/// assert!(events.method("stmp.examples.quick_start.RoomEvents.UserJoin").is_some());
/// ```
#[derive(Clone, Debug, Default)]
pub struct Events {
    pool: DescriptorPool,
    methods: HashMap<&'static str, Method>,
}

/// The content type of raw protobuf bodies; `application/x-protobuf` and
/// `application/octet-stream` are taken as protobuf too.
pub const PROTOBUF: &str = "application/protobuf";

/// How stmp's own JSON and msgpack codecs write messages: proto field names, 64-bit integers
/// and enums as numbers, every field present.
const STMP_SERDE: SerializeOptions = SerializeOptions::new()
    .use_proto_field_name(true)
    .stringify_64_bit_integers(false)
    .use_enum_numbers(true)
    .skip_default_fields(false);

impl Events {
    /// No events.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `methods` (a generated `…::METHODS`), whose messages `file_descriptor_set` (the
    /// generated `FILE_DESCRIPTOR_SET`) describes. A method whose input message is not in the
    /// descriptors is a `BadRequest`.
    pub fn with(mut self, file_descriptor_set: &[u8], methods: &[Method]) -> Result<Self, Status> {
        self.pool
            .decode_file_descriptor_set(file_descriptor_set)
            .map_err(|e| Status::bad_request(format!("invalid descriptor set: {e}")))?;
        for method in methods {
            if self.pool.get_message_by_name(method.input).is_none() {
                return Err(Status::bad_request(format!(
                    "{}: its input {} is not in the descriptors",
                    method.name, method.input
                )));
            }
            self.methods.insert(method.name, *method);
        }
        Ok(self)
    }

    /// The method of this full name (`package.Service.Method`), if it was added.
    pub fn method(&self, name: &str) -> Option<&Method> {
        self.methods.get(name)
    }

    /// The names of the methods, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = self.methods.keys().copied().collect();
        names.sort_unstable();
        names
    }

    /// Reads an event of `method` from a body: JSON mapped onto the method's input message
    /// (unknown fields and wrong types are refused), or protobuf bytes. Errors are
    /// `NotFound` for an unknown method and `BadRequest` for a body that is not the message.
    pub fn parse(&self, method: &str, content_type: &str, body: &[u8]) -> Result<Event, Status> {
        let method = *self
            .method(method)
            .ok_or_else(|| Status::not_found(format!("no event {method:?} is published here")))?;
        let descriptor = self
            .pool
            .get_message_by_name(method.input)
            .ok_or_else(|| Status::internal(format!("{} lost its descriptor", method.input)))?;
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let message = match essence.as_str() {
            "application/json" => {
                let mut json = serde_json::Deserializer::from_slice(body);
                let options = DeserializeOptions::new().deny_unknown_fields(true);
                DynamicMessage::deserialize_with_options(descriptor, &mut json, &options)
                    .and_then(|message| json.end().map(|()| message))
                    .map_err(|e| Status::bad_request(format!("not a {}: {e}", method.input)))?
            }
            PROTOBUF | "application/x-protobuf" | "application/octet-stream" => {
                DynamicMessage::decode(descriptor, body).map_err(|e| {
                    Status::bad_request(format!("not a {} in protobuf: {e}", method.input))
                })?
            }
            other => {
                return Err(Status::bad_request(format!(
                    "unsupported content type {other:?}: send application/json or {PROTOBUF}"
                )));
            }
        };
        Ok(Event {
            method,
            protobuf: Bytes::from(message.encode_to_vec()),
            message,
        })
    }
}

/// One event, ready to send: its method, its protobuf bytes and its message.
#[derive(Clone, Debug)]
pub struct Event {
    method: Method,
    protobuf: Bytes,
    message: DynamicMessage,
}

impl Event {
    /// The event's method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The event's payload in `codec`, as the generated type of its message would encode.
    pub fn encode(&self, codec: &Codec) -> Result<Bytes, Status> {
        codec.encode_dynamic(&self.protobuf, &StmpSerde(&self.message))
    }

    /// Sends the event to an audience (a room, a user, everyone, connections), encoded once
    /// per codec; never waits (see [`stmp::broadcast_with`]).
    pub fn send_to<'a>(&self, to: impl Into<Audience<'a>>) -> Result<Delivery, Status> {
        stmp::broadcast_with(to, &self.method, Header::new(), |codec| self.encode(codec))
    }
}

/// A dynamic message in the serde form of stmp's generated types.
struct StmpSerde<'a>(&'a DynamicMessage);

impl serde::Serialize for StmpSerde<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize_with_options(serializer, &STMP_SERDE)
    }
}
