//! A TCP line protocol for the webhook broker, beside the HTTP API: an
//! adapter over [`broker_core::Broker`], as broker-http is.
//!
//! ```text
//! AUTH <token>\r\n                     -> OK\r\n
//! PUB <topic> <size>\r\n<payload>\r\n  -> OK <offset>\r\n
//! FETCH <topic> <offset>\r\n           -> MSG <offset> <size>\r\n<payload>\r\n
//!                                         or NONE <next_offset>\r\n
//! FETCH <topic> <offset> <max>\r\n     -> up to max MSG records, then
//!                                         NONE <next_offset>\r\n if it ran out
//! any refusal                          -> ERR <code> <message>\r\n
//! ```
//!
//! - `AUTH` keeps a token for the connection; each command checks it (a
//!   deregistered publisher's token stops working at once). A publisher
//!   token may `PUB` on its topic; a listener token of the topic, or the
//!   admin token ([`TcpConfig::admin_token`]), may `FETCH`.
//! - A payload is exactly `size` raw bytes (it may hold `\r\n`), at most
//!   [`TcpConfig::max_payload_bytes`].
//! - `FETCH` answers the message at `offset`, or the first one retained
//!   after it when retention removed it (the `MSG` offset shows the gap),
//!   or `NONE` with the offset the next message will get. With `<max>`
//!   (1 to [`MAX_FETCH`]) it answers up to `max` messages in a row, at most
//!   [`FETCH_BYTES`] of payload (at least one message), and ends with
//!   `NONE <next_offset>` when it reached the end of the log; cut short by
//!   `max` or the bytes, it ends after the last `MSG`, and the client asks
//!   again from that offset plus one.
//! - Error codes are broker-core's ([`broker_core::Error::code`], the same
//!   as the HTTP API's) and `bad_command`, `payload_too_large`,
//!   `line_too_long`, `timeout`; see [`Error`]. A connection stays usable
//!   after any error but those that lose the framing (a `PUB` line without
//!   a usable size, a payload over the limit, a payload not followed by
//!   `\r\n`, a line over [`MAX_LINE`]): those are answered, then the
//!   connection is closed.
//! - Commands may be pipelined; answers come in order. Pipelined `PUB`s to
//!   one topic that arrive together are appended as one batch.
//!
//! [`serve`] accepts connections until a shutdown future completes;
//! [`serve_connection`] runs one session over any byte stream (tests and
//! the fuzzer drive it with `tokio::io::duplex`). Every buffer is bounded:
//! a connection reads at most 16 KiB at a time, or the rest of one payload
//! (so it holds at most one payload and 16 KiB of commands, whole or not),
//! and writes its answers out as soon as 64 KiB of them are buffered (a
//! fetched payload over 16 KiB is written from the message, not copied).
//! No lock is held across an `.await`.
//!
//! # Examples
//!
//! ```
//! use broker_core::{Broker, Publish};
//! use broker_tcp::{serve, TcpConfig};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! struct Nobody;
//! #[async_trait::async_trait]
//! impl broker_core::Notifier for Nobody {
//!     async fn notify(&self, _: Publish) {}
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let broker = Broker::new(Nobody);
//! let publisher = broker.register_publisher("orders", "checkout").await?.item;
//! let listener = broker.register_listener("orders", "dashboard").await?.item;
//!
//! let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = socket.local_addr()?;
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let server = tokio::spawn(serve(socket, broker.clone(), TcpConfig::default(), async {
//!     let _ = stopped.await;
//! }));
//!
//! let mut client = tokio::net::TcpStream::connect(addr).await?;
//! let session = format!(
//!     "AUTH {}\r\nPUB orders 5\r\nhello\r\nAUTH {}\r\nFETCH orders 0\r\nFETCH orders 1\r\n",
//!     publisher.token().expose(),
//!     listener.token().expose(),
//! );
//! client.write_all(session.as_bytes()).await?;
//! client.shutdown().await?; // the server answers everything, then closes
//! let mut answers = String::new();
//! client.read_to_string(&mut answers).await?;
//! assert_eq!(answers, "OK\r\nOK 0\r\nOK\r\nMSG 0 5\r\nhello\r\nNONE 1\r\n");
//!
//! stop.send(()).unwrap();
//! server.await??;
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

mod connection;
mod error;
mod frame;
mod server;

use std::{fmt, time::Duration};

pub use connection::{serve_connection, FETCH_BYTES};
pub use error::Error;
pub use frame::{MAX_FETCH, MAX_LINE};
pub use server::serve;

/// Settings of the TCP protocol.
#[derive(Clone)]
pub struct TcpConfig {
    /// The admin token, which may `FETCH` any topic (compared in constant
    /// time). `None`, the default: only listener tokens may.
    pub admin_token: Option<String>,
    /// The largest `PUB` payload, in bytes; a larger size is answered
    /// `ERR payload_too_large` and the connection closed. Default 1 MiB.
    pub max_payload_bytes: usize,
    /// Connections served at once; one over it is accepted, answered
    /// `ERR limit_exceeded …` and closed. Default 10,000.
    pub max_connections: usize,
    /// A connection that sends nothing for this long between commands is
    /// closed. Default 10 s.
    pub idle_timeout: Duration,
    /// Time from a command's first byte to the end of its line; past it
    /// the connection gets `ERR timeout …` and is closed (a slowloris
    /// client). Default 10 s.
    pub line_timeout: Duration,
    /// Time from a `PUB` line to the end of its payload. Default 30 s.
    pub payload_timeout: Duration,
    /// Time a write to the client may make no progress (the client is not
    /// reading) before the connection is dropped. Default 30 s.
    pub write_timeout: Duration,
    /// After shutdown is signalled, time for connections to finish the
    /// commands they have received before they are dropped. Default 10 s.
    pub shutdown_grace: Duration,
}

impl TcpConfig {
    /// The defaults: no admin token, 1 MiB payloads, 10,000 connections,
    /// 10 s idle and line timeouts, 30 s payload and write timeouts.
    pub fn new() -> Self {
        TcpConfig {
            admin_token: None,
            max_payload_bytes: 1024 * 1024,
            max_connections: 10_000,
            idle_timeout: Duration::from_secs(10),
            line_timeout: Duration::from_secs(10),
            payload_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl Default for TcpConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for TcpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpConfig")
            .field("admin_token", &self.admin_token.as_ref().map(|_| ".."))
            .field("max_payload_bytes", &self.max_payload_bytes)
            .field("max_connections", &self.max_connections)
            .field("idle_timeout", &self.idle_timeout)
            .field("line_timeout", &self.line_timeout)
            .field("payload_timeout", &self.payload_timeout)
            .field("write_timeout", &self.write_timeout)
            .field("shutdown_grace", &self.shutdown_grace)
            .finish()
    }
}
