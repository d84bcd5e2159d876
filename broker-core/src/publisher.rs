//! Registered publishers.

use crate::{secret::PublisherToken, Error, Limits, TopicName};

/// A publisher registered on a topic. Only its token may publish there.
#[derive(Debug)]
pub struct Publisher {
    pub(crate) id: String,
    pub(crate) topic: TopicName,
    pub(crate) name: String,
    pub(crate) token: PublisherToken,
}

impl Publisher {
    /// The publisher's id (`pub_…`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The topic it may publish to.
    pub fn topic(&self) -> &TopicName {
        &self.topic
    }

    /// The name it was registered with; unique on its topic.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its bearer token.
    pub fn token(&self) -> &PublisherToken {
        &self.token
    }
}

pub(crate) fn validate_name(name: &str, limits: &Limits) -> Result<(), Error> {
    let reason = if name.is_empty() {
        "it must not be empty"
    } else if name.len() > limits.max_publisher_name_len {
        "it is too long"
    } else if name.chars().any(char::is_control) {
        "it must not hold control characters"
    } else {
        return Ok(());
    };
    Err(Error::InvalidPublisherName { reason })
}
