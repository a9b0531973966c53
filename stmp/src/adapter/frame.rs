//! The byte layout adapters ship between nodes: varints and length-prefixed fields, read
//! without trusting a single length (a message from the bus is peer input).

use bytes::Bytes;

use crate::Status;
use crate::wire::varint;

/// Builds a message.
#[derive(Default)]
pub(crate) struct Writer {
    out: Vec<u8>,
}

impl Writer {
    pub(crate) fn u8(&mut self, value: u8) {
        self.out.push(value);
    }

    pub(crate) fn uvarint(&mut self, value: u64) {
        varint::put(&mut self.out, value);
    }

    pub(crate) fn bytes(&mut self, value: &[u8]) {
        self.uvarint(value.len() as u64);
        self.out.extend_from_slice(value);
    }

    pub(crate) fn str(&mut self, value: &str) {
        self.bytes(value.as_bytes());
    }

    pub(crate) fn finish(self) -> Bytes {
        Bytes::from(self.out)
    }
}

/// Reads a message; every failure is a `ProtocolError` naming what was being read.
pub(crate) struct Reader {
    src: Bytes,
    at: usize,
}

fn malformed(what: &str) -> Status {
    Status::protocol_error(format!("malformed adapter message: {what}"))
}

impl Reader {
    pub(crate) fn new(src: Bytes) -> Reader {
        Reader { src, at: 0 }
    }

    fn remaining(&self) -> usize {
        self.src.len() - self.at
    }

    pub(crate) fn u8(&mut self, what: &str) -> Result<u8, Status> {
        let byte = *self.src.get(self.at).ok_or_else(|| malformed(what))?;
        self.at += 1;
        Ok(byte)
    }

    pub(crate) fn uvarint(&mut self, what: &str) -> Result<u64, Status> {
        let (value, len) = varint::get(&self.src[self.at..]).map_err(|_| malformed(what))?;
        self.at += len;
        Ok(value)
    }

    /// A count of entries that take at least `min_entry_len` bytes each, so a forged count
    /// cannot make the reader reserve more than the message could hold.
    pub(crate) fn count(&mut self, what: &str, min_entry_len: usize) -> Result<usize, Status> {
        let count = self.uvarint(what)?;
        let possible = self.remaining() / min_entry_len.max(1);
        usize::try_from(count)
            .ok()
            .filter(|count| *count <= possible)
            .ok_or_else(|| malformed(what))
    }

    pub(crate) fn bytes(&mut self, what: &str) -> Result<Bytes, Status> {
        let len = self.uvarint(what)?;
        let len = usize::try_from(len)
            .ok()
            .filter(|len| *len <= self.remaining())
            .ok_or_else(|| malformed(what))?;
        let value = self.src.slice(self.at..self.at + len);
        self.at += len;
        Ok(value)
    }

    pub(crate) fn string(&mut self, what: &str) -> Result<String, Status> {
        let bytes = self.bytes(what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| malformed(what))
    }

    /// Fails when bytes are left over: a message is read whole or not at all.
    pub(crate) fn finish(self, what: &str) -> Result<(), Status> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(malformed(&format!(
                "{} trailing bytes after {what}",
                self.remaining()
            )))
        }
    }
}
