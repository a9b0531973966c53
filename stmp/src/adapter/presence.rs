//! Presence questions (who is in a room, who is online, where is a connection) and their
//! answers, as values a cluster adapter can ask every node and merge.

use bytes::Bytes;

use super::frame::{Reader, Writer};
use super::{ConnRef, NodeId};
use crate::Status;

/// A presence question. A node answers it from its own connections
/// ([`Node::answer`](super::Node::answer)); a cluster adapter asks every node and merges.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Query {
    /// The members of a room.
    Members(String),
    /// The rooms that have members.
    Rooms,
    /// The rooms a connection is in.
    RoomsOf(ConnRef),
    /// The users with at least one connection.
    Online,
    /// The connections of a user.
    Conns(String),
}

/// One connection somewhere in the cluster: where it is, and the user it is bound to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Member {
    /// The connection.
    pub conn: ConnRef,
    /// The user it is bound to (see [`Users::bind`](crate::Users::bind)).
    pub user: Option<String>,
}

/// The answer to a [`Query`]: connections for `Members` and `Conns`, names for the rest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Connections, sorted.
    Members(Vec<Member>),
    /// Names (rooms or users), sorted and without duplicates.
    Names(Vec<String>),
}

impl Answer {
    /// The empty answer of the same shape as `query`'s.
    pub fn empty(query: &Query) -> Answer {
        match query {
            Query::Members(_) | Query::Conns(_) => Answer::Members(Vec::new()),
            Query::Rooms | Query::RoomsOf(_) | Query::Online => Answer::Names(Vec::new()),
        }
    }

    /// Adds another node's answer to this one. Answers of different shapes are a
    /// `ProtocolError` (a node answered another question).
    pub fn merge(&mut self, other: Answer) -> Result<(), Status> {
        match (self, other) {
            (Answer::Members(mine), Answer::Members(theirs)) => {
                mine.extend(theirs);
                mine.sort();
                mine.dedup();
            }
            (Answer::Names(mine), Answer::Names(theirs)) => {
                mine.extend(theirs);
                mine.sort();
                mine.dedup();
            }
            _ => {
                return Err(Status::protocol_error(
                    "a node answered a presence query with the wrong kind of answer",
                ));
            }
        }
        Ok(())
    }

    /// The connections, if this is a `Members` answer.
    pub fn into_members(self) -> Result<Vec<Member>, Status> {
        match self {
            Answer::Members(members) => Ok(members),
            Answer::Names(_) => Err(Status::internal("expected connections, got names")),
        }
    }

    /// The names, if this is a `Names` answer.
    pub fn into_names(self) -> Result<Vec<String>, Status> {
        match self {
            Answer::Names(names) => Ok(names),
            Answer::Members(_) => Err(Status::internal("expected names, got connections")),
        }
    }
}

impl Query {
    /// The query as bytes for other nodes.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = Writer::default();
        match self {
            Query::Members(room) => {
                out.u8(0);
                out.str(room);
            }
            Query::Rooms => out.u8(1),
            Query::RoomsOf(conn) => {
                out.u8(2);
                out.uvarint(conn.node.get());
                out.uvarint(conn.id);
            }
            Query::Online => out.u8(3),
            Query::Conns(user) => {
                out.u8(4);
                out.str(user);
            }
        }
        out.finish()
    }

    /// A query shipped by [`to_bytes`](Self::to_bytes); malformed input is a
    /// `ProtocolError`.
    pub fn from_bytes(bytes: Bytes) -> Result<Query, Status> {
        let mut src = Reader::new(bytes);
        let query = match src.u8("query kind")? {
            0 => Query::Members(src.string("room")?),
            1 => Query::Rooms,
            2 => Query::RoomsOf(ConnRef {
                node: NodeId::new(src.uvarint("node")?),
                id: src.uvarint("connection id")?,
            }),
            3 => Query::Online,
            4 => Query::Conns(src.string("user")?),
            other => {
                return Err(Status::protocol_error(format!(
                    "malformed adapter message: query kind {other}"
                )));
            }
        };
        src.finish("the query")?;
        Ok(query)
    }
}

impl Answer {
    /// The answer as bytes for the asking node.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = Writer::default();
        match self {
            Answer::Members(members) => {
                out.u8(0);
                out.uvarint(members.len() as u64);
                for member in members {
                    out.uvarint(member.conn.node.get());
                    out.uvarint(member.conn.id);
                    match &member.user {
                        Some(user) => {
                            out.u8(1);
                            out.str(user);
                        }
                        None => out.u8(0),
                    }
                }
            }
            Answer::Names(names) => {
                out.u8(1);
                out.uvarint(names.len() as u64);
                for name in names {
                    out.str(name);
                }
            }
        }
        out.finish()
    }

    /// An answer shipped by [`to_bytes`](Self::to_bytes); malformed input is a
    /// `ProtocolError`.
    pub fn from_bytes(bytes: Bytes) -> Result<Answer, Status> {
        let mut src = Reader::new(bytes);
        let answer = match src.u8("answer kind")? {
            0 => {
                let count = src.count("member count", 3)?;
                let mut members = Vec::with_capacity(count);
                for _ in 0..count {
                    let conn = ConnRef {
                        node: NodeId::new(src.uvarint("node")?),
                        id: src.uvarint("connection id")?,
                    };
                    let user = match src.u8("user flag")? {
                        0 => None,
                        _ => Some(src.string("user")?),
                    };
                    members.push(Member { conn, user });
                }
                Answer::Members(members)
            }
            1 => {
                let count = src.count("name count", 1)?;
                let mut names = Vec::with_capacity(count);
                for _ in 0..count {
                    names.push(src.string("name")?);
                }
                Answer::Names(names)
            }
            other => {
                return Err(Status::protocol_error(format!(
                    "malformed adapter message: answer kind {other}"
                )));
            }
        };
        src.finish("the answer")?;
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(node: u64, id: u64, user: Option<&str>) -> Member {
        Member {
            conn: ConnRef {
                node: NodeId::new(node),
                id,
            },
            user: user.map(str::to_owned),
        }
    }

    #[test]
    fn queries_and_answers_round_trip_and_refuse_garbage() {
        let queries = [
            Query::Members("lobby".into()),
            Query::Rooms,
            Query::RoomsOf(ConnRef {
                node: NodeId::new(9),
                id: 4,
            }),
            Query::Online,
            Query::Conns("alice".into()),
        ];
        for query in queries {
            let bytes = query.to_bytes();
            assert_eq!(Query::from_bytes(bytes.clone()).unwrap(), query);
            for len in 0..bytes.len() {
                assert!(Query::from_bytes(bytes.slice(..len)).is_err());
            }
        }
        let answers = [
            Answer::Members(vec![member(1, 2, Some("alice")), member(3, 4, None)]),
            Answer::Names(vec!["a".into(), "b".into()]),
        ];
        for answer in answers {
            let bytes = answer.to_bytes();
            assert_eq!(Answer::from_bytes(bytes.clone()).unwrap(), answer);
            for len in 0..bytes.len() {
                assert!(Answer::from_bytes(bytes.slice(..len)).is_err());
            }
        }
    }

    #[test]
    fn merged_answers_are_sorted_without_duplicates_and_shapes_must_match() {
        let mut names = Answer::Names(vec!["lobby".into(), "games".into()]);
        names
            .merge(Answer::Names(vec!["lobby".into(), "chess".into()]))
            .unwrap();
        assert_eq!(
            names.clone().into_names().unwrap(),
            ["chess", "games", "lobby"]
        );
        let error = names.merge(Answer::Members(Vec::new())).unwrap_err();
        assert_eq!(error.code(), crate::Code::ProtocolError);
        let mut members = Answer::Members(vec![member(2, 1, None)]);
        members
            .merge(Answer::Members(vec![
                member(1, 5, Some("bob")),
                member(2, 1, None),
            ]))
            .unwrap();
        assert_eq!(
            members.into_members().unwrap(),
            [member(1, 5, Some("bob")), member(2, 1, None)]
        );
    }
}
