//! The replay ring: the last messages of a topic, kept for live listeners
//! who ask for recent history (`last_n`) or resume (`Last-Event-ID`).

use std::{collections::VecDeque, sync::Arc};

use crate::{Limits, Message};

/// A topic's retained messages, bounded by count and by payload bytes.
///
/// Guarded by a `parking_lot` mutex in the topic's stats; `publish` takes
/// it to number a message and retain it, so the ring is always in sequence
/// order, and drops it before the notifier runs.
#[derive(Debug, Default)]
pub(crate) struct Retained {
    messages: VecDeque<Arc<Message>>,
    bytes: usize,
    /// Sequence number of the last message published on the topic, retained
    /// or not.
    last: Option<u64>,
}

impl Retained {
    /// Retains `message`, evicting the oldest ones past the limits.
    pub(crate) fn push(&mut self, message: &Arc<Message>, limits: &Limits) {
        self.last = Some(message.seq);
        let size = message.payload.len();
        if limits.replay_messages == 0 || size > limits.replay_bytes {
            return;
        }
        while self.messages.len() >= limits.replay_messages
            || self.bytes + size > limits.replay_bytes
        {
            let Some(old) = self.messages.pop_front() else {
                break;
            };
            self.bytes -= old.payload.len();
        }
        self.bytes += size;
        self.messages.push_back(message.clone());
    }

    /// The messages `from` asks for, and the sequence number of the last
    /// message published so far.
    pub(crate) fn replay(&self, from: &ReplayFrom<'_>, prefix: &str) -> Replay {
        let messages = match *from {
            ReplayFrom::Last(n) => {
                let skip = self.messages.len().saturating_sub(n);
                self.messages.iter().skip(skip).cloned().collect()
            }
            ReplayFrom::After(id) => match parse_seq(id, prefix) {
                Some(seq) => self
                    .messages
                    .iter()
                    .filter(|m| m.seq > seq)
                    .cloned()
                    .collect(),
                // An id this broker did not issue (another process, or a
                // restart): all that is retained is newer, as far as we
                // can tell.
                None => self.messages.iter().cloned().collect(),
            },
        };
        Replay {
            messages,
            up_to: self.last,
        }
    }
}

/// The sequence number in one of this broker's message ids.
fn parse_seq(id: &str, prefix: &str) -> Option<u64> {
    let hex = id.strip_prefix("msg_")?.strip_prefix(prefix)?;
    (hex.len() == 12)
        .then(|| u64::from_str_radix(hex, 16).ok())
        .flatten()
}

/// Which retained messages to replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayFrom<'a> {
    /// The last `n` retained (fewer when fewer are retained).
    Last(usize),
    /// Every retained message published after the message with this id
    /// (`Last-Event-ID`). An id that is not one of this broker's replays
    /// everything retained.
    After(&'a str),
}

/// Retained messages of a topic, and where they leave off.
#[derive(Debug, Clone)]
pub struct Replay {
    /// The messages, oldest first.
    pub messages: Vec<Arc<Message>>,
    /// The [sequence](Message::sequence) of the last message published on
    /// the topic when the replay was taken, retained or not (`None` if none
    /// was). A listener that attached before asking for the replay skips
    /// live messages up to this one: it has them, or they predate it.
    pub up_to: Option<u64>,
}
