//! Random identifiers, bearer tokens and signing secrets.

use std::fmt;

use base64::{
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
    Engine as _,
};
use subtle::ConstantTimeEq;

/// Fills an array from the operating system's random source.
///
/// # Panics
///
/// When the operating system has no random source to give, which leaves
/// nothing safe to mint tokens from.
pub(crate) fn random<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).expect("the operating system's random source failed");
    buf
}

/// A new random id: `prefix` followed by 24 hex digits (96 bits).
pub(crate) fn new_id(prefix: &str) -> String {
    let bytes: [u8; 12] = random();
    let mut id = String::with_capacity(prefix.len() + 24);
    id.push_str(prefix);
    for b in bytes {
        id.push(char::from(HEX[usize::from(b >> 4)]));
        id.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    id
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A publisher's or listener's bearer token: `{id}.{256 random bits,
/// base64url}`.
///
/// The id part lets the broker find the credential without comparing
/// secrets one by one; the whole token is then compared in constant time.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub(crate) fn generate(id: &str) -> Self {
        let secret: [u8; 32] = random();
        Token(format!("{id}.{}", URL_SAFE_NO_PAD.encode(secret)))
    }

    /// A token read back from a store: it must have the token shape.
    pub(crate) fn restore(stored: &str) -> Option<Self> {
        Self::claimed_id(stored)?;
        Some(Token(stored.to_owned()))
    }

    /// The id a presented token claims, if it has the token shape.
    pub(crate) fn claimed_id(presented: &str) -> Option<&str> {
        presented.split_once('.').map(|(id, _)| id)
    }

    /// Whether `presented` is this token, compared in constant time.
    pub fn verify(&self, presented: &str) -> bool {
        self.0.as_bytes().ct_eq(presented.as_bytes()).into()
    }

    /// The token, to hand to its holder once.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(..)")
    }
}

/// A subscriber's Standard Webhooks signing secret: `whsec_` followed by the
/// base64 of 32 random bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret {
    key: [u8; 32],
    encoded: String,
}

impl SigningSecret {
    pub(crate) fn generate() -> Self {
        let key: [u8; 32] = random();
        SigningSecret {
            encoded: format!("whsec_{}", STANDARD.encode(key)),
            key,
        }
    }

    /// A secret read back from a store, in its `whsec_…` form.
    pub(crate) fn restore(stored: &str) -> Option<Self> {
        let key = STANDARD.decode(stored.strip_prefix("whsec_")?).ok()?;
        Some(SigningSecret {
            key: key.try_into().ok()?,
            encoded: stored.to_owned(),
        })
    }

    /// The raw HMAC key.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The `whsec_…` form, to hand to the subscriber once.
    pub fn expose(&self) -> &str {
        &self.encoded
    }
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_verify_only_themselves() {
        let a = Token::generate("pub_1");
        let b = Token::generate("pub_1");
        assert_ne!(a, b);
        assert!(a.verify(a.expose()));
        assert!(!a.verify(b.expose()));
        assert!(!a.verify(""));
        assert!(!a.verify(&a.expose()[..a.expose().len() - 1]));
        assert_eq!(Token::claimed_id(a.expose()), Some("pub_1"));
        // 256 random bits in base64url without padding.
        assert_eq!(a.expose().len(), "pub_1.".len() + 43);
        assert!(!format!("{a:?}").contains(a.expose()));
    }

    #[test]
    fn secrets_have_the_standard_webhooks_shape() {
        let s = SigningSecret::generate();
        let b64 = s.expose().strip_prefix("whsec_").unwrap();
        assert_eq!(STANDARD.decode(b64).unwrap(), s.key());
        assert_ne!(s, SigningSecret::generate());
        assert_eq!(SigningSecret::restore(s.expose()), Some(s));
        assert_eq!(SigningSecret::restore("whsec_AAAA"), None);
        let t = Token::generate("pub_1");
        assert_eq!(Token::restore(t.expose()), Some(t));
        assert_eq!(Token::restore("no-dot"), None);
    }

    #[test]
    fn ids_are_prefixed_hex() {
        let id = new_id("sub_");
        assert_eq!(id.len(), 28);
        assert!(id[4..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(id, new_id("sub_"));
    }
}
