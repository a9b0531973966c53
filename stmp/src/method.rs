//! Method descriptors: what generated code knows about each method.

use crate::wire::{Action, action_id, option_action_id};

/// A method (or event) of a proto service: its full name, numeric action and message types.
///
/// Generated code has one `const` per method; routing, calls and logs use it.
///
/// ```
/// use stmp::Method;
///
/// const JOIN_ROOM: Method = Method::new(
///     "stmp.examples.quick_start.RoomService.JoinRoom",
///     "stmp.examples.quick_start.JoinRoomInput",
///     "stmp.examples.quick_start.RoomModel",
/// );
/// assert_eq!(JOIN_ROOM.action, 0x033648F7);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Method {
    /// `package.Service.Method`.
    pub name: &'static str,
    /// The numeric action on the wire.
    pub action: u64,
    /// The full name of the input message type.
    pub input: &'static str,
    /// The full name of the output message type.
    pub output: &'static str,
}

impl Method {
    /// A method whose action is the MurmurHash3 of its name.
    pub const fn new(name: &'static str, input: &'static str, output: &'static str) -> Method {
        Method {
            name,
            action: action_id(name),
            input,
            output,
        }
    }

    /// A method whose proto sets `(stmp.service)` and `(stmp.method)`.
    pub const fn with_ids(
        name: &'static str,
        service_id: u64,
        method_id: u8,
        input: &'static str,
        output: &'static str,
    ) -> Method {
        Method {
            name,
            action: option_action_id(service_id, method_id),
            input,
            output,
        }
    }

    /// The wire action that names this method.
    pub fn wire_action(&self) -> Action {
        Action::Id(self.action)
    }
}
