//! Standard Webhooks signatures: `v1,` + base64 of HMAC-SHA256 over
//! `{webhook-id}.{webhook-timestamp}.{body}`, keyed with the subscriber's
//! secret (the bytes behind `whsec_`).

use base64::{engine::general_purpose::STANDARD, Engine as _};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Signs deliveries for one subscriber. The key schedule is computed once;
/// each signature clones the keyed state.
///
/// # Examples
///
/// The test vector published with the Standard Webhooks specification:
///
/// ```
/// use broker_delivery::signature::Signer;
///
/// let signer = Signer::from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
/// assert_eq!(
///     signer.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#),
///     "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
/// );
/// ```
#[derive(Clone)]
pub struct Signer {
    mac: Hmac<Sha256>,
}

impl Signer {
    /// A signer for the raw key bytes.
    pub fn new(key: &[u8]) -> Self {
        Signer {
            // HMAC takes keys of any length; this cannot fail.
            mac: <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key length"),
        }
    }

    /// A signer for a `whsec_…` secret; `None` if it is not one.
    pub fn from_secret(secret: &str) -> Option<Self> {
        let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
        STANDARD.decode(b64).ok().map(|key| Signer::new(&key))
    }

    /// The `webhook-signature` value for one attempt.
    pub fn sign(&self, id: &str, timestamp: u64, payload: &[u8]) -> String {
        let signature = self.sign_raw(id.as_bytes(), timestamp.to_string().as_bytes(), payload);
        String::from_utf8_lossy(&signature).into_owned()
    }

    /// The signature as bytes (`v1,` and 44 base64 characters), with the
    /// timestamp already in decimal; no allocation.
    pub(crate) fn sign_raw(&self, id: &[u8], timestamp: &[u8], payload: &[u8]) -> [u8; 47] {
        let mut mac = self.mac.clone();
        mac.update(id);
        mac.update(b".");
        mac.update(timestamp);
        mac.update(b".");
        mac.update(payload);
        let digest = mac.finalize().into_bytes();
        let mut out = [0u8; 47];
        out[..3].copy_from_slice(b"v1,");
        let written = STANDARD
            .encode_slice(digest, &mut out[3..])
            .expect("32 bytes encode to 44 base64 characters");
        debug_assert_eq!(written, 44);
        out
    }
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}
