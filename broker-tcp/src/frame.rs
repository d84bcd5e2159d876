//! Framing: the bytes a client sent, turned into commands. No I/O here:
//! [`Decoder::decode`] takes what is buffered and says what it makes.
//!
//! A command is a line ending in `\r\n` (a bare `\n` is taken too, for
//! typing at `nc`), of words separated by spaces, the verb in any case:
//!
//! - `AUTH <token>`
//! - `PUB <topic> <size> [<event_type>]`, then exactly `size` payload
//!   bytes, and `\r\n` (optional: seed 002's clients send none; a command
//!   line never starts with one, so either way is read the same)
//! - `FETCH <topic> <offset> [<max>]`

use bytes::{Buf, Bytes, BytesMut};

use crate::Error;

/// The longest command line, in bytes, without its `\r\n`. A longer one is
/// answered `ERR line_too_long` and the connection is closed (what follows
/// it cannot be framed).
pub const MAX_LINE: usize = 4096;

/// What the connection reads at once while it waits for a line.
pub(crate) const READ_CHUNK: usize = 16 * 1024;

/// The most messages one `FETCH <topic> <offset> <max>` answers with.
pub const MAX_FETCH: u32 = 1000;

/// A command, whole and well-formed (whether it is allowed is the
/// broker's to say).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Command {
    /// `AUTH <token>`
    Auth(String),
    /// `PUB <topic> <size> [<event_type>]` and its payload, copied out of
    /// the read buffer.
    Pub {
        topic: String,
        payload: Bytes,
        event_type: Option<broker_core::EventType>,
    },
    /// `FETCH <topic> <offset> [<max>]`: without `max`, one message (seed
    /// 002's command); with it, up to `max` ([`MAX_FETCH`]).
    Fetch {
        topic: String,
        offset: u64,
        max: Option<u32>,
    },
}

/// What a whole frame makes.
#[derive(Debug)]
pub(crate) enum Decoded {
    /// A command to carry out.
    Command(Command),
    /// Answer `ERR` and read on: the framing is intact.
    Refused(Error),
    /// Answer `ERR` and close: what follows cannot be framed.
    Fatal(Error),
}

/// Where the decoder is between two calls.
#[derive(Debug)]
enum State {
    /// Waiting for a command line.
    Line,
    /// A `PUB` line was read; its payload (`left` bytes more of it, when
    /// discarding) and `\r\n` are awaited. A payload already refused
    /// (`refusal`) is dropped as it comes, never held whole.
    Payload {
        topic: String,
        event_type: Option<broker_core::EventType>,
        left: usize,
        refusal: Option<Error>,
    },
}

/// Turns buffered bytes into [`Decoded`] frames, one at a time.
#[derive(Debug)]
pub(crate) struct Decoder {
    max_payload: usize,
    state: State,
    /// A payload ended with nothing after it buffered: a `\r\n` that
    /// comes next is its trailer, not an empty command line.
    trailer_due: bool,
}

impl Decoder {
    /// A decoder refusing `PUB` payloads over `max_payload` bytes.
    pub(crate) fn new(max_payload: usize) -> Self {
        Decoder {
            max_payload,
            state: State::Line,
            trailer_due: false,
        }
    }

    /// True while a `PUB`'s payload is awaited.
    pub(crate) fn in_payload(&self) -> bool {
        matches!(self.state, State::Payload { .. })
    }

    /// How many bytes the next read should have room for: all of an
    /// awaited payload that is kept (so it arrives in few reads), else a
    /// chunk. Bounded by the payload limit.
    pub(crate) fn want(&self, buffered: usize) -> usize {
        match &self.state {
            State::Payload {
                left,
                refusal: None,
                ..
            } => (left + 2).saturating_sub(buffered).max(READ_CHUNK),
            _ => READ_CHUNK,
        }
    }

    /// The next frame in `buf`, consuming it; `None` when more bytes are
    /// needed. `authenticated` says whether the connection has sent `AUTH`:
    /// without it a `PUB`'s payload is dropped as it arrives (it would be
    /// refused whatever it holds), so an anonymous client cannot make the
    /// broker hold payloads.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut, authenticated: bool) -> Option<Decoded> {
        loop {
            match &mut self.state {
                State::Line => {
                    if self.trailer_due {
                        match trailer(buf, 0) {
                            None if buf.is_empty() || buf[0] == b'\r' => return None,
                            Some(Ok(n)) => buf.advance(n),
                            _ => {}
                        }
                        self.trailer_due = false;
                    }
                    let end = match line_end(buf) {
                        Ok(Some(end)) => end,
                        Ok(None) => return None,
                        Err(e) => return Some(Decoded::Fatal(e)),
                    };
                    let parsed = self.parse(&buf[..end.content], authenticated);
                    buf.advance(end.next);
                    match parsed {
                        Parsed::Done(decoded) => return Some(decoded),
                        Parsed::Payload {
                            topic,
                            event_type,
                            size,
                            refusal,
                        } => {
                            self.state = State::Payload {
                                topic,
                                event_type,
                                left: size,
                                refusal,
                            }
                        }
                    }
                }
                State::Payload {
                    topic,
                    event_type,
                    left,
                    refusal,
                } => {
                    if refusal.is_some() {
                        // Dropped as it comes: only what is buffered is held.
                        let n = (*left).min(buf.len());
                        buf.advance(n);
                        *left -= n;
                        if *left > 0 {
                            return None;
                        }
                    }
                    let at = if refusal.is_some() { 0 } else { *left };
                    if buf.len() < at {
                        return None;
                    }
                    // The `\r\n` after the payload is optional: taken when
                    // it is there, awaited when only its `\r` is, and
                    // skipped later if it comes after a pause.
                    let trailer = if buf.len() == at {
                        self.trailer_due = true;
                        0
                    } else {
                        match trailer(buf, at) {
                            None => return None,
                            Some(Ok(n)) => n,
                            Some(Err(_)) if buf[at] != b'\r' => 0,
                            Some(Err(e)) => return Some(Decoded::Fatal(e)),
                        }
                    };
                    let decoded = match refusal.take() {
                        Some(e) => Decoded::Refused(e),
                        None => {
                            // A copy: a slice would keep the whole read
                            // buffer alive in the log, with whatever else it
                            // holds.
                            let payload = Bytes::copy_from_slice(&buf[..at]);
                            Decoded::Command(Command::Pub {
                                topic: std::mem::take(topic),
                                payload,
                                event_type: event_type.take(),
                            })
                        }
                    };
                    buf.advance(at + trailer);
                    self.state = State::Line;
                    return Some(decoded);
                }
            }
        }
    }

    fn parse(&self, line: &[u8], authenticated: bool) -> Parsed {
        let mut words = line.split(|&b| b == b' ').filter(|w| !w.is_empty());
        let verb = words.next();
        let (first, second, third) = (words.next(), words.next(), words.next());
        let refused = |why| Parsed::Done(Decoded::Refused(Error::BadCommand(why)));
        let Some(verb) = verb else {
            return refused("empty line: send AUTH, PUB or FETCH");
        };
        if verb.eq_ignore_ascii_case(b"AUTH") {
            match (first, second) {
                (Some(token), None) => Parsed::Done(Decoded::Command(Command::Auth(text(token)))),
                _ => refused("usage: AUTH <token>"),
            }
        } else if verb.eq_ignore_ascii_case(b"FETCH") {
            let max = match third.map(number) {
                None => Some(None),
                Some(Some(max)) if (1..=u64::from(MAX_FETCH)).contains(&max) => {
                    Some(Some(max as u32))
                }
                Some(_) => None,
            };
            match (first, second.and_then(number), max, words.next()) {
                (Some(topic), Some(offset), Some(max), None) => {
                    Parsed::Done(Decoded::Command(Command::Fetch {
                        topic: text(topic),
                        offset,
                        max,
                    }))
                }
                _ => refused(
                    "usage: FETCH <topic> <offset> [<max>], the offset a number, max 1-1000",
                ),
            }
        } else if verb.eq_ignore_ascii_case(b"PUB") {
            // Without a size the payload cannot be skipped: closing is the
            // only way not to read it as commands.
            let fatal = |e| Parsed::Done(Decoded::Fatal(e));
            let (Some(topic), Some(size), false) = (first, second, words.next().is_some()) else {
                return fatal(Error::BadCommand(
                    "usage: PUB <topic> <size> [<event_type>]; closing",
                ));
            };
            let Some(size) = number(size) else {
                return fatal(Error::BadCommand(
                    "usage: PUB <topic> <size> [<event_type>], the size a number; closing",
                ));
            };
            let limit = self.max_payload;
            if size > limit as u64 {
                return fatal(Error::PayloadTooLarge { size, limit });
            }
            let topic = text(topic);
            let event_type = third
                .map(|t| broker_core::EventType::new(&text(t)))
                .transpose();
            let refusal = match (broker_core::TopicName::validate(&topic), &event_type) {
                (Err(e), _) => Some(Error::Broker(e)),
                (Ok(()), Err(e)) => Some(Error::Broker(e.clone())),
                (Ok(()), Ok(_)) if !authenticated => {
                    Some(Error::Broker(broker_core::Error::Unauthorized))
                }
                (Ok(()), Ok(_)) => None,
            };
            Parsed::Payload {
                topic,
                event_type: event_type.ok().flatten(),
                size: size as usize,
                refusal,
            }
        } else {
            refused("unknown command: send AUTH, PUB or FETCH")
        }
    }
}

enum Parsed {
    Done(Decoded),
    Payload {
        topic: String,
        event_type: Option<broker_core::EventType>,
        size: usize,
        refusal: Option<Error>,
    },
}

/// Where a line ends: its content's length (without `\r\n` or `\n`) and
/// where the next frame starts.
struct LineEnd {
    content: usize,
    next: usize,
}

/// Finds the end of the line at the front of `buf`, looking no further
/// than a line may be long.
fn line_end(buf: &[u8]) -> Result<Option<LineEnd>, Error> {
    let window = &buf[..buf.len().min(MAX_LINE + 2)];
    match window.iter().position(|&b| b == b'\n') {
        Some(newline) => {
            let content = if newline > 0 && buf[newline - 1] == b'\r' {
                newline - 1
            } else {
                newline
            };
            if content > MAX_LINE {
                return Err(Error::LineTooLong);
            }
            Ok(Some(LineEnd {
                content,
                next: newline + 1,
            }))
        }
        // MAX_LINE bytes and a `\r` may still be followed by the `\n`.
        None if buf.len() > MAX_LINE + 1 => Err(Error::LineTooLong),
        None => Ok(None),
    }
}

/// The length of the `\r\n` (or `\n`) at `at`; `None` while it is not all
/// there.
fn trailer(buf: &[u8], at: usize) -> Option<Result<usize, Error>> {
    let missing =
        || Error::BadCommand("the payload is not followed by \\r\\n (is the size right?); closing");
    match buf.get(at)? {
        b'\n' => Some(Ok(1)),
        b'\r' => match buf.get(at + 1)? {
            b'\n' => Some(Ok(2)),
            _ => Some(Err(missing())),
        },
        _ => Some(Err(missing())),
    }
}

/// A decimal number of ASCII digits only (no sign, no space).
fn number(word: &[u8]) -> Option<u64> {
    if word.is_empty() || !word.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(word).ok()?.parse().ok()
}

/// A word as text; bytes that are not UTF-8 become U+FFFD, which no topic
/// or token holds, so the command is refused as such.
fn text(word: &[u8]) -> String {
    String::from_utf8_lossy(word).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8], authenticated: bool) -> (Vec<String>, BytesMut) {
        let mut decoder = Decoder::new(16);
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(d) = decoder.decode(&mut buf, authenticated) {
            out.push(match d {
                Decoded::Command(c) => format!("{c:?}"),
                Decoded::Refused(e) => format!("refused {}", e.code()),
                Decoded::Fatal(e) => {
                    // The connection closes here.
                    out.push(format!("fatal {}", e.code()));
                    break;
                }
            });
        }
        (out, buf)
    }

    #[test]
    fn decodes_each_command_and_keeps_a_partial_one() {
        let (out, rest) = decode_all(
            b"AUTH tok\r\nfetch t 7\r\nPUB t 4\r\na\r\nb\r\nPUB t 3\nxyz\nPUB t 2 invoice.paid\r\nh",
            true,
        );
        assert_eq!(
            out,
            [
                r#"Auth("tok")"#,
                r#"Fetch { topic: "t", offset: 7, max: None }"#,
                r#"Pub { topic: "t", payload: b"a\r\nb", event_type: None }"#,
                r#"Pub { topic: "t", payload: b"xyz", event_type: None }"#,
            ]
        );
        assert_eq!(&rest[..], b"h");
    }

    #[test]
    fn refuses_bad_commands_and_reads_on() {
        let (out, _) = decode_all(
            b"\r\nHELLO\r\nAUTH\r\nAUTH a b\r\nFETCH t\r\nFETCH t -1\r\nFETCH t +1\r\nFETCH t 99999999999999999999\r\nFETCH t 1 0\r\nFETCH t 1 1001\r\nFETCH t 1 x\r\nFETCH t 1 2 3\r\nFETCH t 1\r\nFETCH t 1 1000\r\n",
            true,
        );
        let mut expected = vec!["refused bad_command"; 12];
        expected.push(r#"Fetch { topic: "t", offset: 1, max: None }"#);
        expected.push(r#"Fetch { topic: "t", offset: 1, max: Some(1000) }"#);
        assert_eq!(out, expected);
    }

    #[test]
    fn an_unframable_pub_is_fatal() {
        for input in [
            &b"PUB t\r\nxx\r\n"[..],
            b"PUB t x\r\n",
            b"PUB t 1 2 3\r\n",
            b"PUB t 17\r\n",
            b"PUB t 2\r\nab\rX",
        ] {
            let (out, _) = decode_all(input, true);
            assert_eq!(out.len(), 1, "{input:?}");
            assert!(out[0].starts_with("fatal "), "{input:?}: {out:?}");
        }
        assert_eq!(
            decode_all(b"PUB t 17\r\n", true).0,
            ["fatal payload_too_large"]
        );
    }

    #[test]
    fn a_refused_payload_is_dropped_as_it_comes() {
        let mut decoder = Decoder::new(16);
        let mut buf = BytesMut::from(&b"PUB t 10\r\n01234"[..]);
        assert!(decoder.decode(&mut buf, false).is_none());
        assert!(buf.is_empty(), "held {} bytes", buf.len());
        buf.extend_from_slice(b"56789\r\nPUB bad/topic 1\r\nx\r\n");
        let d = decoder.decode(&mut buf, false);
        assert!(matches!(
            d,
            Some(Decoded::Refused(Error::Broker(
                broker_core::Error::Unauthorized
            )))
        ));
        let d = decoder.decode(&mut buf, true);
        assert!(
            matches!(d, Some(Decoded::Refused(ref e)) if e.code() == "invalid_topic"),
            "{d:?}"
        );
        assert!(buf.is_empty());
    }

    /// Seed 002's framing: no `\r\n` after the payload, whether the next
    /// command follows at once or after a pause; and an event type as
    /// the `PUB` line's last word.
    #[test]
    fn the_crlf_after_a_payload_is_optional() {
        let (out, rest) = decode_all(
            b"PUB t 3\r\nabcPUB t 2 order.created\r\nxyFETCH t 0\r\n",
            true,
        );
        assert_eq!(
            out,
            [
                r#"Pub { topic: "t", payload: b"abc", event_type: None }"#,
                r#"Pub { topic: "t", payload: b"xy", event_type: Some("order.created") }"#,
                r#"Fetch { topic: "t", offset: 0, max: None }"#,
            ]
        );
        assert!(rest.is_empty());
        // The payload ends the buffer: answered at once, and a `\r\n`
        // that comes later is its trailer, not an empty command.
        let mut decoder = Decoder::new(16);
        let mut buf = BytesMut::from(&b"PUB t 2\r\nab"[..]);
        assert!(matches!(
            decoder.decode(&mut buf, true),
            Some(Decoded::Command(Command::Pub { .. }))
        ));
        assert!(decoder.decode(&mut buf, true).is_none());
        buf.extend_from_slice(b"\r");
        assert!(decoder.decode(&mut buf, true).is_none());
        buf.extend_from_slice(b"\nFETCH t 1\r\n");
        assert!(matches!(
            decoder.decode(&mut buf, true),
            Some(Decoded::Command(Command::Fetch { offset: 1, .. }))
        ));
        // A wrong size: the rest is read as a command, and refused.
        let (out, _) = decode_all(b"PUB t 2\r\nabc\r\n", true);
        assert_eq!(
            out,
            [
                r#"Pub { topic: "t", payload: b"ab", event_type: None }"#,
                "refused bad_command",
            ]
        );
        // A bad event type: the payload is dropped, the framing kept.
        let (out, _) = decode_all(b"PUB t 2 bad/type\r\nab\r\nFETCH t 0\r\n", true);
        assert_eq!(
            out,
            [
                "refused invalid_event_type",
                r#"Fetch { topic: "t", offset: 0, max: None }"#,
            ]
        );
    }

    #[test]
    fn lines_are_bounded() {
        let mut line = vec![b'A'; MAX_LINE];
        line.extend_from_slice(b"\r\n");
        assert_eq!(decode_all(&line, true).0, ["refused bad_command"]);
        let mut decoder = Decoder::new(16);
        // Too long before any newline comes: refused without waiting.
        let mut buf = BytesMut::from(&vec![b'A'; MAX_LINE + 2][..]);
        assert!(matches!(
            decoder.decode(&mut buf, true),
            Some(Decoded::Fatal(Error::LineTooLong))
        ));
        let mut buf = BytesMut::from(&vec![b'A'; MAX_LINE + 1][..]);
        assert!(Decoder::new(16).decode(&mut buf, true).is_none());
        line.insert(0, b'A');
        assert_eq!(decode_all(&line, true).0, ["fatal line_too_long"]);
    }
}
