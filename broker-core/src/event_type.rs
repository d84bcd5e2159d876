//! Validated event types: what kind of thing a message says happened
//! (`invoice.paid`), for subscribers to filter on.

use std::{borrow::Borrow, fmt, sync::Arc};

use crate::Error;

/// The longest event type accepted, in bytes.
pub const MAX_EVENT_TYPE_LEN: usize = 128;

/// A validated event type: 1–128 characters of `[A-Za-z0-9._:-]`.
///
/// Cheap to clone (an `Arc<str>`).
///
/// # Examples
///
/// ```
/// use broker_core::EventType;
///
/// assert_eq!(EventType::new("invoice.paid").unwrap().as_str(), "invoice.paid");
/// assert!(EventType::new("invoice paid").is_err());
/// assert!(EventType::new("").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventType(Arc<str>);

impl EventType {
    /// Validates `name`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidEventType`] when it is empty, longer than
    /// [`MAX_EVENT_TYPE_LEN`], or holds a character outside
    /// `[A-Za-z0-9._:-]`.
    pub fn new(name: &str) -> Result<Self, Error> {
        validate(name)?;
        Ok(EventType(Arc::from(name)))
    }

    /// The event type as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether `b` may be part of an event type.
pub(crate) fn allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')
}

fn validate(name: &str) -> Result<(), Error> {
    let reason = if name.is_empty() {
        "it must not be empty"
    } else if name.len() > MAX_EVENT_TYPE_LEN {
        "it must be at most 128 characters"
    } else if !name.bytes().all(allowed) {
        "it may only hold the characters A-Z, a-z, 0-9, '.', '_', ':' and '-'"
    } else {
        return Ok(());
    };
    Err(Error::InvalidEventType { reason })
}

impl fmt::Debug for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Borrow<str> for EventType {
    fn borrow(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet_and_nothing_else() {
        for ok in ["a", "invoice.paid", "A-z_0.9:x", &"x".repeat(128)] {
            assert!(EventType::new(ok).is_ok(), "{ok:?} should be valid");
        }
        for bad in ["", " ", "a b", "a/b", "é", "a*", &"x".repeat(129), "a\n"] {
            assert!(
                matches!(EventType::new(bad), Err(Error::InvalidEventType { .. })),
                "{bad:?} should be refused"
            );
        }
    }
}
