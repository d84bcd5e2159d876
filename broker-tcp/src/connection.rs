//! One session: read commands, carry them out in order, answer each.

use std::{fmt::Write as _, future::Future, io, time::Duration};

use broker_core::{Broker, Draft, Message, Read, TopicName};
use bytes::{BufMut, BytesMut};
use subtle::ConstantTimeEq;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    time::Instant,
};

use crate::{
    frame::{Command, Decoded, Decoder, READ_CHUNK},
    Error, TcpConfig,
};

/// Answers are written once this many bytes of them are buffered, or once
/// no whole command is left to answer.
const OUTPUT_HIGH: usize = 64 * 1024;
/// A fetched payload larger than this is written from the message itself
/// rather than copied into the answer buffer.
const INLINE_PAYLOAD: usize = 16 * 1024;

/// Most payload bytes one multi-message `FETCH` answers with (at least one
/// message, whatever its size): what the connection holds of the log at
/// once.
pub const FETCH_BYTES: usize = 1024 * 1024;
/// An empty read buffer that grew past this (for a large payload) is let
/// go, so an idle connection holds little.
const KEEP_CAPACITY: usize = 64 * 1024;
/// Most pipelined `PUB`s published as one batch (as the HTTP API's batch).
const MAX_BATCH: usize = 1_000;

/// Runs one session over `io` until the client closes it, an error closes
/// it, or `stop` completes (then the commands already received are
/// answered, `ERR shutting_down …` follows, and the session ends).
///
/// Commands are carried out in order; answers to pipelined commands are
/// written together once no whole command is left to answer. Pipelined
/// `PUB`s to one topic that arrived together are published as one batch
/// ([`Broker::publish_batch`]: one append to the log, so one fsync with a
/// durable store), all or nothing: each gets its `OK <offset>`, or each
/// the same `ERR`.
///
/// # Errors
///
/// Why the connection ended, when not by the client closing it between
/// commands or by `stop`: [`Error::Io`], [`Error::Idle`],
/// [`Error::Timeout`], [`Error::WriteTimeout`], [`Error::Truncated`], or a
/// framing error ([`Error::BadCommand`], [`Error::PayloadTooLarge`],
/// [`Error::LineTooLong`]) after it was answered.
///
/// # Examples
///
/// ```
/// use broker_core::{Broker, Publish};
/// use broker_tcp::{serve_connection, TcpConfig};
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// struct Nobody;
/// #[async_trait::async_trait]
/// impl broker_core::Notifier for Nobody {
///     async fn notify(&self, _: Publish) {}
/// }
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let broker = Broker::new(Nobody);
/// let (mut client, server) = tokio::io::duplex(4096);
/// client.write_all(b"FETCH orders 0\r\nHELLO\r\n").await.unwrap();
/// client.shutdown().await.unwrap();
/// let config = TcpConfig::default();
/// serve_connection(server, &broker, &config, std::future::pending()).await.unwrap();
/// let mut answers = String::new();
/// client.read_to_string(&mut answers).await.unwrap();
/// assert!(answers.starts_with("ERR unauthorized "));
/// assert!(answers.contains("\r\nERR bad_command unknown command"));
/// # });
/// ```
pub async fn serve_connection<S, F>(
    io: S,
    broker: &Broker,
    config: &TcpConfig,
    stop: F,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Future<Output = ()>,
{
    let mut session = Session {
        io,
        broker,
        config,
        input: BytesMut::with_capacity(READ_CHUNK),
        output: BytesMut::with_capacity(4 * 1024),
        decoder: Decoder::new(config.max_payload_bytes),
        token: None,
        batch: None,
    };
    session.run(stop).await
}

struct Session<'a, S> {
    io: S,
    broker: &'a Broker,
    config: &'a TcpConfig,
    /// What the client sent and was not yet decoded: at most a line, or a
    /// payload being read, and one read's worth more.
    input: BytesMut,
    /// Answers not yet written.
    output: BytesMut,
    decoder: Decoder,
    /// The token of the last `AUTH`.
    token: Option<String>,
    /// Pipelined `PUB`s to one topic, received whole and not yet
    /// published: published together, in one append to the log, before
    /// anything else is answered. Only what one read buffer held.
    batch: Option<(String, Vec<Draft>)>,
}

/// What the connection is waiting for, which decides its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    /// A command: nothing of one has come.
    Idle,
    /// The rest of a command line.
    Line,
    /// The rest of a payload.
    Payload,
}

enum Event {
    Read(io::Result<usize>),
    Deadline,
    Stop,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<'_, S> {
    async fn run<F: Future<Output = ()>>(&mut self, stop: F) -> Result<(), Error> {
        tokio::pin!(stop);
        let mut waiting = Waiting::Idle;
        let mut deadline = Instant::now() + self.config.idle_timeout;
        loop {
            // Every whole command received is answered before reading on.
            let mut answered = false;
            while let Some(decoded) = self.decoder.decode(&mut self.input, self.token.is_some()) {
                answered = true;
                match decoded {
                    Decoded::Command(Command::Pub {
                        topic,
                        payload,
                        event_type,
                    }) => {
                        let draft = Draft::new(None, payload).with_event_type(event_type);
                        self.queue(topic, draft).await;
                    }
                    Decoded::Command(command) => {
                        self.publish_batch().await;
                        self.execute(command).await?;
                    }
                    Decoded::Refused(e) => {
                        self.publish_batch().await;
                        self.refuse(&e);
                    }
                    Decoded::Fatal(e) => {
                        self.publish_batch().await;
                        self.refuse(&e);
                        self.flush().await?;
                        return Err(e);
                    }
                }
                if self.output.len() >= OUTPUT_HIGH {
                    self.flush().await?;
                }
            }
            self.publish_batch().await;
            self.flush().await?;
            if self.input.is_empty() && self.input.capacity() > KEEP_CAPACITY {
                self.input = BytesMut::new();
            }

            // The deadline runs from the start of what is awaited: a
            // client sending a line a byte at a time does not extend it.
            let now_waiting = if self.decoder.in_payload() {
                Waiting::Payload
            } else if self.input.is_empty() {
                Waiting::Idle
            } else {
                Waiting::Line
            };
            if answered || now_waiting != waiting {
                waiting = now_waiting;
                deadline = Instant::now() + self.timeout(waiting);
            }

            // At most what is wanted: a buffer that grew for a large
            // payload does not take in more commands at once than a chunk.
            let want = self.decoder.want(self.input.len());
            self.input.reserve(want);
            let mut room = (&mut self.input).limit(want);
            let event = tokio::select! {
                biased;
                () = &mut stop => Event::Stop,
                read = tokio::time::timeout_at(deadline, self.io.read_buf(&mut room)) => {
                    match read {
                        Ok(read) => Event::Read(read),
                        Err(_) => Event::Deadline,
                    }
                }
            };
            match event {
                Event::Read(Ok(0)) if waiting == Waiting::Idle => return Ok(()),
                Event::Read(Ok(0)) => return Err(Error::Truncated),
                Event::Read(Ok(_)) => {}
                Event::Read(Err(e)) => return Err(Error::Io(e)),
                Event::Deadline if waiting == Waiting::Idle => {
                    return Err(Error::Idle(self.config.idle_timeout))
                }
                Event::Deadline => {
                    let e = Error::Timeout(self.timeout(waiting));
                    self.refuse(&e);
                    let _ = self.flush().await;
                    return Err(e);
                }
                Event::Stop => {
                    self.refuse(&Error::Broker(broker_core::Error::Closed));
                    let _ = self.flush().await;
                    return Ok(());
                }
            }
        }
    }

    fn timeout(&self, waiting: Waiting) -> Duration {
        match waiting {
            Waiting::Idle => self.config.idle_timeout,
            Waiting::Line => self.config.line_timeout,
            Waiting::Payload => self.config.payload_timeout,
        }
    }

    /// Adds a `PUB` to the batch, publishing the batch first when it is
    /// for another topic or full.
    async fn queue(&mut self, topic: String, draft: Draft) {
        match &mut self.batch {
            Some((batched, drafts)) if *batched == topic && drafts.len() < MAX_BATCH => {
                drafts.push(draft);
            }
            _ => {
                self.publish_batch().await;
                self.batch = Some((topic, vec![draft]));
            }
        }
    }

    /// Publishes the batch, all or nothing, and buffers one answer per
    /// `PUB`: `OK` with consecutive offsets, or the same `ERR` for each.
    async fn publish_batch(&mut self) {
        let Some((topic, drafts)) = self.batch.take() else {
            return;
        };
        let count = drafts.len();
        match self.publish(&topic, drafts).await {
            Ok(receipt) => {
                for r in receipt.messages {
                    let _ = write!(self.output, "OK {}\r\n", r.offset);
                }
            }
            Err(e) => {
                for _ in 0..count {
                    self.refuse(&e);
                }
            }
        }
    }

    async fn publish(
        &self,
        topic: &str,
        drafts: Vec<Draft>,
    ) -> Result<broker_core::BatchReceipt, Error> {
        let token = self
            .token
            .as_deref()
            .ok_or(broker_core::Error::Unauthorized)?;
        let receipt = self.broker.publish_batch(topic, token, drafts).await?;
        Ok(receipt)
    }

    /// Carries out one command other than `PUB` and buffers its answer.
    /// Fails only when writing a large fetched payload fails.
    async fn execute(&mut self, command: Command) -> Result<(), Error> {
        match command {
            Command::Auth(token) => {
                // Checked now, so that a made-up token holds nothing: until
                // a valid AUTH, payloads are dropped as they arrive.
                let known = if self.is_admin(&token) {
                    Ok(())
                } else {
                    self.broker.recognize(&token).await
                };
                match known {
                    Ok(()) => {
                        self.token = Some(token);
                        self.output.extend_from_slice(b"OK\r\n");
                    }
                    Err(e) => {
                        self.token = None;
                        self.refuse(&Error::Broker(e));
                    }
                }
            }
            Command::Pub {
                topic,
                payload,
                event_type,
            } => {
                let draft = Draft::new(None, payload).with_event_type(event_type);
                self.queue(topic, draft).await;
                self.publish_batch().await;
            }
            Command::Fetch { topic, offset, max } => {
                match self.fetch(&topic, offset, max).await {
                    Ok(read) => {
                        let caught_up = read
                            .messages
                            .last()
                            .is_none_or(|last| last.offset() + 1 >= read.next);
                        for message in &read.messages {
                            self.write_message(message).await?;
                        }
                        // Seed 002's FETCH answers one record; a multi-message
                        // one says where the log ends once it got there.
                        if read.messages.is_empty() || (max.is_some() && caught_up) {
                            let _ = write!(self.output, "NONE {}\r\n", read.next);
                        }
                    }
                    Err(e) => self.refuse(&e),
                }
            }
        }
        Ok(())
    }

    /// Buffers (or, when large, writes) `MSG <offset> <size>` and the
    /// payload.
    async fn write_message(&mut self, message: &Message) -> Result<(), Error> {
        let payload = message.payload();
        let _ = write!(
            self.output,
            "MSG {} {}\r\n",
            message.offset(),
            payload.len()
        );
        if payload.len() <= INLINE_PAYLOAD {
            self.output.extend_from_slice(payload);
        } else {
            self.flush().await?;
            write_all(&mut self.io, payload, self.config.write_timeout).await?;
        }
        self.output.extend_from_slice(b"\r\n");
        Ok(())
    }

    /// A listener token of the topic or the admin token; never anonymous
    /// (as the HTTP API's fetch).
    async fn fetch(&self, topic: &str, offset: u64, max: Option<u32>) -> Result<Read, Error> {
        TopicName::validate(topic)?;
        let token = self
            .token
            .as_deref()
            .ok_or(broker_core::Error::Unauthorized)?;
        if !self.is_admin(token) {
            match self.broker.authorize_listener(topic, token) {
                // Issued by another replica a moment ago?
                Err(broker_core::Error::Unauthorized) if self.broker.learn_token(token).await => {
                    self.broker.authorize_listener(topic, token)?;
                }
                checked => checked?,
            }
        }
        // Without waiting; `topic_not_found` for a topic nothing is
        // registered on. One message whatever its size, or up to `max` and
        // [`FETCH_BYTES`] of payload (at least one message).
        let read = match max {
            None => {
                self.broker
                    .fetch(topic, offset, 1, 0, Duration::ZERO)
                    .await?
            }
            Some(max) => {
                self.broker
                    .fetch(topic, offset, max as usize, FETCH_BYTES, Duration::ZERO)
                    .await?
            }
        };
        Ok(read)
    }

    fn is_admin(&self, token: &str) -> bool {
        self.config
            .admin_token
            .as_ref()
            .is_some_and(|admin| bool::from(token.as_bytes().ct_eq(admin.as_bytes())))
    }

    /// Buffers `ERR <code> <message>`, on one line whatever the message
    /// holds.
    fn refuse(&mut self, error: &Error) {
        let message = error.to_string();
        let _ = write!(self.output, "ERR {} ", error.code());
        self.output.extend(
            message
                .bytes()
                .map(|b| if b.is_ascii_control() { b' ' } else { b }),
        );
        self.output.extend_from_slice(b"\r\n");
    }

    async fn flush(&mut self) -> Result<(), Error> {
        if !self.output.is_empty() {
            write_all(&mut self.io, &self.output, self.config.write_timeout).await?;
            self.output.clear();
            if self.output.capacity() > 2 * OUTPUT_HIGH {
                self.output = BytesMut::with_capacity(4 * 1024);
            }
        }
        Ok(())
    }
}

/// Writes all of `buf`, failing once a write has made no progress for
/// `timeout` (a client that does not read cannot hold the connection).
async fn write_all<S: AsyncWrite + Unpin>(
    io: &mut S,
    mut buf: &[u8],
    timeout: Duration,
) -> Result<(), Error> {
    while !buf.is_empty() {
        match tokio::time::timeout(timeout, io.write(buf)).await {
            Err(_) => return Err(Error::WriteTimeout(timeout)),
            Ok(Ok(0)) => return Err(Error::Io(io::ErrorKind::WriteZero.into())),
            Ok(Ok(n)) => buf = &buf[n..],
            Ok(Err(e)) => return Err(Error::Io(e)),
        }
    }
    match tokio::time::timeout(timeout, io.flush()).await {
        Err(_) => Err(Error::WriteTimeout(timeout)),
        Ok(result) => Ok(result?),
    }
}

#[cfg(test)]
mod tests {
    use broker_core::Publish;
    use tokio::io::{duplex, AsyncBufReadExt, BufReader};

    use super::*;

    struct Nobody;
    #[async_trait::async_trait]
    impl broker_core::Notifier for Nobody {
        async fn notify(&self, _: Publish) {}
    }

    fn config() -> TcpConfig {
        TcpConfig {
            idle_timeout: Duration::from_secs(60),
            line_timeout: Duration::from_secs(5),
            payload_timeout: Duration::from_secs(20),
            ..TcpConfig::default()
        }
    }

    /// On tokio's paused clock: a line dribbled a byte a second is cut off
    /// 5 s after its first byte, however many bytes keep coming.
    #[tokio::test(start_paused = true)]
    async fn a_dribbled_line_is_cut_off_at_its_deadline() {
        let broker = Broker::new(Nobody);
        let config = config();
        let (client, server) = duplex(1024);
        let (read, mut write) = tokio::io::split(client);
        let started = Instant::now();
        let session = serve_connection(server, &broker, &config, std::future::pending());
        let dribble = async {
            // A whole command first: the idle wait ends, nothing else.
            write.write_all(b"FETCH t x\r\n").await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            for b in b"FETCH t 0 and on and on".iter() {
                if write.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        };
        let (outcome, ()) = tokio::join!(session, dribble);
        assert!(matches!(outcome, Err(Error::Timeout(t)) if t == Duration::from_secs(5)));
        assert_eq!(started.elapsed(), Duration::from_secs(35));
        let mut lines = BufReader::new(read).lines();
        assert!(lines
            .next_line()
            .await
            .unwrap()
            .unwrap()
            .starts_with("ERR bad_command"));
        assert!(lines
            .next_line()
            .await
            .unwrap()
            .unwrap()
            .starts_with("ERR timeout"));
    }

    /// The payload has its own, longer deadline, from the end of its line;
    /// an idle connection is closed without a word.
    #[tokio::test(start_paused = true)]
    async fn payload_and_idle_deadlines() {
        let broker = Broker::new(Nobody);
        let config = config();
        let (mut client, server) = duplex(1024);
        let started = Instant::now();
        let session = serve_connection(server, &broker, &config, std::future::pending());
        let slow = async {
            client.write_all(b"PUB t 3\r\na").await.unwrap();
            tokio::time::sleep(Duration::from_secs(19)).await;
            client.write_all(b"bc\r\n").await.unwrap();
        };
        let (outcome, ()) = tokio::join!(session, slow);
        // Answered at 19 s (no AUTH), then idle for 60 s.
        assert!(matches!(outcome, Err(Error::Idle(_))), "{outcome:?}");
        assert_eq!(started.elapsed(), Duration::from_secs(79));
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("ERR unauthorized "), "{answer}");
        assert_eq!(answer.matches("\r\n").count(), 1);

        let (mut client, server) = duplex(1024);
        let session = serve_connection(server, &broker, &config, std::future::pending());
        let slow = async {
            client.write_all(b"PUB t 3\r\na").await.unwrap();
            tokio::time::sleep(Duration::from_secs(21)).await;
        };
        let (outcome, ()) = tokio::join!(session, slow);
        assert!(matches!(outcome, Err(Error::Timeout(t)) if t == Duration::from_secs(20)));
    }

    /// A client that stops reading is dropped once a write made no progress
    /// for the write timeout.
    #[tokio::test(start_paused = true)]
    async fn a_client_that_does_not_read_is_dropped() {
        let broker = Broker::new(Nobody);
        let config = config();
        let (mut client, server) = duplex(256);
        let started = Instant::now();
        let session = serve_connection(server, &broker, &config, std::future::pending());
        let flood = async {
            // Thousands of refusals, never read.
            let line = b"FETCH t 0\r\n".repeat(2_000);
            let _ = client.write_all(&line).await;
            client
        };
        let (outcome, _client) = tokio::join!(session, flood);
        assert!(
            matches!(outcome, Err(Error::WriteTimeout(_))),
            "{outcome:?}"
        );
        assert_eq!(started.elapsed(), config.write_timeout);
    }
}
