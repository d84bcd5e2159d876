//! Tokens the broker mints (`POST /v1/tokens`): what is asked, checked
//! here ([`TokenRequest`]), and the [`TokenMinter`] that signs it (the
//! server's is `broker-jwt`'s `JwtMinter`, whose tokens the broker's own
//! verifier accepts).

use std::time::{Duration, SystemTime};

use crate::{Error, Grants};

/// Longest `scope` a minted token carries, in bytes.
pub const MAX_SCOPE_LEN: usize = 4096;

/// Longest `subject` (the token's `sub`, who it is for), in bytes.
pub const MAX_SUBJECT_LEN: usize = 255;

/// A token to mint, checked: a scope that parses ([`Grants::parse_scope`]),
/// a lifetime within the minter's longest, a subject of printable ASCII.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use broker_core::TokenRequest;
///
/// let day = Duration::from_secs(86_400);
/// let request = TokenRequest::new("manage:acme.*", Duration::from_secs(3600), Some("acme"), day)?;
/// assert!(request.grants().may_manage("acme.orders"));
/// assert!(TokenRequest::new("manage:acme.*", 2 * day, None, day).is_err());
/// # Ok::<_, broker_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct TokenRequest {
    scope: String,
    grants: Grants,
    subject: Option<String>,
    ttl: Duration,
}

impl TokenRequest {
    /// Checks what is asked.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidScope`]; [`Error::InvalidTtl`] when `ttl` is under a
    /// second or over `max_ttl`; [`Error::InvalidSubject`] for a subject
    /// that is empty, longer than [`MAX_SUBJECT_LEN`] or not printable
    /// ASCII.
    pub fn new(
        scope: &str,
        ttl: Duration,
        subject: Option<&str>,
        max_ttl: Duration,
    ) -> Result<Self, Error> {
        let grants = Grants::parse_scope(scope)?;
        if ttl < Duration::from_secs(1) {
            return Err(Error::InvalidTtl {
                reason: "it must be at least 1s".to_owned(),
            });
        }
        if ttl > max_ttl {
            return Err(Error::InvalidTtl {
                reason: format!(
                    "it is longer than the longest this broker mints ({}, --max-token-ttl)",
                    crate::format_duration(max_ttl)
                ),
            });
        }
        if let Some(subject) = subject {
            if subject.is_empty()
                || subject.len() > MAX_SUBJECT_LEN
                || !subject.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(Error::InvalidSubject {
                    reason: format!(
                        "it must be 1-{MAX_SUBJECT_LEN} printable ASCII characters \
                         without spaces"
                    ),
                });
            }
        }
        Ok(TokenRequest {
            scope: scope.split_whitespace().collect::<Vec<_>>().join(" "),
            grants,
            subject: subject.map(str::to_owned),
            ttl,
        })
    }

    /// The scope, its entries separated by one space.
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// What the scope grants.
    pub fn grants(&self) -> &Grants {
        &self.grants
    }

    /// Who the token is for (its `sub`), if said.
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }

    /// How long the token is valid.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}

/// A token just minted.
#[derive(Clone)]
pub struct MintedToken {
    /// The token, as a client presents it (`Authorization: Bearer …`).
    pub token: String,
    /// When it stops being valid (its `exp`).
    pub expires_at: SystemTime,
}

impl std::fmt::Debug for MintedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MintedToken")
            .field("token", &"..")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Signs tokens that the broker's [`TokenVerifier`](crate::TokenVerifier)
/// accepts. It runs on the request's task: it must not block for long.
pub trait TokenMinter: Send + Sync + 'static {
    /// The longest lifetime it mints ([`TokenRequest::new`]'s `max_ttl`).
    fn max_ttl(&self) -> Duration;

    /// Signs a token for `request`.
    ///
    /// # Errors
    ///
    /// [`Error::TokenNotMinted`] when it cannot sign.
    fn mint(&self, request: &TokenRequest) -> Result<MintedToken, Error>;
}
