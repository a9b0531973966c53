//! Status codes and the error type every stmp operation returns.

use std::fmt;
use std::sync::Arc;

/// A status code of STMP 1.0, sent in responses, server handshakes and Close packets.
///
/// The byte values are the ones stmp-go 1.0 puts on the wire.
///
/// ```
/// use stmp::Code;
///
/// assert_eq!(Code::from_u8(0x22), Some(Code::NotFound));
/// assert_eq!(Code::NotFound.as_u8(), 0x22);
/// assert_eq!(Code::NotFound.to_string(), "NotFound");
/// assert_eq!(Code::from_u8(0x99), None);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Code {
    /// Success.
    Ok = 0x00,
    /// An error that fits no other code.
    Unknown = 0x01,
    /// The connection broke, or the peer stopped answering.
    NetworkError = 0x02,
    /// The peer sent bytes that are not STMP.
    ProtocolError = 0x03,
    /// The request is malformed or cannot be decoded.
    BadRequest = 0x20,
    /// The caller is not authenticated or not allowed.
    Unauthorized = 0x21,
    /// No handler for the method.
    NotFound = 0x22,
    /// The call's deadline passed before its response arrived.
    RequestTimeout = 0x23,
    /// A packet is larger than the receiver accepts.
    RequestEntityTooLarge = 0x24,
    /// The receiver refuses work until the caller slows down.
    TooManyRequests = 0x25,
    /// The handler failed (or panicked).
    InternalServerError = 0x40,
    /// The server is shutting down.
    ServerShutdown = 0x41,
}

impl Code {
    /// Every code, in wire-value order.
    pub const ALL: [Code; 12] = [
        Code::Ok,
        Code::Unknown,
        Code::NetworkError,
        Code::ProtocolError,
        Code::BadRequest,
        Code::Unauthorized,
        Code::NotFound,
        Code::RequestTimeout,
        Code::RequestEntityTooLarge,
        Code::TooManyRequests,
        Code::InternalServerError,
        Code::ServerShutdown,
    ];

    /// The code for a wire byte, or `None` for a byte STMP 1.0 does not define.
    pub const fn from_u8(value: u8) -> Option<Code> {
        Some(match value {
            0x00 => Code::Ok,
            0x01 => Code::Unknown,
            0x02 => Code::NetworkError,
            0x03 => Code::ProtocolError,
            0x20 => Code::BadRequest,
            0x21 => Code::Unauthorized,
            0x22 => Code::NotFound,
            0x23 => Code::RequestTimeout,
            0x24 => Code::RequestEntityTooLarge,
            0x25 => Code::TooManyRequests,
            0x40 => Code::InternalServerError,
            0x41 => Code::ServerShutdown,
            _ => return None,
        })
    }

    /// The wire byte of this code.
    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    /// The code's name, as stmp-go spells it (`"NotFound"`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Code::Ok => "Ok",
            Code::Unknown => "Unknown",
            Code::NetworkError => "NetworkError",
            Code::ProtocolError => "ProtocolError",
            Code::BadRequest => "BadRequest",
            Code::Unauthorized => "Unauthorized",
            Code::NotFound => "NotFound",
            Code::RequestTimeout => "RequestTimeout",
            Code::RequestEntityTooLarge => "RequestEntityTooLarge",
            Code::TooManyRequests => "TooManyRequests",
            Code::InternalServerError => "InternalServerError",
            Code::ServerShutdown => "ServerShutdown",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error: a [`Code`] and a human-readable message.
///
/// Handlers return it, calls fail with it, and the wire decoders report malformed input with it
/// ([`Code::ProtocolError`]) or oversized input ([`Code::RequestEntityTooLarge`]).
///
/// ```
/// use stmp::{Code, Status};
///
/// let status = Status::not_found("no such room: lobby");
/// assert_eq!(status.code(), Code::NotFound);
/// assert_eq!(status.message(), "no such room: lobby");
/// assert_eq!(status.to_string(), "NotFound: no such room: lobby");
/// ```
///
/// ## Local failures
///
/// A status that comes from the peer (a response, a refused handshake, a Close) is only a code
/// and a message. A failure on this side — a URL that does not parse, a TLS configuration
/// rustls rejects, an address already in use, a refused TCP connect — is a status too, so
/// `connect`, `listen_*` and calls all return one type, but it keeps what caused it as its
/// [`source`](std::error::Error::source): match on the code to decide (retry a
/// `NetworkError`, fix a `BadRequest`), walk the source for the details.
///
/// ```
/// use std::error::Error;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
/// let server = stmp::Server::builder().build();
/// let error = server.listen_tcp(taken.local_addr().unwrap()).await.unwrap_err();
/// assert_eq!(error.code(), stmp::Code::NetworkError);
/// let io = error.source().and_then(|e| e.downcast_ref::<std::io::Error>()).unwrap();
/// assert_eq!(io.kind(), std::io::ErrorKind::AddrInUse);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Status {
    code: Code,
    message: String,
    /// What caused a local failure; `None` for statuses from the wire.
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

macro_rules! constructors {
    ($($(#[$doc:meta])* $name:ident => $code:ident,)*) => {
        $(
            $(#[$doc])*
            pub fn $name(message: impl Into<String>) -> Status {
                Status::new(Code::$code, message)
            }
        )*
    };
}

impl Status {
    /// A status with a code and a message.
    pub fn new(code: Code, message: impl Into<String>) -> Status {
        Status {
            code,
            message: message.into(),
            source: None,
        }
    }

    /// The same status, caused by `source` (a local failure: I/O, TLS, configuration).
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Status {
        self.source = Some(Arc::new(source));
        self
    }

    constructors! {
        /// [`Code::Unknown`] with a message.
        unknown => Unknown,
        /// [`Code::NetworkError`] with a message.
        network_error => NetworkError,
        /// [`Code::ProtocolError`] with a message.
        protocol_error => ProtocolError,
        /// [`Code::BadRequest`] with a message.
        bad_request => BadRequest,
        /// [`Code::Unauthorized`] with a message.
        unauthorized => Unauthorized,
        /// [`Code::NotFound`] with a message.
        not_found => NotFound,
        /// [`Code::RequestTimeout`] with a message.
        request_timeout => RequestTimeout,
        /// [`Code::RequestEntityTooLarge`] with a message.
        request_entity_too_large => RequestEntityTooLarge,
        /// [`Code::TooManyRequests`] with a message.
        too_many_requests => TooManyRequests,
        /// [`Code::InternalServerError`] with a message.
        internal => InternalServerError,
        /// [`Code::ServerShutdown`] with a message.
        server_shutdown => ServerShutdown,
    }

    /// The code.
    pub fn code(&self) -> Code {
        self.code
    }

    /// The message (may be empty).
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.is_empty() {
            write!(f, "{}", self.code)
        } else {
            write!(f, "{}: {}", self.code, self.message)
        }
    }
}

/// Two statuses are equal when their codes and messages are: what caused them is detail.
impl PartialEq for Status {
    fn eq(&self, other: &Status) -> bool {
        self.code == other.code && self.message == other.message
    }
}

impl Eq for Status {}

impl std::error::Error for Status {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|source| source as &(dyn std::error::Error + 'static))
    }
}

/// I/O failures are network errors: the connection they happened on is gone. An I/O error that
/// carries a `Status` (a limit enforced inside a reader) is that status.
impl From<std::io::Error> for Status {
    fn from(error: std::io::Error) -> Status {
        match error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<Status>())
        {
            Some(status) => status.clone(),
            None => Status::network_error(error.to_string()).with_source(error),
        }
    }
}

/// For functions that return `std::io::Result`: the status travels inside the I/O error, whose
/// kind is the one of the I/O error that caused it (`AddrInUse`…), or `Other`.
impl From<Status> for std::io::Error {
    fn from(status: Status) -> std::io::Error {
        let kind = std::error::Error::source(&status)
            .and_then(|source| source.downcast_ref::<std::io::Error>())
            .map_or(std::io::ErrorKind::Other, std::io::Error::kind);
        std::io::Error::new(kind, status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_through_its_byte() {
        for code in Code::ALL {
            assert_eq!(Code::from_u8(code.as_u8()), Some(code));
        }
        let defined = (0..=255u8).filter(|b| Code::from_u8(*b).is_some()).count();
        assert_eq!(defined, Code::ALL.len());
    }

    #[test]
    fn display_without_message_is_the_code_name() {
        assert_eq!(Status::new(Code::Ok, "").to_string(), "Ok");
        assert_eq!(
            Status::internal("boom").to_string(),
            "InternalServerError: boom"
        );
    }

    #[test]
    fn io_errors_become_network_errors() {
        let status: Status = std::io::Error::from(std::io::ErrorKind::ConnectionReset).into();
        assert_eq!(status.code(), Code::NetworkError);
    }

    #[test]
    fn a_local_failure_keeps_its_cause_and_an_io_error_its_kind() {
        use std::error::Error as _;
        let status = Status::from(std::io::Error::from(std::io::ErrorKind::AddrInUse));
        let cause = status.source().expect("the I/O error is the source");
        let io = cause.downcast_ref::<std::io::Error>().unwrap();
        assert_eq!(io.kind(), std::io::ErrorKind::AddrInUse);
        let back = std::io::Error::from(status.clone());
        assert_eq!(back.kind(), std::io::ErrorKind::AddrInUse);
        assert_eq!(Status::from(back), status);
        // A status from the wire has no cause.
        assert!(Status::not_found("no such room").source().is_none());
    }

    #[test]
    fn a_status_carried_in_an_io_error_comes_back() {
        let carried = Status::request_entity_too_large("inflates too far");
        let status: Status = std::io::Error::other(carried.clone()).into();
        assert_eq!(status, carried);
    }
}
