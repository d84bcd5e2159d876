//! Validated topic names.

use std::{borrow::Borrow, fmt, sync::Arc};

use crate::Error;

/// The longest topic name accepted, in bytes.
pub const MAX_TOPIC_LEN: usize = 128;

/// A validated topic name: 1–128 characters of `[A-Za-z0-9._-]`, and neither
/// `.` nor `..` (which proxies and clients rewrite as path segments).
///
/// Cheap to clone (an `Arc<str>`).
///
/// # Examples
///
/// ```
/// use broker_core::TopicName;
///
/// assert_eq!(TopicName::new("orders.created").unwrap().as_str(), "orders.created");
/// assert!(TopicName::new("a/b").is_err());
/// assert!(TopicName::new("..").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(Arc<str>);

impl TopicName {
    /// Validates `name`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`] when the name is empty, longer than
    /// [`MAX_TOPIC_LEN`], holds a character outside `[A-Za-z0-9._-]`, or is
    /// `.` or `..`.
    pub fn new(name: &str) -> Result<Self, Error> {
        validate(name)?;
        Ok(TopicName(Arc::from(name)))
    }

    /// Checks `name` without keeping it (no allocation).
    ///
    /// # Errors
    ///
    /// As [`TopicName::new`].
    pub fn validate(name: &str) -> Result<(), Error> {
        validate(name)
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether `prefix` could begin a topic name: at most 128 characters of
/// a topic's own (a scope's `manage:acme.*` names the prefix `acme.`).
pub(crate) fn validate_prefix(prefix: &str) -> bool {
    prefix.len() < MAX_TOPIC_LEN
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

pub(crate) fn validate(name: &str) -> Result<(), Error> {
    let reason = if name.is_empty() {
        "it must not be empty"
    } else if name.len() > MAX_TOPIC_LEN {
        "it must be at most 128 characters"
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        "it may only hold the characters A-Z, a-z, 0-9, '.', '_' and '-'"
    } else if name == "." || name == ".." {
        "'.' and '..' are reserved"
    } else {
        return Ok(());
    };
    Err(Error::InvalidTopic { reason })
}

impl fmt::Debug for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Borrow<str> for TopicName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        for ok in ["a", "A-z_0.9", &"x".repeat(128), "..a", "a.."] {
            assert!(TopicName::new(ok).is_ok(), "{ok:?} should be valid");
        }
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            "",
            ".",
            "..",
            &"x".repeat(129),
            "a/b",
            "%2F",
            "caf\u{e9}",
            "a b",
            "a\nb",
            "a\0",
        ] {
            assert!(
                matches!(TopicName::new(bad), Err(Error::InvalidTopic { .. })),
                "{bad:?} should be refused"
            );
        }
    }
}
