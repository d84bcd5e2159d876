//! The one error type of broker-redis.

use std::{fmt, time::Duration};

/// Why the store could not open or do its part. Every variant's text is
/// free of secrets: URLs are shown with their password replaced by `***`,
/// and no payload, token or signing secret is ever part of one.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RedisStoreError {
    /// The URL is not one the Redis client understands.
    Url {
        /// The URL, password hidden.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// An [`Options`](crate::Options) value was refused.
    Options {
        /// What is wrong.
        reason: String,
    },
    /// Redis could not be reached (or did not answer `PING`) when the
    /// store opened.
    Connect {
        /// The URL, password hidden.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The server is older than the store needs (6.2: `XTRIM MINID`,
    /// exclusive `XRANGE` bounds).
    Version {
        /// The URL, password hidden.
        url: String,
        /// The version it reported.
        found: String,
    },
    /// A command failed: the connection dropped, Redis refused it (out of
    /// memory, read-only replica, …).
    Command {
        /// What the store was doing (`append`, `read`, …).
        op: &'static str,
        /// What Redis or the connection said.
        reason: String,
    },
    /// A command got no answer in time (Redis down, or reconnecting).
    Timeout {
        /// What the store was doing.
        op: &'static str,
        /// How long it waited.
        after: Duration,
    },
    /// A key holds something this store did not write (or no longer
    /// understands).
    Corrupt {
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

impl fmt::Display for RedisStoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedisStoreError::Url { url, reason } => {
                write!(
                    f,
                    "{url:?} is not a Redis URL this broker can use: {reason}"
                )
            }
            RedisStoreError::Options { reason } => {
                write!(f, "invalid Redis store options: {reason}")
            }
            RedisStoreError::Connect { url, reason } => {
                write!(f, "cannot reach Redis at {url}: {reason}")
            }
            RedisStoreError::Version { url, found } => write!(
                f,
                "Redis at {url} is version {found}; the broker needs 6.2 or later"
            ),
            RedisStoreError::Command { op, reason } => write!(f, "redis {op} failed: {reason}"),
            RedisStoreError::Timeout { op, after } => {
                write!(f, "redis {op} got no answer within {after:?}")
            }
            RedisStoreError::Corrupt { key, reason } => {
                write!(
                    f,
                    "redis key {key} holds what this broker did not write: {reason}"
                )
            }
        }
    }
}

impl std::error::Error for RedisStoreError {}

impl From<RedisStoreError> for broker_core::Error {
    fn from(e: RedisStoreError) -> Self {
        broker_core::Error::storage(e)
    }
}

/// `url` with its password (and any `password=`/`pass=` query value)
/// replaced by `***`, for messages and logs.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<not a URL>".to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rfind('@') {
        Some(at) => {
            let (userinfo, host) = (&authority[..at], &authority[at + 1..]);
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***@{host}"),
                // A lone userinfo may be a password (some clients read it so).
                None => format!("***@{host}"),
            }
        }
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key.to_ascii_lowercase().contains("pass") => {
                        format!("{key}=***")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// The secrets of `url` (its password, password query values), so that
/// they can be scrubbed from any error text.
pub(crate) fn secrets(url: &str) -> Vec<String> {
    let mut found = Vec::new();
    let Some((_, rest)) = url.split_once("://") else {
        return found;
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if let Some(at) = authority.rfind('@') {
        let userinfo = &authority[..at];
        let password = userinfo.split_once(':').map_or(userinfo, |(_, p)| p);
        found.push(password.to_owned());
    }
    if let Some((_, query)) = tail.split_once('?') {
        for pair in query.split('&') {
            if let Some((key, value)) = pair.split_once('=') {
                if key.to_ascii_lowercase().contains("pass") {
                    found.push(value.to_owned());
                }
            }
        }
    }
    found.retain(|s| !s.is_empty());
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact("redis://:hunter2@10.0.0.1:6380/2"),
            "redis://:***@10.0.0.1:6380/2"
        );
        assert_eq!(
            redact("rediss://app:hunter2@redis.internal"),
            "rediss://app:***@redis.internal"
        );
        assert_eq!(redact("redis://hunter2@h/"), "redis://***@h/");
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(
            redact("redis+unix:///run/redis.sock?db=1&pass=hunter2"),
            "redis+unix:///run/redis.sock?db=1&pass=***"
        );
        assert_eq!(redact("hunter2"), "<not a URL>");
        assert_eq!(secrets("redis://app:hunter2@h/"), ["hunter2"]);
        assert_eq!(secrets("redis+unix:///s?password=x1"), ["x1"]);
        assert!(secrets("redis://h:1/").is_empty());
    }
}
