//! # stmp-names
//!
//! How stmp names things on the wire, in one place for the runtime (`stmp`) and the code
//! generator (`stmp-build`), which must agree byte for byte and should not depend on each other:
//!
//! - [`action_id`]: the numeric action of a method, MurmurHash3 of its full name;
//! - [`go_field_name`]: the name stmp-go's msgpack codec gives a proto field.
//!
//! No dependencies and no I/O: pure functions over names.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

mod action;
mod go;

pub use action::{action_id, murmur3_x86_32, option_action_id};
pub use go::go_field_name;
