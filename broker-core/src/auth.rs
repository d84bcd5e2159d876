//! Tokens the registry did not issue: a pluggable [`TokenVerifier`] (the
//! server's is `broker-jwt`'s, for JWTs) and the [`Grants`] a verified
//! token carries.
//!
//! A registered publisher's or listener's token is `{id}.{secret}`: one
//! dot. A JWT is `{header}.{claims}.{signature}`: two. So the shape alone
//! says which check a token goes to ([`is_jwt_shaped`]), and a JWT never
//! reaches the registry, nor a registry token the verifier.

use std::fmt;

/// Longest token handed to a verifier, in bytes; a longer JWT-shaped
/// token is refused as [`TokenRejection::Malformed`] unread.
pub const MAX_JWT_LEN: usize = 8 * 1024;

/// Checks tokens the registry did not issue, and says what they may do.
///
/// Set on a broker with [`Broker::with_token_verifier`](crate::Broker::with_token_verifier);
/// the broker hands it every [JWT-shaped](is_jwt_shaped) token presented
/// to publish or listen, and adapters hand it the ones presented for
/// management ([`Broker::verify_token`](crate::Broker::verify_token)).
/// It runs on the request's task: it must not block for long (no network).
pub trait TokenVerifier: Send + Sync + 'static {
    /// What `token` may do, or why it is refused. The rejection never
    /// holds the token.
    ///
    /// # Errors
    ///
    /// The [`TokenRejection`] saying why the token is not valid.
    fn verify(&self, token: &str) -> Result<Grants, TokenRejection>;
}

/// Why a token was refused (answered `401`, with this reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TokenRejection {
    /// Not a well-formed token: bad base64 or JSON, a missing `exp`, a
    /// claim of the wrong type, too long.
    Malformed,
    /// Its `exp` has passed (beyond the verifier's leeway).
    Expired,
    /// Its `nbf` has not come yet (beyond the verifier's leeway).
    NotYetValid,
    /// No configured key verifies its signature.
    BadSignature,
    /// Its `alg` is not one the configured keys take (`none` never is).
    WrongAlgorithm,
    /// Its `iss` is missing or not the configured issuer.
    WrongIssuer,
    /// Its `aud` is missing or does not name the configured audience.
    WrongAudience,
}

impl TokenRejection {
    /// A short machine-readable name (`expired`, `bad_signature`, …), as
    /// an HTTP `WWW-Authenticate` description or a log field may carry it.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenRejection::Malformed => "malformed",
            TokenRejection::Expired => "expired",
            TokenRejection::NotYetValid => "not_yet_valid",
            TokenRejection::BadSignature => "bad_signature",
            TokenRejection::WrongAlgorithm => "wrong_algorithm",
            TokenRejection::WrongIssuer => "wrong_issuer",
            TokenRejection::WrongAudience => "wrong_audience",
        }
    }
}

impl fmt::Display for TokenRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenRejection::Malformed => "it is malformed",
            TokenRejection::Expired => "it has expired",
            TokenRejection::NotYetValid => "it is not yet valid (nbf)",
            TokenRejection::BadSignature => "bad signature: no configured key verifies it",
            TokenRejection::WrongAlgorithm => "wrong algorithm: its alg is not accepted here",
            TokenRejection::WrongIssuer => "wrong issuer",
            TokenRejection::WrongAudience => "wrong audience",
        })
    }
}

/// Whether `token` has the shape of a JWT (compact JWS): three parts of
/// base64url separated by dots, the first two not empty (the third is
/// empty in an unsigned `alg: none` token, which the verifier refuses by
/// name).
pub fn is_jwt_shaped(token: &str) -> bool {
    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let base64url = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    !header.is_empty()
        && !claims.is_empty()
        && base64url(header)
        && base64url(claims)
        && base64url(signature)
}

/// What a verified token may do: its `scope`, parsed.
///
/// - `admin`: what the admin token may do (management, listening on and
///   reading any topic); like the admin token, not publishing;
/// - `publish:<topic>`: publish on that topic;
/// - `listen:<topic>`: listen live on it, fetch it, pull and ack in its
///   consumer groups.
///
/// A topic ending in `*` covers every topic with that prefix
/// (`publish:orders.*`, `listen:*`). Other scope entries (`openid`,
/// `email`, …) are ignored.
///
/// # Examples
///
/// ```
/// use broker_core::Grants;
///
/// let grants = Grants::from_scope("openid publish:orders.* listen:audit");
/// assert!(grants.may_publish("orders.eu"));
/// assert!(!grants.may_publish("orders"));
/// assert!(grants.may_listen("audit"));
/// assert!(!grants.may_listen("orders.eu"));
/// assert!(!grants.is_admin());
/// assert!(Grants::from_scope("admin").may_listen("anything"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    admin: bool,
    publish: Vec<Pattern>,
    listen: Vec<Pattern>,
    manage: Vec<Pattern>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Exact(String),
    Prefix(String),
}

impl Pattern {
    fn parse(text: &str) -> Option<Self> {
        if text.is_empty() {
            return None;
        }
        Some(match text.strip_suffix('*') {
            Some(prefix) => Pattern::Prefix(prefix.to_owned()),
            None => Pattern::Exact(text.to_owned()),
        })
    }

    fn covers(&self, topic: &str) -> bool {
        match self {
            Pattern::Exact(t) => t == topic,
            Pattern::Prefix(p) => topic.starts_with(p.as_str()),
        }
    }
}

impl Grants {
    /// Grants from a `scope` claim: entries separated by whitespace.
    pub fn from_scope(scope: &str) -> Self {
        Self::from_entries(scope.split_whitespace())
    }

    /// Grants from scope entries one by one (a `scope` given as a JSON
    /// array).
    pub fn from_entries<'a>(entries: impl IntoIterator<Item = &'a str>) -> Self {
        let mut grants = Grants::default();
        for entry in entries {
            if entry == "admin" {
                grants.admin = true;
            } else if let Some(p) = entry.strip_prefix("publish:").and_then(Pattern::parse) {
                grants.publish.push(p);
            } else if let Some(p) = entry.strip_prefix("listen:").and_then(Pattern::parse) {
                grants.listen.push(p);
            } else if let Some(p) = entry.strip_prefix("manage:").and_then(Pattern::parse) {
                grants.manage.push(p);
            }
        }
        grants
    }

    /// Grants from a scope the broker is asked to put in a token it mints
    /// ([`TokenRequest`](crate::TokenRequest)): strict where
    /// [`Grants::from_scope`] is lenient. Every entry must be `admin`, or
    /// `publish:`, `listen:` or `manage:` with a topic name or a prefix of
    /// one ending in `*`; at least one entry.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidScope`](crate::Error::InvalidScope) naming the
    /// first entry that is not one of those.
    ///
    /// # Examples
    ///
    /// ```
    /// use broker_core::Grants;
    ///
    /// let grants = Grants::parse_scope("manage:acme.* listen:acme.*").unwrap();
    /// assert!(grants.may_manage("acme.orders"));
    /// assert!(Grants::parse_scope("openid").is_err());
    /// assert!(Grants::parse_scope("publish:bad/topic").is_err());
    /// assert!(Grants::parse_scope("").is_err());
    /// ```
    pub fn parse_scope(scope: &str) -> Result<Self, crate::Error> {
        let bad = |reason: String| crate::Error::InvalidScope { reason };
        if scope.len() > crate::MAX_SCOPE_LEN {
            return Err(bad(format!(
                "it is longer than {} bytes",
                crate::MAX_SCOPE_LEN
            )));
        }
        let mut entries = 0;
        for entry in scope.split_whitespace() {
            entries += 1;
            if entry == "admin" {
                continue;
            }
            let topic = ["publish:", "listen:", "manage:"]
                .iter()
                .find_map(|kind| entry.strip_prefix(kind))
                .ok_or_else(|| {
                    bad(format!(
                        "{entry:?} is not admin, publish:<topic>, listen:<topic> or manage:<topic>"
                    ))
                })?;
            let valid = match topic.strip_suffix('*') {
                // A prefix: what comes before the `*` may be empty, or
                // must be made of a topic's characters.
                Some(prefix) => prefix.is_empty() || crate::topic::validate_prefix(prefix),
                None => crate::topic::validate(topic).is_ok(),
            };
            if !valid {
                return Err(bad(format!(
                    "{entry:?} names no valid topic (1-128 characters of [A-Za-z0-9._-], \
                     or a prefix of them ending in *)"
                )));
            }
        }
        if entries == 0 {
            return Err(bad("it is empty".to_owned()));
        }
        Ok(Self::from_scope(scope))
    }

    /// Whether they grant `admin`.
    pub fn is_admin(&self) -> bool {
        self.admin
    }

    /// Whether they may publish on `topic`.
    pub fn may_publish(&self, topic: &str) -> bool {
        self.publish.iter().any(|p| p.covers(topic))
    }

    /// Whether they may listen on (fetch, pull from) `topic`: `admin`
    /// may, as the admin token may.
    pub fn may_listen(&self, topic: &str) -> bool {
        self.admin || self.listen.iter().any(|p| p.covers(topic))
    }

    /// Whether they may manage `topic` (`manage:<topic>`, a tenant's
    /// scope): every management call on it, from its detail to its
    /// subscribers' dead letters. `admin` may manage every topic.
    pub fn may_manage(&self, topic: &str) -> bool {
        self.admin || self.manage.iter().any(|p| p.covers(topic))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_grant_what_they_name_and_no_more() {
        let g = Grants::from_scope("  publish:orders  listen:orders.*\tlisten:* publish: x ");
        assert!(g.may_publish("orders"));
        assert!(!g.may_publish("orders.eu"));
        assert!(!g.may_publish("x"), "`publish:` with no topic is nothing");
        assert!(g.may_listen("anything"), "listen:* covers every topic");
        assert!(!g.is_admin());
        let g = Grants::from_scope("admin");
        assert!(g.is_admin() && g.may_listen("t") && !g.may_publish("t"));
        let g = Grants::from_scope("publish:* ADMIN Listen:t");
        assert!(g.may_publish("t") && !g.is_admin() && !g.may_listen("t"));
        assert_eq!(Grants::from_scope(""), Grants::default());
        let g = Grants::from_scope("manage:acme.* listen:acme.*");
        assert!(g.may_manage("acme.orders") && !g.may_manage("other"));
        assert!(!g.may_publish("acme.orders") && !g.is_admin());
        assert!(Grants::from_scope("admin").may_manage("any"));
        let g = Grants::from_entries(["listen:a.*", "publish:b"]);
        assert!(g.may_listen("a.") && g.may_listen("a.b") && !g.may_listen("a"));
        assert!(g.may_publish("b") && !g.may_publish("b.c"));
    }

    #[test]
    fn a_scope_to_mint_is_parsed_strictly() {
        for good in [
            "admin",
            "manage:acme.* listen:acme.*",
            "publish:orders  listen:*",
            "manage:a-b_c.d",
        ] {
            assert!(Grants::parse_scope(good).is_ok(), "{good}");
        }
        assert_eq!(
            Grants::parse_scope("manage:acme.*").unwrap(),
            Grants::from_scope("manage:acme.*")
        );
        for bad in [
            "",
            "   ",
            "openid",
            "ADMIN",
            "manage:",
            "manage:a/b",
            "listen:**",
            "publish:a*b",
            "manage:..",
            "manage:acme.* write:acme",
        ] {
            let error = Grants::parse_scope(bad).unwrap_err();
            assert!(
                matches!(error, crate::Error::InvalidScope { .. }),
                "{bad}: {error}"
            );
        }
        let long = format!("manage:{}", "a".repeat(crate::MAX_SCOPE_LEN));
        assert!(Grants::parse_scope(&long).is_err());
    }

    #[test]
    fn only_three_base64url_parts_are_jwt_shaped() {
        for jwt in [
            "eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjF9.c2ln",
            "eyJhbGciOiJub25lIn0.eyJleHAiOjF9.",
            "a.b.c",
            "a-_.b.c_-",
        ] {
            assert!(is_jwt_shaped(jwt), "{jwt}");
        }
        for other in [
            "pub_0123456789abcdef01234567.c2VjcmV0LXNlY3JldA",
            "admin-token",
            "",
            "..",
            ".b.c",
            "a..c",
            "a.b.c.d",
            "a.b=.c",
            "a.b.c ",
            "a+/.b.c",
        ] {
            assert!(!is_jwt_shaped(other), "{other}");
        }
    }

    #[test]
    fn rejections_say_why_in_words_and_in_a_name() {
        let all = [
            TokenRejection::Malformed,
            TokenRejection::Expired,
            TokenRejection::NotYetValid,
            TokenRejection::BadSignature,
            TokenRejection::WrongAlgorithm,
            TokenRejection::WrongIssuer,
            TokenRejection::WrongAudience,
        ];
        let names: std::collections::HashSet<_> = all.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), all.len());
        assert_eq!(TokenRejection::Expired.to_string(), "it has expired");
    }
}
