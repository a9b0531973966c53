//! The NATS subjects the nodes talk on, and room and user names made safe as subject tokens.
//!
//! Under a prefix (`stmp` by default, so several applications can share one NATS):
//!
//! | subject | carries |
//! |---|---|
//! | `<prefix>.room.<name>` | broadcasts to a room; a node subscribes while it has members |
//! | `<prefix>.user.<name>` | sends to a user; a node subscribes while the user has a connection on it |
//! | `<prefix>.all` | broadcasts to everyone; every node subscribes |
//! | `<prefix>.presence` | presence questions; every node answers on the reply subject |
//! | `<prefix>.nodes` | node heartbeats and goodbyes |
//! | `<prefix>.history.<room>` | a room's kept events, in the JetStream stream of [`JetStreamHistory`](crate::JetStreamHistory) |

/// Encoded names longer than this are hashed instead: NATS bounds a protocol line (4 KiB by
/// default), and a subject per room must stay far below it.
const MAX_TOKEN: usize = 128;

/// The subjects of one deployment (one prefix).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

/// A prefix that is not a valid NATS subject of literal tokens.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "`{0}` is not a valid subject prefix: dot-separated non-empty tokens without spaces, `*` or `>`"
)]
pub struct BadPrefix(pub String);

impl Default for Subjects {
    fn default() -> Self {
        Subjects {
            prefix: "stmp".into(),
        }
    }
}

impl Subjects {
    /// The subjects under `prefix` (e.g. `chat.prod`).
    pub fn new(prefix: &str) -> Result<Subjects, BadPrefix> {
        let literal = |token: &str| {
            !token.is_empty()
                && token
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'*' && b != b'>' && b != b'.')
        };
        if prefix.split('.').all(literal) {
            Ok(Subjects {
                prefix: prefix.into(),
            })
        } else {
            Err(BadPrefix(prefix.into()))
        }
    }

    /// Broadcasts to `room`.
    pub fn room(&self, room: &str) -> String {
        format!("{}.room.{}", self.prefix, token(room))
    }

    /// Sends to `user`.
    pub fn user(&self, user: &str) -> String {
        format!("{}.user.{}", self.prefix, token(user))
    }

    /// Broadcasts to everyone.
    pub fn all(&self) -> String {
        format!("{}.all", self.prefix)
    }

    /// Presence questions.
    pub fn presence(&self) -> String {
        format!("{}.presence", self.prefix)
    }

    /// Node heartbeats and goodbyes.
    pub fn nodes(&self) -> String {
        format!("{}.nodes", self.prefix)
    }

    /// The kept events of `room` (history).
    pub fn history(&self, room: &str) -> String {
        format!("{}.history.{}", self.prefix, token(room))
    }

    /// Every room's kept events: the subjects of the history stream.
    pub fn all_history(&self) -> String {
        format!("{}.history.>", self.prefix)
    }

    /// The name of the JetStream stream that keeps the history: the prefix in capitals with
    /// `_` for every character a stream name cannot have.
    pub fn history_stream(&self) -> String {
        let name: String = self
            .prefix
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        format!("{name}_HISTORY")
    }
}

/// `name` as one subject token: ASCII letters, digits, `-` and `_` stay; every other byte
/// becomes `~XX` (hex); the empty name is `~`. A name whose encoding would pass
/// 128 bytes becomes `~~` and a 64-bit hash of it: two long names may then share a
/// subject, which costs a node some messages it drops (envelopes carry the full name and
/// receivers match it exactly), never a wrong delivery.
pub fn token(name: &str) -> String {
    if name.is_empty() {
        return "~".into();
    }
    let mut token = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            token.push(byte as char);
        } else {
            token.push('~');
            token.push_str(&format!("{byte:02X}"));
        }
        if token.len() > MAX_TOKEN {
            return format!("~~{:016x}", fnv1a(name.as_bytes()));
        }
    }
    token
}

/// FNV-1a, 64 bits: stable across builds and platforms, which the standard hasher is not, so
/// nodes of different builds agree on a subject.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn names_that_would_break_a_subject_are_escaped() {
        assert_eq!(token("lobby"), "lobby");
        assert_eq!(token("a.b"), "a~2Eb");
        assert_eq!(token("*"), "~2A");
        assert_eq!(token(">"), "~3E");
        assert_eq!(token("two words"), "two~20words");
        assert_eq!(token("~"), "~7E");
        assert_eq!(token(""), "~");
        assert_eq!(token("é"), "~C3~A9");
        let subjects = Subjects::default();
        assert_eq!(subjects.room("a.*"), "stmp.room.a~2E~2A");
        assert_eq!(subjects.user("ann"), "stmp.user.ann");
    }

    #[test]
    fn long_names_are_hashed_to_a_bounded_token() {
        let long = "x".repeat(10_000);
        let hashed = token(&long);
        assert!(hashed.starts_with("~~") && hashed.len() == 18, "{hashed}");
        assert_eq!(token(&long), hashed, "stable");
        assert_ne!(token(&"y".repeat(10_000)), hashed);
        assert_eq!(token(&"x".repeat(MAX_TOKEN)).len(), MAX_TOKEN);
    }

    #[test]
    fn prefixes_must_be_literal_subjects() {
        assert!(Subjects::new("chat.prod").is_ok());
        for bad in ["", "a..b", "a.*", "a.>", "a b", ".a", "a."] {
            assert_eq!(Subjects::new(bad), Err(BadPrefix(bad.into())), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn every_token_is_one_literal_subject_token(name in ".*") {
            let token = token(&name);
            prop_assert!(!token.is_empty() && token.len() <= MAX_TOKEN);
            prop_assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_~".contains(&b)));
        }

        #[test]
        fn distinct_short_names_get_distinct_tokens(a in ".{0,20}", b in ".{0,20}") {
            prop_assume!(a != b);
            prop_assert_ne!(token(&a), token(&b));
        }
    }
}
