//! What the `room-client` binary reads and prints: commands, and lines for events and
//! answers.

use std::fmt::Write as _;

use crate::client::ChatEvent;
use crate::{RoomInfo, RoomList, WhoList};

/// A line the user typed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `/join room`: join (or switch to) a room.
    Join(String),
    /// `/leave [room]`: leave a room (the current one by default).
    Leave(Option<String>),
    /// `/rooms`: the rooms that have members.
    Rooms,
    /// `/members [room]`: a room's members.
    Members(Option<String>),
    /// `/who [room]`: who is online (or in a room), active or idle, on which transport.
    Who(Option<String>),
    /// `/msg user text`: a direct message.
    Msg {
        /// To whom.
        user: String,
        /// What.
        text: String,
    },
    /// Plain text: a message to the current room.
    Say(String),
    /// `/token`: the session token, for `--token` on another device.
    Token,
    /// `/help`.
    Help,
    /// `/quit`.
    Quit,
    /// An empty line.
    Nothing,
}

/// The help text.
pub const HELP: &str = "\
commands:
  /join ROOM        join a room (or switch to one you are in); plain text goes to it
  /leave [ROOM]     leave the current room (or ROOM)
  /rooms            the rooms that have members
  /members [ROOM]   the members of the current room (or ROOM)
  /who [ROOM]       who is online (or in ROOM): active or idle, and on which transport
  /msg USER TEXT    a direct message to every connection of USER
  /token            your session token, to sign in elsewhere with --token
  /quit             leave
  anything else     a message to the current room";

impl Command {
    /// Parses a line; `Err` is a usage message.
    pub fn parse(line: &str) -> Result<Command, String> {
        let line = line.trim();
        let Some(command) = line.strip_prefix('/') else {
            return Ok(if line.is_empty() {
                Command::Nothing
            } else {
                Command::Say(line.to_owned())
            });
        };
        let (name, rest) = match command.split_once(char::is_whitespace) {
            Some((name, rest)) => (name, rest.trim()),
            None => (command, ""),
        };
        let optional = |rest: &str| (!rest.is_empty()).then(|| rest.to_owned());
        let one_word = |rest: &str, usage: &str| -> Result<Option<String>, String> {
            if rest.contains(char::is_whitespace) {
                Err(format!("usage: {usage}"))
            } else {
                Ok(optional(rest))
            }
        };
        match name {
            "join" | "j" => match one_word(rest, "/join ROOM")? {
                Some(room) => Ok(Command::Join(room)),
                None => Err("usage: /join ROOM".to_owned()),
            },
            "leave" | "part" => Ok(Command::Leave(one_word(rest, "/leave [ROOM]")?)),
            "rooms" | "list" => Ok(Command::Rooms),
            "members" | "names" => Ok(Command::Members(one_word(rest, "/members [ROOM]")?)),
            "who" | "w" => Ok(Command::Who(one_word(rest, "/who [ROOM]")?)),
            "msg" | "m" | "dm" => match rest.split_once(char::is_whitespace) {
                Some((user, text)) if !text.trim().is_empty() => Ok(Command::Msg {
                    user: user.to_owned(),
                    text: text.trim().to_owned(),
                }),
                _ => Err("usage: /msg USER TEXT".to_owned()),
            },
            "token" => Ok(Command::Token),
            "help" | "h" | "?" => Ok(Command::Help),
            "quit" | "q" | "exit" => Ok(Command::Quit),
            other => Err(format!("unknown command /{other}; /help lists them")),
        }
    }
}

/// Turns Unix milliseconds into wall-clock time.
#[derive(Clone, Copy, Debug, Default)]
pub struct Clock {
    /// Seconds east of UTC.
    pub offset_seconds: i32,
}

impl Clock {
    /// The local time zone (UTC when it cannot be told; ask before starting threads).
    pub fn local() -> Clock {
        Clock {
            offset_seconds: time::UtcOffset::current_local_offset()
                .map(|offset| offset.whole_seconds())
                .unwrap_or(0),
        }
    }

    /// `HH:MM:SS`.
    pub fn time(&self, ms: i64) -> String {
        let seconds = (ms.div_euclid(1000) + i64::from(self.offset_seconds)).rem_euclid(86_400);
        format!(
            "{:02}:{:02}:{:02}",
            seconds / 3600,
            seconds / 60 % 60,
            seconds % 60
        )
    }
}

/// The line of an event, as `me` sees it.
pub fn event_line(event: &ChatEvent, clock: &Clock, me: &str) -> String {
    let now = crate::now_ms();
    match event {
        ChatEvent::RoomMessage(m) => {
            format!(
                "[{}] #{} <{}> {}",
                clock.time(m.timestamp),
                m.room,
                m.sender,
                m.text
            )
        }
        ChatEvent::DirectMessage(m) if m.sender == me && m.recipient != me => format!(
            "[{}] (you → {}) {}",
            clock.time(m.timestamp),
            m.recipient,
            m.text
        ),
        ChatEvent::DirectMessage(m) => {
            format!("[{}] *{}* {}", clock.time(m.timestamp), m.sender, m.text)
        }
        ChatEvent::UserJoined(e) => {
            format!(
                "[{}] #{} → {} joined",
                clock.time(e.timestamp),
                e.room,
                e.user
            )
        }
        ChatEvent::UserLeft(e) => format!(
            "[{}] #{} ← {} {}",
            clock.time(e.timestamp),
            e.room,
            e.user,
            if e.reason == "left" {
                "left"
            } else {
                &e.reason
            }
        ),
        ChatEvent::Disconnected {
            status,
            attempt,
            retry_in,
        } if *attempt <= 1 => format!(
            "[{}] !! connection lost ({status}); reconnecting in {:.1}s",
            clock.time(now),
            retry_in.as_secs_f64()
        ),
        ChatEvent::Disconnected {
            status,
            attempt,
            retry_in,
        } => format!(
            "[{}] !! reconnect attempt {} failed ({status}); next in {:.1}s",
            clock.time(now),
            attempt - 1,
            retry_in.as_secs_f64()
        ),
        ChatEvent::Reconnected { attempt } => format!(
            "[{}] !! reconnected after {attempt} attempt{}; signing in again",
            clock.time(now),
            if *attempt == 1 { "" } else { "s" }
        ),
        ChatEvent::Resumed {
            user,
            rooms,
            failed,
            signed_up_again,
        } => {
            let mut line = format!("[{}] !! signed in again as {user}", clock.time(now));
            if *signed_up_again {
                line.push_str(" (the server had forgotten the account: made it again)");
            }
            if rooms.is_empty() {
                line.push_str("; no rooms to re-join");
            } else {
                let _ = write!(line, "; re-joined {}", hashed(rooms));
            }
            for (room, status) in failed {
                let _ = write!(line, "; could not re-join #{room}: {status}");
            }
            line
        }
        ChatEvent::History {
            room,
            recovered: true,
        } => format!(
            "[{}] !! #{room}: caught up on what was said while you were away",
            clock.time(now)
        ),
        ChatEvent::History {
            room,
            recovered: false,
        } => format!(
            "[{}] !! #{room}: some messages from while you were away are lost (the server restarted, or you were gone too long)",
            clock.time(now)
        ),
        ChatEvent::ResumeFailed { status } => format!(
            "[{}] !! could not sign in again: {status}; /quit and start again",
            clock.time(now)
        ),
        ChatEvent::GaveUp { status } => format!(
            "[{}] !! disconnected for good: {status}; /quit and start again",
            clock.time(now)
        ),
    }
}

/// `#a, #b`.
pub fn hashed(rooms: &[String]) -> String {
    rooms
        .iter()
        .map(|room| format!("#{room}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The lines of `/rooms`; `mine` are the rooms the user is in.
pub fn rooms_lines(list: &RoomList, mine: &[String]) -> String {
    if list.rooms.is_empty() {
        return "no rooms yet: /join one".to_owned();
    }
    let mut out = String::from("rooms:");
    for room in &list.rooms {
        let _ = write!(
            out,
            "\n  #{:<16} {} member{}{}",
            room.room,
            room.members.len(),
            if room.members.len() == 1 { "" } else { "s" },
            if mine.contains(&room.room) {
                "  (you are in it)"
            } else {
                ""
            }
        );
    }
    out
}

/// The line of `/members`.
pub fn members_line(info: &RoomInfo) -> String {
    format!("#{} members: {}", info.room, info.members.join(", "))
}

/// The lines of `/who`.
pub fn who_lines(list: &WhoList) -> String {
    let mut out = if list.room.is_empty() {
        String::from("online:")
    } else {
        format!("in #{}:", list.room)
    };
    for entry in &list.entries {
        let _ = write!(out, "\n  {:<12} ", entry.user);
        match &entry.status {
            Some(status) => {
                let _ = write!(
                    out,
                    "{:<7} idle {:>4}s  {:<10} {}",
                    status.state, status.idle_seconds, status.transport, status.agent
                );
            }
            None => {
                let _ = write!(out, "no answer ({})  {}", entry.error, entry.transport);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse() {
        assert_eq!(
            Command::parse("/join lobby"),
            Ok(Command::Join("lobby".into()))
        );
        assert_eq!(Command::parse("  /leave "), Ok(Command::Leave(None)));
        assert_eq!(
            Command::parse("/leave dev"),
            Ok(Command::Leave(Some("dev".into())))
        );
        assert_eq!(Command::parse("/rooms"), Ok(Command::Rooms));
        assert_eq!(Command::parse("/who"), Ok(Command::Who(None)));
        assert_eq!(
            Command::parse("/who lobby"),
            Ok(Command::Who(Some("lobby".into())))
        );
        assert_eq!(
            Command::parse("/msg bob hi there"),
            Ok(Command::Msg {
                user: "bob".into(),
                text: "hi there".into()
            })
        );
        assert_eq!(
            Command::parse("hello all"),
            Ok(Command::Say("hello all".into()))
        );
        assert_eq!(Command::parse(""), Ok(Command::Nothing));
        assert_eq!(Command::parse("/quit"), Ok(Command::Quit));
        assert_eq!(Command::parse("/token"), Ok(Command::Token));
        assert!(Command::parse("/join").is_err());
        assert!(Command::parse("/join a b").is_err());
        assert!(Command::parse("/msg bob").is_err());
        assert!(Command::parse("/dance").is_err());
    }

    #[test]
    fn times_are_wall_clock() {
        let utc = Clock::default();
        assert_eq!(utc.time(0), "00:00:00");
        assert_eq!(utc.time(((13 * 60 + 4) * 60 + 5) * 1000 + 999), "13:04:05");
        let paris = Clock {
            offset_seconds: 3600,
        };
        assert_eq!(paris.time(23 * 3600 * 1000), "00:00:00");
    }
}
