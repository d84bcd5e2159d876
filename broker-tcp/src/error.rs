//! The one error type of broker-tcp: what a command is answered with
//! (`ERR <code> <message>`) and why a connection ended.

use std::{fmt, io, time::Duration};

/// Everything the protocol refuses, and every way a connection ends badly.
///
/// The variants a client sees on the wire as `ERR <code> <message>` are
/// [`Broker`](Error::Broker) (with broker-core's codes, the same as the
/// HTTP API's), [`BadCommand`](Error::BadCommand),
/// [`PayloadTooLarge`](Error::PayloadTooLarge),
/// [`LineTooLong`](Error::LineTooLong) and [`Timeout`](Error::Timeout); the
/// others only end a connection ([`serve_connection`](crate::serve_connection)
/// returns them).
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The broker refused the command (unauthorized, forbidden,
    /// invalid_topic, topic_not_found, shutting_down, overloaded,
    /// storage_unavailable, limit_exceeded, …).
    Broker(broker_core::Error),
    /// An unknown verb, the wrong number of arguments, or a size or offset
    /// that is not a number.
    BadCommand(&'static str),
    /// A `PUB` announced a payload over the limit.
    PayloadTooLarge {
        /// The size announced.
        size: u64,
        /// The largest payload accepted.
        limit: usize,
    },
    /// A command line longer than [`MAX_LINE`](crate::MAX_LINE) bytes.
    LineTooLong,
    /// A command did not arrive whole within its deadline (the line within
    /// [`TcpConfig::line_timeout`](crate::TcpConfig::line_timeout) of its
    /// first byte, a payload within
    /// [`TcpConfig::payload_timeout`](crate::TcpConfig::payload_timeout) of
    /// its line).
    Timeout(Duration),
    /// The client sent nothing for the idle timeout.
    Idle(Duration),
    /// The client took no data for the write timeout.
    WriteTimeout(Duration),
    /// The client closed the connection in the middle of a command.
    Truncated,
    /// Reading from or writing to the connection failed.
    Io(io::Error),
}

impl Error {
    /// The machine-readable code: broker-core's
    /// [`code`](broker_core::Error::code) for a broker refusal, else one of
    /// this protocol's (`bad_command`, `payload_too_large`,
    /// `line_too_long`, `timeout`) or, for errors that only end a
    /// connection, `idle`, `write_timeout`, `truncated`, `io`.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Broker(e) => e.code(),
            Error::BadCommand(_) => "bad_command",
            Error::PayloadTooLarge { .. } => "payload_too_large",
            Error::LineTooLong => "line_too_long",
            Error::Timeout(_) => "timeout",
            Error::Idle(_) => "idle",
            Error::WriteTimeout(_) => "write_timeout",
            Error::Truncated => "truncated",
            Error::Io(_) => "io",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // broker-core words these for HTTP (`Authorization: Bearer`).
            Error::Broker(broker_core::Error::Unauthorized) => f.write_str(
                "AUTH with a valid token first: a publisher token to PUB, a listener token of the \
                 topic or the admin token to FETCH; or a JWT with the scope for it",
            ),
            Error::Broker(broker_core::Error::Forbidden) => {
                f.write_str("this token is not valid for this command on this topic")
            }
            Error::Broker(e) => e.fmt(f),
            Error::BadCommand(why) => f.write_str(why),
            Error::PayloadTooLarge { size, limit } => write!(
                f,
                "a payload of {size} bytes is over the limit of {limit}; closing"
            ),
            Error::LineTooLong => write!(
                f,
                "a command line is at most {} bytes; closing",
                crate::MAX_LINE
            ),
            Error::Timeout(after) => write!(
                f,
                "the command did not arrive whole within {} ms; closing",
                after.as_millis()
            ),
            Error::Idle(after) => write!(f, "nothing received for {} ms", after.as_millis()),
            Error::WriteTimeout(after) => {
                write!(f, "the client took no data for {} ms", after.as_millis())
            }
            Error::Truncated => f.write_str("the connection closed in the middle of a command"),
            Error::Io(e) => write!(f, "connection error: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Broker(e) => Some(e),
            Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<broker_core::Error> for Error {
    fn from(e: broker_core::Error) -> Self {
        Error::Broker(e)
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}
