//! Registered publishers and listeners: named bearer tokens, each good for
//! one role on one topic.

use crate::{secret::Token, Error, Limits, TopicName};

/// What a credential lets its holder do on its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Publish messages ([`Publisher`]).
    Publish,
    /// Receive the topic's messages live, over Server-Sent Events or a
    /// WebSocket ([`Listener`]).
    Listen,
}

impl Role {
    /// The kind of registration of this role, whose prefix its ids (and
    /// so its tokens) start with.
    pub(crate) fn kind(self) -> crate::RecordKind {
        match self {
            Role::Publish => crate::RecordKind::Publisher,
            Role::Listen => crate::RecordKind::Listener,
        }
    }

    pub(crate) fn invalid_name(self, reason: &'static str) -> Error {
        match self {
            Role::Publish => Error::InvalidPublisherName { reason },
            Role::Listen => Error::InvalidListenerName { reason },
        }
    }

    pub(crate) fn not_found(self) -> Error {
        match self {
            Role::Publish => Error::PublisherNotFound,
            Role::Listen => Error::ListenerNotFound,
        }
    }

    pub(crate) fn limit(self, limits: &Limits) -> Error {
        match self {
            Role::Publish => Error::LimitExceeded {
                what: "publishers on a topic",
                limit: limits.max_publishers_per_topic,
            },
            Role::Listen => Error::LimitExceeded {
                what: "listeners on a topic",
                limit: limits.max_listeners_per_topic,
            },
        }
    }

    pub(crate) fn max_per_topic(self, limits: &Limits) -> usize {
        match self {
            Role::Publish => limits.max_publishers_per_topic,
            Role::Listen => limits.max_listeners_per_topic,
        }
    }
}

/// A named bearer token registered on a topic for one [`Role`].
///
/// Registration is idempotent per (topic, role, name): replaying it returns
/// the same id and token.
#[derive(Debug)]
pub struct Credential {
    pub(crate) id: String,
    pub(crate) topic: TopicName,
    pub(crate) name: String,
    pub(crate) role: Role,
    pub(crate) token: Token,
}

/// A publisher registered on a topic: only its token may publish there.
pub type Publisher = Credential;

/// A listener registered on a topic: its token may receive the topic's
/// messages live (Server-Sent Events, WebSocket), never publish.
pub type Listener = Credential;

impl Credential {
    /// The id (`pub_…` for a publisher, `lis_…` for a listener).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The topic it is good for.
    pub fn topic(&self) -> &TopicName {
        &self.topic
    }

    /// The name it was registered with; unique per topic and role.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What it lets its holder do.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Its bearer token.
    pub fn token(&self) -> &Token {
        &self.token
    }
}

pub(crate) fn validate_name(name: &str, role: Role, limits: &Limits) -> Result<(), Error> {
    let reason = if name.is_empty() {
        "it must not be empty"
    } else if name.len() > limits.max_publisher_name_len {
        "it is too long"
    } else if name.chars().any(char::is_control) {
        "it must not hold control characters"
    } else {
        return Ok(());
    };
    Err(role.invalid_name(reason))
}
