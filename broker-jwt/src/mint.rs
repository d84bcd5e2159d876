//! Minting: HS256 tokens signed with a secret the broker holds, which its
//! [`JwtVerifier`](crate::JwtVerifier) is given too, so every token
//! minted is one it accepts (and, with the secret shared, every replica).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use broker_core::{Error as CoreError, MintedToken, TokenMinter, TokenRequest};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde::Serialize;

use crate::{Error, MIN_SECRET_BYTES};

/// The default longest lifetime of a minted token: 30 days.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(30 * 86_400);

/// Signs tokens with an HMAC secret (HS256). Its claims: `sub` (when
/// asked), `scope`, `iat`, `exp`, a random `jti`, and the verifier's
/// `iss` and `aud` when it requires them.
#[derive(Clone)]
pub struct JwtMinter {
    key: EncodingKey,
    issuer: Option<String>,
    audience: Option<String>,
    max_ttl: Duration,
}

impl JwtMinter {
    /// A minter signing with `secret` (at least [`MIN_SECRET_BYTES`]),
    /// minting tokens valid at most `max_ttl`.
    ///
    /// # Errors
    ///
    /// [`Error::WeakSecret`].
    pub fn new(secret: &[u8], max_ttl: Duration) -> Result<Self, Error> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(Error::WeakSecret { len: secret.len() });
        }
        Ok(JwtMinter {
            key: EncodingKey::from_secret(secret),
            issuer: None,
            audience: None,
            max_ttl,
        })
    }

    /// Puts `iss` and `aud` in every token, as a verifier that requires
    /// them wants.
    #[must_use]
    pub fn with_claims(mut self, issuer: Option<String>, audience: Option<String>) -> Self {
        self.issuer = issuer;
        self.audience = audience;
        self
    }
}

impl std::fmt::Debug for JwtMinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtMinter")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("max_ttl", &self.max_ttl)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<&'a str>,
    scope: &'a str,
    iat: u64,
    exp: u64,
    jti: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

impl TokenMinter for JwtMinter {
    fn max_ttl(&self) -> Duration {
        self.max_ttl
    }

    fn mint(&self, request: &TokenRequest) -> Result<MintedToken, CoreError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let exp = now.saturating_add(request.ttl().as_secs());
        let claims = Claims {
            sub: request.subject(),
            scope: request.scope(),
            iat: now,
            exp,
            jti: generate_secret()[..32].to_owned(),
            iss: self.issuer.as_deref(),
            aud: self.audience.as_deref(),
        };
        let token = encode(&Header::new(Algorithm::HS256), &claims, &self.key).map_err(|e| {
            CoreError::TokenNotMinted {
                reason: e.to_string(),
            }
        })?;
        Ok(MintedToken {
            token,
            expires_at: UNIX_EPOCH + Duration::from_secs(exp),
        })
    }
}

/// A new signing secret: 32 random bytes as 64 hex digits, the text used
/// as the key as `--jwt-secret` would be (so it can be moved to that
/// flag as it is).
pub fn generate_secret() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use broker_core::{TokenRejection, TokenVerifier as _};

    use super::*;
    use crate::{JwtConfig, JwtVerifier};

    fn request(scope: &str, ttl: u64) -> TokenRequest {
        TokenRequest::new(
            scope,
            Duration::from_secs(ttl),
            Some("acme"),
            DEFAULT_MAX_TTL,
        )
        .unwrap()
    }

    #[test]
    fn a_minted_token_is_one_the_verifier_on_its_secret_accepts() {
        let secret = generate_secret();
        assert_eq!(secret.len(), 64);
        assert_ne!(secret, generate_secret());
        let minter = JwtMinter::new(secret.as_bytes(), DEFAULT_MAX_TTL).unwrap();
        let verifier = JwtVerifier::new(JwtConfig {
            secret: Some(secret.into_bytes()),
            ..JwtConfig::default()
        })
        .unwrap();
        let minted = minter
            .mint(&request("manage:acme.*  listen:acme.*", 3600))
            .unwrap();
        let grants = verifier.verify(&minted.token).unwrap();
        assert!(grants.may_manage("acme.orders") && grants.may_listen("acme.orders"));
        assert!(!grants.may_manage("other") && !grants.is_admin());
        let left = minted
            .expires_at
            .duration_since(SystemTime::now())
            .unwrap()
            .as_secs();
        assert!((3590..=3600).contains(&left), "{left}");

        let other = JwtVerifier::new(JwtConfig {
            secret: Some(generate_secret().into_bytes()),
            ..JwtConfig::default()
        })
        .unwrap();
        assert_eq!(
            other.verify(&minted.token).unwrap_err(),
            TokenRejection::BadSignature,
            "another key (a rotated one) refuses it"
        );
    }

    #[test]
    fn a_verifier_that_requires_iss_and_aud_accepts_what_the_minter_with_them_mints() {
        let secret = generate_secret();
        let verifier = JwtVerifier::new(JwtConfig {
            secret: Some(secret.clone().into_bytes()),
            issuer: Some("broker".into()),
            audience: Some("tenants".into()),
            ..JwtConfig::default()
        })
        .unwrap();
        let bare = JwtMinter::new(secret.as_bytes(), DEFAULT_MAX_TTL).unwrap();
        // Which missing claim is named first is jsonwebtoken's choice.
        let refused = verifier.verify(&bare.mint(&request("admin", 60)).unwrap().token);
        assert!(
            matches!(
                refused,
                Err(TokenRejection::WrongIssuer | TokenRejection::WrongAudience)
            ),
            "{refused:?}"
        );
        let minter = bare.with_claims(Some("broker".into()), Some("tenants".into()));
        let token = minter.mint(&request("admin", 60)).unwrap().token;
        assert!(verifier.verify(&token).unwrap().is_admin());
    }

    #[test]
    fn a_weak_secret_is_refused() {
        assert!(matches!(
            JwtMinter::new(b"short", DEFAULT_MAX_TTL),
            Err(Error::WeakSecret { len: 5 })
        ));
    }
}
