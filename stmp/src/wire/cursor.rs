//! A bounds-checked reader over a byte slice, shared by every binary decoder.
//!
//! It tells "the input ends too early" apart from "the input is wrong", so one parser serves
//! both a byte stream (wait for more bytes) and a complete message (a truncated message is an
//! error).

use std::ops::Range;

use super::varint::{self, VarintError};
use crate::Status;

/// Why a parse stopped.
#[derive(Debug)]
pub(crate) enum Stop {
    /// The input ends before the item does; at least this many bytes in all are needed.
    Incomplete(usize),
    /// The input is malformed or too large.
    Invalid(Status),
}

impl From<Status> for Stop {
    fn from(status: Status) -> Stop {
        Stop::Invalid(status)
    }
}

impl Stop {
    /// The error for a complete message that ended before its content did.
    pub(crate) fn truncated(self, what: &str) -> Status {
        match self {
            Stop::Incomplete(_) => Status::protocol_error(format!("truncated {what}")),
            Stop::Invalid(status) => status,
        }
    }
}

pub(crate) struct Cursor<'a> {
    src: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(src: &'a [u8]) -> Self {
        Cursor { src, pos: 0 }
    }

    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.src.len() - self.pos
    }

    pub(crate) fn u8(&mut self) -> Result<u8, Stop> {
        let byte = *self
            .src
            .get(self.pos)
            .ok_or(Stop::Incomplete(self.pos + 1))?;
        self.pos += 1;
        Ok(byte)
    }

    pub(crate) fn u16_le(&mut self) -> Result<u16, Stop> {
        let range = self.take(2)?;
        Ok(u16::from_le_bytes([
            self.src[range.start],
            self.src[range.start + 1],
        ]))
    }

    pub(crate) fn uvarint(&mut self, what: &str) -> Result<u64, Stop> {
        match varint::get(&self.src[self.pos..]) {
            Ok((value, len)) => {
                self.pos += len;
                Ok(value)
            }
            Err(VarintError::Incomplete) => Err(Stop::Incomplete(self.src.len() + 1)),
            Err(VarintError::Overflow) => Err(Stop::Invalid(Status::protocol_error(format!(
                "{what} is not a valid varint (more than 64 bits)"
            )))),
        }
    }

    /// Reads a varint length and charges it against `budget` before anything is buffered.
    pub(crate) fn length(&mut self, what: &str, budget: &mut Budget) -> Result<usize, Stop> {
        let announced = self.uvarint(what)?;
        Ok(budget.charge(what, announced)?)
    }

    /// The range of the next `len` bytes.
    pub(crate) fn take(&mut self, len: usize) -> Result<Range<usize>, Stop> {
        let end = self.pos.saturating_add(len);
        if end > self.src.len() {
            return Err(Stop::Incomplete(end));
        }
        let range = self.pos..end;
        self.pos = end;
        Ok(range)
    }

    /// The range from here to the end of the input.
    pub(crate) fn rest(&mut self) -> Range<usize> {
        let range = self.pos..self.src.len();
        self.pos = self.src.len();
        range
    }
}

/// What is left of the size limit of one packet or handshake.
pub(crate) struct Budget {
    limit: usize,
    used: usize,
}

impl Budget {
    pub(crate) fn new(limit: usize) -> Self {
        Budget { limit, used: 0 }
    }

    pub(crate) fn charge(&mut self, what: &str, announced: u64) -> Result<usize, Status> {
        let total = (self.used as u64).saturating_add(announced);
        if total > self.limit as u64 {
            return Err(Status::request_entity_too_large(format!(
                "{what} of {announced} bytes makes {total} bytes, over the limit of {} bytes",
                self.limit
            )));
        }
        self.used = total as usize;
        // Within the limit, so it fits in usize.
        Ok(announced as usize)
    }
}
