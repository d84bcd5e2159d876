//! The one error type of broker-jwt: why keys could not be loaded.

use std::{fmt, io, path::PathBuf};

/// Why a [`JwtVerifier`](crate::JwtVerifier) could not be made, or could
/// not reload its files (it then keeps the keys it had).
///
/// Messages name the file and what is wrong with it, never key material.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// No secret, public key or JWKS file was configured.
    NoKeys,
    /// The HMAC secret is shorter than [`MIN_SECRET_BYTES`](crate::MIN_SECRET_BYTES).
    WeakSecret {
        /// Its length, in bytes.
        len: usize,
    },
    /// A key file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// A key file is larger than [`MAX_FILE_BYTES`](crate::MAX_FILE_BYTES).
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The public key file holds no usable public key.
    PublicKey {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The JWKS file is not a JWKS document, or holds no usable signing
    /// key.
    Jwks {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoKeys => f.write_str(
                "no JWT key configured: give a secret, a public key file or a JWKS file",
            ),
            Error::WeakSecret { len } => write!(
                f,
                "the JWT secret is {len} bytes; HS256/384/512 need at least {} \
                 (e.g. `openssl rand -base64 48`)",
                crate::MIN_SECRET_BYTES
            ),
            Error::Read { path, source } => write!(f, "{}: {source}", path.display()),
            Error::TooLarge { path } => write!(
                f,
                "{}: larger than {} bytes, not a key file",
                path.display(),
                crate::MAX_FILE_BYTES
            ),
            Error::PublicKey { path, reason } => {
                write!(f, "{}: not a usable public key: {reason}", path.display())
            }
            Error::Jwks { path, reason } => {
                write!(
                    f,
                    "{}: not a usable JWKS document: {reason}",
                    path.display()
                )
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Read { source, .. } => Some(source),
            _ => None,
        }
    }
}
