//! What live listeners ask of a topic's log when they connect: recent
//! history (`last_n`) or a resume (`Last-Event-ID`).

use std::sync::Arc;

use crate::Message;

/// Which retained messages to replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayFrom<'a> {
    /// The last `n` retained (fewer when fewer are retained).
    Last(usize),
    /// Every retained message published after the message with this id
    /// (`Last-Event-ID`), newest [`Limits::replay_messages`](crate::Limits)
    /// at most. An id that is not of this topic's log replays the newest
    /// retained.
    After(&'a str),
}

/// Retained messages of a topic, and where they leave off.
#[derive(Debug, Clone)]
pub struct Replay {
    /// The messages, oldest first.
    pub messages: Vec<Arc<Message>>,
    /// The [offset](Message::offset) up to which the replay covers the
    /// log (`None` if it covers nothing): a listener that attached before
    /// asking for the replay skips live messages up to this one, since it
    /// has them or chose to start after them.
    pub up_to: Option<u64>,
}
