//! JWT bearer tokens for the webhook broker: a [`broker_core::TokenVerifier`]
//! on the `jsonwebtoken` crate.
//!
//! - Keys: an HMAC secret (HS256, HS384, HS512), a PEM public key (RSA:
//!   RS256/384/512 and PS256/384/512; EC: ES256 or ES384 by its curve;
//!   Ed25519: EdDSA), and a JWKS document on disk (its signing keys, each
//!   limited to its `alg` when it names one, found by `kid`). The files
//!   are read at start and again on [`JwtVerifier::reload`]; nothing is
//!   fetched over the network.
//! - Only the algorithms of the configured keys are accepted, each only
//!   with keys of its own family: `alg: none` is refused, and so is an
//!   HS256 token made with an RSA public key as its secret.
//! - `exp` is required and `nbf` honoured, with [`LEEWAY`] (or
//!   [`JwtConfig::leeway`]) either way for clock skew; `iss` and `aud`, when configured, are required and must
//!   match.
//! - The `scope` claim (a space-separated string, or an array of strings)
//!   becomes the token's [`broker_core::Grants`].
//! - A verified token is remembered (at most [`MAX_REMEMBERED`], whole
//!   tokens compared, until its `exp` and leeway pass; a reload forgets
//!   them all), so a client that sends the same token again costs a hash
//!   look-up instead of a signature check (RS256 and ES256 checks cost
//!   150–250 µs on the RustCrypto backend: BENCHMARKS.md, section 11).
//!
//! # Examples
//!
//! ```
//! use broker_core::TokenVerifier as _;
//! use broker_jwt::{JwtConfig, JwtVerifier};
//! use jsonwebtoken::{encode, EncodingKey, Header};
//!
//! let secret = b"an HMAC secret of at least 32 bytes!".to_vec();
//! let verifier = JwtVerifier::new(JwtConfig {
//!     secret: Some(secret.clone()),
//!     ..JwtConfig::default()
//! })?;
//! let exp = jsonwebtoken::get_current_timestamp() + 600;
//! let claims = serde_json::json!({ "exp": exp, "scope": "publish:orders" });
//! let token = encode(&Header::default(), &claims, &EncodingKey::from_secret(&secret)).unwrap();
//! let grants = verifier.verify(&token).unwrap();
//! assert!(grants.may_publish("orders"));
//! # Ok::<_, broker_jwt::Error>(())
//! ```

mod error;
mod keys;
mod mint;

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use broker_core::{Grants, TokenRejection, TokenVerifier};
use jsonwebtoken::{errors::ErrorKind, Algorithm, Validation};
use parking_lot::RwLock;
use serde::Deserialize;

pub use error::Error;
use keys::Key;
pub use mint::{generate_secret, JwtMinter, DEFAULT_MAX_TTL};

/// Clock skew allowed on `exp` and `nbf`: a token is taken until 30 s
/// after its `exp`, and from 30 s before its `nbf`.
pub const LEEWAY: Duration = Duration::from_secs(30);

/// The shortest HMAC secret taken, in bytes (RFC 7518 asks HS256 for a
/// key of at least its hash's size).
pub const MIN_SECRET_BYTES: usize = 32;

/// The largest key file read, in bytes.
pub const MAX_FILE_BYTES: usize = 1024 * 1024;

/// Most keys one token is tried against (those of its algorithm, and of
/// its `kid` when it names one): a token without a `kid` never costs more
/// than this many signature checks, however many keys a JWKS holds.
pub const MAX_KEYS_TRIED: usize = 8;

/// Most verified tokens remembered; past it, all are forgotten and
/// remembering starts again.
pub const MAX_REMEMBERED: usize = 4096;

/// Where a [`JwtVerifier`] finds its keys, and what it checks besides the
/// signature. At least one of `secret`, `public_key` and `jwks` is needed.
#[derive(Clone, Default)]
pub struct JwtConfig {
    /// The HMAC secret of HS256/384/512 tokens, at least
    /// [`MIN_SECRET_BYTES`].
    pub secret: Option<Vec<u8>>,
    /// A PEM file with one public key (RSA, EC P-256/P-384, Ed25519).
    pub public_key: Option<PathBuf>,
    /// A JWKS document (`{"keys":[…]}`) on disk.
    pub jwks: Option<PathBuf>,
    /// When set, the `iss` a token must have.
    pub issuer: Option<String>,
    /// When set, the `aud` a token must name. When not, `aud` is not
    /// looked at.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`; `None`: [`LEEWAY`].
    pub leeway: Option<Duration>,
}

impl std::fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtConfig")
            .field("secret", &self.secret.as_ref().map(|_| ".."))
            .field("public_key", &self.public_key)
            .field("jwks", &self.jwks)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .finish()
    }
}

/// The keys loaded from the files, as [`JwtVerifier::reload`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loaded {
    /// Keys in use from the files (the secret not counted).
    pub keys: usize,
    /// JWKS keys left out: encryption keys, unsupported types or curves,
    /// broken or too weak keys.
    pub skipped: usize,
}

/// Verifies JWTs with the configured keys. Cheap to clone: clones share
/// the keys, so the one the broker holds sees a [`reload`](Self::reload)
/// made through another.
#[derive(Clone)]
pub struct JwtVerifier {
    shared: Arc<Shared>,
}

struct Shared {
    config: JwtConfig,
    secret: Option<Key>,
    /// The keys of the files and what they verified; swapped whole by a
    /// reload, so a token verified with a key just removed is not
    /// remembered past it.
    files: RwLock<Arc<KeySet>>,
}

struct KeySet {
    keys: Vec<Key>,
    /// Verified tokens, whole, with their grants and the second (Unix
    /// time) after which they are expired.
    remembered: RwLock<HashMap<Box<str>, (Grants, u64)>>,
}

impl KeySet {
    fn new(keys: Vec<Key>) -> Arc<Self> {
        Arc::new(KeySet {
            keys,
            remembered: RwLock::default(),
        })
    }

    fn recall(&self, token: &str, now: u64) -> Option<Grants> {
        let remembered = self.remembered.read();
        let (grants, until) = remembered.get(token)?;
        (now <= *until).then(|| grants.clone())
    }

    fn remember(&self, token: &str, grants: &Grants, until: u64) {
        let mut remembered = self.remembered.write();
        if remembered.len() >= MAX_REMEMBERED {
            remembered.clear();
        }
        remembered.insert(token.into(), (grants.clone(), until));
    }
}

impl JwtVerifier {
    /// Reads the configured files and makes the verifier.
    ///
    /// # Errors
    ///
    /// [`Error::NoKeys`] when nothing is configured; [`Error::WeakSecret`];
    /// a file that cannot be read or holds no usable key.
    pub fn new(config: JwtConfig) -> Result<Self, Error> {
        if config.secret.is_none() && config.public_key.is_none() && config.jwks.is_none() {
            return Err(Error::NoKeys);
        }
        let secret = config.secret.as_deref().map(Key::secret).transpose()?;
        let (files, _) = load(&config)?;
        Ok(JwtVerifier {
            shared: Arc::new(Shared {
                config,
                secret,
                files: RwLock::new(KeySet::new(files)),
            }),
        })
    }

    /// Reads the public key and JWKS files again and uses their keys from
    /// now on (a key rotation). The secret stays as it was.
    ///
    /// # Errors
    ///
    /// As [`JwtVerifier::new`] for a file: the keys in use are then kept
    /// unchanged.
    pub fn reload(&self) -> Result<Loaded, Error> {
        let (files, loaded) = load(&self.shared.config)?;
        *self.shared.files.write() = KeySet::new(files);
        Ok(loaded)
    }

    /// The keys in use from the files (the secret not counted).
    pub fn file_keys(&self) -> usize {
        self.shared.files.read().keys.len()
    }

    /// The clock skew allowed.
    fn leeway(&self) -> Duration {
        self.shared.config.leeway.unwrap_or(LEEWAY)
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let config = &self.shared.config;
        let mut validation = Validation::new(alg);
        validation.leeway = self.leeway().as_secs();
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        if let Some(issuer) = &config.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        match &config.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        validation
    }
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("config", &self.shared.config)
            .field("file_keys", &self.file_keys())
            .finish()
    }
}

/// The keys of the configured files.
fn load(config: &JwtConfig) -> Result<(Vec<Key>, Loaded), Error> {
    let mut keys = Vec::new();
    let mut skipped = 0;
    if let Some(path) = &config.public_key {
        keys.push(keys::pem(path, &keys::read(path)?)?);
    }
    if let Some(path) = &config.jwks {
        let (found, left_out) = keys::jwks(path, &keys::read(path)?)?;
        keys.extend(found);
        skipped = left_out;
    }
    let loaded = Loaded {
        keys: keys.len(),
        skipped,
    };
    Ok((keys, loaded))
}

/// What the header says before anything is verified: which algorithm,
/// which key.
#[derive(Deserialize)]
struct Peek {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

/// The claims read from a verified token (the standard ones are checked
/// by `jsonwebtoken`).
#[derive(Deserialize)]
struct Claims {
    /// Checked by `jsonwebtoken` (required, a number): read again for how
    /// long the token may be remembered.
    exp: f64,
    #[serde(default)]
    scope: Option<Scope>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Scope {
    Text(String),
    List(Vec<String>),
}

impl TokenVerifier for JwtVerifier {
    fn verify(&self, token: &str) -> Result<Grants, TokenRejection> {
        let files = self.shared.files.read().clone();
        let now = jsonwebtoken::get_current_timestamp();
        if let Some(grants) = files.recall(token, now) {
            return Ok(grants);
        }
        let header = token.split('.').next().unwrap_or_default();
        let header = URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| TokenRejection::Malformed)?;
        let peek: Peek = serde_json::from_slice(&header).map_err(|_| TokenRejection::Malformed)?;
        // `none`, and any name jsonwebtoken does not know, ends here.
        let alg: Algorithm = peek
            .alg
            .parse()
            .map_err(|_| TokenRejection::WrongAlgorithm)?;
        let mut known_alg = false;
        let validation = self.validation(alg);
        let candidates = self
            .shared
            .secret
            .iter()
            .chain(files.keys.iter())
            .filter(|key| key.algorithms.contains(&alg))
            .inspect(|_| known_alg = true)
            .filter(|key| match (&peek.kid, &key.kid) {
                (Some(wanted), Some(kid)) => wanted == kid,
                _ => true,
            })
            .take(MAX_KEYS_TRIED);
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => {
                    let grants = match data.claims.scope {
                        None => Grants::default(),
                        Some(Scope::Text(scope)) => Grants::from_scope(&scope),
                        Some(Scope::List(entries)) => {
                            Grants::from_entries(entries.iter().map(String::as_str))
                        }
                    };
                    // As jsonwebtoken rounds it; it took it as a u64.
                    let exp = data.claims.exp.round() as u64;
                    let until = exp.saturating_add(self.leeway().as_secs());
                    files.remember(token, &grants, until);
                    return Ok(grants);
                }
                Err(e) => match rejection(e.kind()) {
                    // Another key may verify it.
                    None => continue,
                    Some(rejection) => return Err(rejection),
                },
            }
        }
        Err(if known_alg {
            TokenRejection::BadSignature
        } else {
            TokenRejection::WrongAlgorithm
        })
    }
}

/// Why `jsonwebtoken` refused a token, or `None` when the key did not
/// verify its signature (so another key may).
fn rejection(kind: &ErrorKind) -> Option<TokenRejection> {
    Some(match kind {
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => return None,
        ErrorKind::ExpiredSignature => TokenRejection::Expired,
        ErrorKind::ImmatureSignature => TokenRejection::NotYetValid,
        ErrorKind::InvalidIssuer => TokenRejection::WrongIssuer,
        ErrorKind::InvalidAudience => TokenRejection::WrongAudience,
        ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => TokenRejection::WrongIssuer,
        ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => TokenRejection::WrongAudience,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::MissingAlgorithm => TokenRejection::WrongAlgorithm,
        _ => TokenRejection::Malformed,
    })
}
