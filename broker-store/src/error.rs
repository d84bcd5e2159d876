//! The one error type of broker-store.

use std::{fmt, io, path::PathBuf};

/// Why the store could not open or do its part.
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreError {
    /// Another process holds the data directory.
    Locked {
        /// The data directory.
        path: PathBuf,
        /// What its `LOCK` file says of the holder (`pid N`).
        holder: String,
    },
    /// The directory holds a format this build does not know.
    Format {
        /// The file that says so.
        path: PathBuf,
        /// What was found.
        found: String,
    },
    /// A file is damaged beyond a torn tail.
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file operation failed.
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The registry database failed.
    Registry {
        /// The database file.
        path: PathBuf,
        /// redb's error.
        reason: String,
    },
    /// An earlier fsync of this log failed: it takes no more appends until
    /// the broker restarts (and recovers what is really on disk).
    Failed {
        /// The topic's log directory.
        path: PathBuf,
    },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Locked { path, holder } => write!(
                f,
                "the data directory {} is in use by another broker ({}); stop it first or use another --data-dir",
                path.display(),
                if holder.is_empty() { "unknown process" } else { holder }
            ),
            StoreError::Format { path, found } => write!(
                f,
                "{} is not in a format this broker knows (found: {found:?}); refusing to guess",
                path.display()
            ),
            StoreError::Corrupt { path, reason } => {
                write!(f, "{} is damaged: {reason}", path.display())
            }
            StoreError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            StoreError::Registry { path, reason } => write!(f, "{}: {reason}", path.display()),
            StoreError::Failed { path } => write!(
                f,
                "an fsync under {} failed earlier; restart the broker to recover",
                path.display()
            ),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<StoreError> for broker_core::Error {
    fn from(e: StoreError) -> Self {
        broker_core::Error::storage(e)
    }
}
