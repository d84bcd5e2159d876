//! Registry limits: every collection the broker keeps is bounded.

/// Bounds on what the registry accepts. Exceeding one is refused with
/// [`Error::LimitExceeded`](crate::Error::LimitExceeded) (or
/// [`Error::InvalidEndpoint`](crate::Error::InvalidEndpoint) for endpoint
/// sizes); nothing already registered is affected.
///
/// # Examples
///
/// ```
/// use broker_core::Limits;
///
/// let limits = Limits { max_topics: 100, ..Limits::default() };
/// assert_eq!(limits.max_subscribers_per_topic, 100_000);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Topics registered at once (a topic exists while it has a publisher,
    /// a listener or a subscriber). Default 10,000.
    pub max_topics: usize,
    /// Publishers on one topic. Default 1,000.
    pub max_publishers_per_topic: usize,
    /// Listeners (live subscribers' credentials) on one topic. Default
    /// 1,000.
    pub max_listeners_per_topic: usize,
    /// Subscribers on one topic. Default 100,000.
    pub max_subscribers_per_topic: usize,
    /// Length of a subscriber URL in bytes. Default 2,048.
    pub max_url_len: usize,
    /// Number of custom headers on one subscriber. Default 32.
    pub max_headers: usize,
    /// Sum of the lengths of a subscriber's header names and values, in
    /// bytes. Default 8 KiB.
    pub max_header_bytes: usize,
    /// Most messages a live listener's `last_n` replays (and what an id
    /// not of the topic's log replays); 0 replays none. A `Last-Event-ID`
    /// of the log replays everything retained after it, whatever this
    /// says. Default 100.
    pub replay_messages: usize,
    /// Most payload bytes read from the log at once while replaying: what
    /// one replaying connection holds in memory. Default 1 MiB.
    pub replay_bytes: usize,
    /// Length of a publisher or listener name in bytes. Default 128.
    pub max_publisher_name_len: usize,
    /// Attempts a subscriber may ask for per delivery. Default 10.
    pub max_delivery_attempts: u32,
    /// Dead letters kept per subscriber or consumer group, the oldest
    /// dropped first (counted as `dead_letter_evicted`): the one cap every
    /// store keeps to. Default [`MAX_DEAD_LETTERS`](crate::MAX_DEAD_LETTERS), 10,000.
    pub max_dead_letters: usize,
    /// Delivery attempts kept per subscriber in its attempt log, the
    /// oldest dropped first (`--attempt-log`); 0 keeps none. Default
    /// 1,000.
    pub attempt_log: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_topics: 10_000,
            max_publishers_per_topic: 1_000,
            max_listeners_per_topic: 1_000,
            max_subscribers_per_topic: 100_000,
            replay_messages: 100,
            replay_bytes: 1024 * 1024,
            max_url_len: 2_048,
            max_headers: 32,
            max_header_bytes: 8 * 1024,
            max_publisher_name_len: 128,
            max_delivery_attempts: 10,
            max_dead_letters: crate::MAX_DEAD_LETTERS,
            attempt_log: 1_000,
        }
    }
}
