//! What live listeners ask of a topic's log when they connect: recent
//! history (`last_n`) or a resume (`Last-Event-ID`).

/// Which retained messages to replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayFrom<'a> {
    /// The last `n` retained (fewer when fewer are retained), at most
    /// [`Limits::replay_messages`](crate::Limits).
    Last(usize),
    /// Every retained message published after the message with this id
    /// (`Last-Event-ID`). An id not of the topic's log is taken as
    /// `Last(replay_messages)`.
    After(&'a str),
}

/// The offsets `[start, end)` of a topic's log to replay, `end` being the
/// log's end when the range was taken.
///
/// A listener that attached before taking the range reads it from the log
/// ([`Broker::read`](crate::Broker::read)) and skips live messages up to
/// [`Replay::up_to`]: it has them from the log, or asked to start after
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replay {
    /// The first offset to replay.
    pub start: u64,
    /// The offset after the last one to replay.
    pub end: u64,
}

impl Replay {
    /// The last offset the replay covers, if any message was ever
    /// published.
    pub fn up_to(&self) -> Option<u64> {
        self.end.checked_sub(1)
    }

    /// How many messages it replays (fewer if retention removes some
    /// meanwhile).
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether it replays nothing.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}
