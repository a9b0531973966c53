//! Method metadata: from a full method name to its numeric action id.
//!
//! The functions live in `stmp-names`, which the code generator shares, so the ids the runtime
//! routes by and the ids generated code declares cannot drift apart.

pub use stmp_names::{action_id, murmur3_x86_32, option_action_id};
