//! The one error type of broker-core.

use std::fmt;

/// Everything a [`Broker`](crate::Broker) operation can refuse.
///
/// Each variant's `Display` is a sentence a user can act on; the HTTP layer
/// maps variants to status codes in one place.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The topic name is not 1–128 characters of `[A-Za-z0-9._-]`.
    InvalidTopic {
        /// Why the name was refused.
        reason: &'static str,
    },
    /// The event type is not 1–128 characters of `[A-Za-z0-9._:-]`.
    InvalidEventType {
        /// Why it was refused.
        reason: &'static str,
    },
    /// The idempotency key is not 1–255 printable ASCII characters.
    InvalidIdempotencyKey {
        /// Why it was refused.
        reason: &'static str,
    },
    /// Only the broker publishes on this topic (`broker.events`): no
    /// publisher is registered there and no publish taken.
    ReservedTopic,
    /// A token's scope, as asked of the minter, does not parse: an entry
    /// other than `admin` or `publish:`/`listen:`/`manage:` with a topic
    /// or a prefix ending in `*`.
    InvalidScope {
        /// Why, naming the entry.
        reason: String,
    },
    /// A minted token's lifetime is zero, or longer than the minter's
    /// longest.
    InvalidTtl {
        /// Why.
        reason: String,
    },
    /// A minted token's subject is not 1-255 printable ASCII characters.
    InvalidSubject {
        /// Why.
        reason: String,
    },
    /// The minter could not sign a token.
    TokenNotMinted {
        /// Why.
        reason: String,
    },
    /// The idempotency key was used on this topic within the window for
    /// a message with another payload or event type.
    IdempotencyKeyReused,
    /// A filter's event types or expression were refused.
    InvalidFilter {
        /// Why, naming the part refused (a CEL parse error says where).
        reason: String,
    },
    /// The publisher name is empty, too long or holds control characters.
    InvalidPublisherName {
        /// Why the name was refused.
        reason: &'static str,
    },
    /// The listener name is empty, too long or holds control characters.
    InvalidListenerName {
        /// Why the name was refused.
        reason: &'static str,
    },
    /// The subscriber's URL, method or headers were refused.
    InvalidEndpoint {
        /// Why the endpoint was refused.
        reason: String,
    },
    /// No topic of that name is registered.
    TopicNotFound,
    /// A topic of that name exists already (explicit creation).
    TopicExists,
    /// No consumer group of that name is on the topic.
    GroupNotFound,
    /// The group's name or settings were refused.
    InvalidGroup {
        /// Why.
        reason: &'static str,
    },
    /// No publisher with that id is registered on the topic.
    PublisherNotFound,
    /// No subscriber with that id is registered on the topic.
    SubscriberNotFound,
    /// No listener with that id is registered on the topic.
    ListenerNotFound,
    /// The topic's log holds no message with that id (never published,
    /// or no longer retained).
    MessageNotFound,
    /// The publisher token is missing, malformed or unknown.
    Unauthorized,
    /// The publisher token is valid, but for another topic.
    Forbidden,
    /// A token the registry did not issue (a JWT, checked by the broker's
    /// [`TokenVerifier`](crate::TokenVerifier)) was refused.
    InvalidToken {
        /// Why: expired, bad signature, wrong issuer, …
        reason: crate::TokenRejection,
    },
    /// A valid token whose [`Grants`](crate::Grants) do not cover the
    /// call.
    InsufficientScope {
        /// The scope entry the call needs (`publish:orders`, `admin`).
        needed: String,
    },
    /// A store shared by several processes holds a registration of the
    /// same publisher or listener name, or subscriber method and URL,
    /// under another id (made by another process at the same moment). The
    /// broker takes that one instead; a caller should not see this.
    AlreadyRegistered {
        /// The id of the registration the store holds.
        id: String,
    },
    /// A subscriber with the same method and URL exists with other settings.
    SubscriberConflict {
        /// The id of the existing subscriber.
        existing: String,
    },
    /// A configured registry limit would be exceeded.
    LimitExceeded {
        /// What is limited, e.g. "topics".
        what: &'static str,
        /// The configured limit.
        limit: usize,
    },
    /// The broker is shutting down and accepts no more publishes.
    Closed,
    /// The store could not do its part (an I/O error, a full disk, a
    /// remote store out of reach): nothing was changed or acknowledged.
    Storage {
        /// What failed, for the operator (no secrets).
        reason: String,
    },
    /// The broker holds more message bytes than its
    /// [`MemoryBudget`](crate::MemoryBudget) allows in what it cannot
    /// evict (deliveries in flight): a publish is refused until some
    /// finish. Nothing was changed; retry shortly.
    Overloaded {
        /// The bytes held.
        used: usize,
        /// The budget's limit.
        limit: usize,
    },
}

impl Error {
    /// The machine-readable code of this error, the same in every adapter
    /// (the HTTP API's JSON `code`, the TCP protocol's `ERR <code>`).
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidTopic { .. } => "invalid_topic",
            Error::InvalidEventType { .. } => "invalid_event_type",
            Error::InvalidIdempotencyKey { .. } => "invalid_idempotency_key",
            Error::IdempotencyKeyReused => "idempotency_key_reused",
            Error::ReservedTopic => "reserved_topic",
            Error::InvalidScope { .. } => "invalid_scope",
            Error::InvalidTtl { .. } => "invalid_ttl",
            Error::InvalidSubject { .. } => "invalid_subject",
            Error::TokenNotMinted { .. } => "token_not_minted",
            Error::InvalidFilter { .. } => "invalid_filter",
            Error::InvalidPublisherName { .. } => "invalid_publisher_name",
            Error::InvalidListenerName { .. } => "invalid_listener_name",
            Error::InvalidEndpoint { .. } => "invalid_endpoint",
            Error::TopicNotFound => "topic_not_found",
            Error::TopicExists => "topic_exists",
            Error::GroupNotFound => "group_not_found",
            Error::InvalidGroup { .. } => "invalid_group",
            Error::PublisherNotFound => "publisher_not_found",
            Error::SubscriberNotFound => "subscriber_not_found",
            Error::MessageNotFound => "message_not_found",
            Error::ListenerNotFound => "listener_not_found",
            Error::Unauthorized => "unauthorized",
            Error::Forbidden => "forbidden",
            Error::InvalidToken { .. } => "unauthorized",
            Error::InsufficientScope { .. } => "forbidden",
            Error::SubscriberConflict { .. } => "subscriber_conflict",
            Error::AlreadyRegistered { .. } => "already_registered",
            Error::LimitExceeded { .. } => "limit_exceeded",
            Error::Closed => "shutting_down",
            Error::Storage { .. } => "storage_unavailable",
            Error::Overloaded { .. } => "overloaded",
        }
    }

    /// An [`Error::Storage`] from anything displayable.
    pub fn storage(reason: impl fmt::Display) -> Self {
        Error::Storage {
            reason: reason.to_string(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidTopic { reason } => write!(f, "invalid topic name: {reason}"),
            Error::InvalidEventType { reason } => write!(f, "invalid event type: {reason}"),
            Error::InvalidIdempotencyKey { reason } => {
                write!(f, "invalid idempotency key: {reason}")
            }
            Error::InvalidScope { reason } => write!(f, "invalid scope: {reason}"),
            Error::InvalidTtl { reason } => write!(f, "invalid ttl: {reason}"),
            Error::InvalidSubject { reason } => write!(f, "invalid subject: {reason}"),
            Error::TokenNotMinted { reason } => write!(f, "the token was not minted: {reason}"),
            Error::ReservedTopic => f.write_str(
                "only the broker publishes on broker.events: no publisher may register or publish there",
            ),
            Error::IdempotencyKeyReused => f.write_str(
                "this idempotency key was used on this topic for a message with another payload or event type",
            ),
            Error::InvalidFilter { reason } => write!(f, "invalid filter: {reason}"),
            Error::InvalidPublisherName { reason } => {
                write!(f, "invalid publisher name: {reason}")
            }
            Error::InvalidListenerName { reason } => write!(f, "invalid listener name: {reason}"),
            Error::InvalidEndpoint { reason } => write!(f, "invalid subscriber endpoint: {reason}"),
            Error::TopicNotFound => f.write_str("no topic of that name is registered"),
            Error::TopicExists => f.write_str("a topic of that name exists already"),
            Error::GroupNotFound => f.write_str("no consumer group of that name is on this topic"),
            Error::InvalidGroup { reason } => write!(f, "invalid group: {reason}"),
            Error::PublisherNotFound => {
                f.write_str("no publisher with that id is registered on this topic")
            }
            Error::SubscriberNotFound => {
                f.write_str("no subscriber with that id is registered on this topic")
            }
            Error::MessageNotFound => f.write_str(
                "this topic's log holds no message with that id (never published, or no longer retained)",
            ),
            Error::ListenerNotFound => {
                f.write_str("no listener with that id is registered on this topic")
            }
            Error::Unauthorized => f.write_str(
                "a valid publisher token is required: send `Authorization: Bearer <token>` \
                 or `X-API-Key: <token>`",
            ),
            Error::Forbidden => f.write_str("this publisher token is not valid for this topic"),
            Error::InvalidToken { reason } => write!(f, "the token was refused: {reason}"),
            Error::InsufficientScope { needed } => {
                write!(
                    f,
                    "the token's scope does not grant `{needed}` for this call"
                )
            }
            Error::AlreadyRegistered { id } => write!(
                f,
                "{id} was registered the same way by another replica at the same moment; \
                 try again"
            ),
            Error::SubscriberConflict { existing } => write!(
                f,
                "subscriber {existing} already has this method and URL with other settings; \
                 change them with PATCH on the subscriber"
            ),
            Error::LimitExceeded { what, limit } => {
                write!(f, "limit reached: at most {limit} {what}")
            }
            Error::Closed => f.write_str("the broker is shutting down and accepts no publishes"),
            Error::Storage { reason } => write!(f, "storage unavailable: {reason}"),
            Error::Overloaded { used, limit } => write!(
                f,
                "the broker holds {used} bytes of messages in flight, over its memory budget \
                 of {limit}: retry shortly"
            ),
        }
    }
}

impl std::error::Error for Error {}
