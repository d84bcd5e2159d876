//! Loading verification keys: an HMAC secret, a PEM public key, a JWKS
//! document. Every key is checked as it is loaded, so a bad file is
//! refused with a reason instead of failing every token later.

use std::{io::Read as _, path::Path};

use jsonwebtoken::{
    crypto::rust_crypto::DEFAULT_PROVIDER,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse},
    Algorithm, AlgorithmFamily, DecodingKey,
};

use crate::{Error, MAX_FILE_BYTES, MIN_SECRET_BYTES};

/// The smallest RSA modulus taken, in bytes (2048 bits).
const MIN_RSA_MODULUS_BYTES: usize = 256;

/// One verification key and the algorithms it verifies.
pub(crate) struct Key {
    /// Its `kid` (JWKS keys that have one): a token naming another `kid`
    /// is not tried against it.
    pub(crate) kid: Option<String>,
    /// Never empty; all of the key's family.
    pub(crate) algorithms: Vec<Algorithm>,
    pub(crate) key: DecodingKey,
}

impl Key {
    pub(crate) fn secret(secret: &[u8]) -> Result<Self, Error> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(Error::WeakSecret { len: secret.len() });
        }
        Ok(Key {
            kid: None,
            algorithms: AlgorithmFamily::Hmac.algorithms().to_vec(),
            key: DecodingKey::from_secret(secret),
        })
    }
}

/// Reads a key file, at most [`MAX_FILE_BYTES`].
pub(crate) fn read(path: &Path) -> Result<Vec<u8>, Error> {
    let read_error = |source| Error::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() > MAX_FILE_BYTES {
        return Err(Error::TooLarge {
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

/// The public key of a PEM file: RSA (RS256/384/512, PS256/384/512), EC
/// P-256 (ES256) or P-384 (ES384), or Ed25519 (EdDSA).
pub(crate) fn pem(path: &Path, bytes: &[u8]) -> Result<Key, Error> {
    let bad = |reason: &str| Error::PublicKey {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let text = std::str::from_utf8(bytes).map_err(|_| bad("it is not PEM text"))?;
    if text.contains("PRIVATE KEY-----") {
        return Err(bad(
            "it holds a private key; give the public key (`openssl pkey -in key.pem -pubout`)",
        ));
    }
    if !text.contains("-----BEGIN ") {
        return Err(bad("it is not PEM (no -----BEGIN line)"));
    }
    let key = if let Ok(key) = DecodingKey::from_rsa_pem(bytes) {
        checked(key, AlgorithmFamily::Rsa.algorithms().to_vec(), None)
    } else if let Ok(key) = DecodingKey::from_ec_pem(bytes) {
        ec_algorithm(&key).and_then(|alg| checked(key, vec![alg], None))
    } else if let Ok(key) = DecodingKey::from_ed_pem(bytes) {
        checked(key, vec![Algorithm::EdDSA], None)
    } else {
        Err("not an RSA, EC or Ed25519 public key")
    };
    key.map_err(bad)
}

/// The signing keys of a JWKS document, and how many of its keys were
/// left out (encryption keys, unsupported types or curves, broken keys).
pub(crate) fn jwks(path: &Path, bytes: &[u8]) -> Result<(Vec<Key>, usize), Error> {
    let bad = |reason: String| Error::Jwks {
        path: path.to_owned(),
        reason,
    };
    let set: JwkSet = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    let total = set.keys.len();
    let keys: Vec<Key> = set
        .keys
        .iter()
        .filter_map(|jwk| jwk_key(jwk).ok())
        .collect();
    if keys.is_empty() {
        return Err(bad(format!(
            "none of its {total} keys is a usable signing key (RSA of 2048 bits or more, \
             EC P-256 or P-384, Ed25519, or oct of {MIN_SECRET_BYTES} bytes or more)"
        )));
    }
    let skipped = total - keys.len();
    Ok((keys, skipped))
}

fn jwk_key(jwk: &Jwk) -> Result<Key, &'static str> {
    match &jwk.common.public_key_use {
        None | Some(PublicKeyUse::Signature) => {}
        Some(_) => return Err("not a signing key"),
    }
    let family = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa.algorithms().to_vec(),
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return Err("unsupported curve"),
        },
        AlgorithmParameters::OctetKeyPair(okp) => match okp.curve {
            EllipticCurve::Ed25519 => vec![Algorithm::EdDSA],
            _ => return Err("unsupported curve"),
        },
        AlgorithmParameters::OctetKey(_) => AlgorithmFamily::Hmac.algorithms().to_vec(),
        _ => return Err("unsupported key type"),
    };
    // A key that names its `alg` verifies that one only.
    let algorithms = match &jwk.common.key_algorithm {
        None => family,
        Some(named) => {
            let named: Algorithm = serde_json::to_value(named)
                .ok()
                .and_then(|v| v.as_str().and_then(|s| s.parse().ok()))
                .ok_or("unsupported alg")?;
            if !family.contains(&named) {
                return Err("alg does not fit the key");
            }
            vec![named]
        }
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|_| "broken key")?;
    checked(key, algorithms, jwk.common.key_id.clone())
}

/// The curve of an EC public key (an uncompressed point), as the one
/// algorithm it verifies.
fn ec_algorithm(key: &DecodingKey) -> Result<Algorithm, &'static str> {
    match key.try_get_as_bytes().map(<[u8]>::len) {
        Ok(65) => Ok(Algorithm::ES256),
        Ok(97) => Ok(Algorithm::ES384),
        _ => Err("an EC key of an unsupported curve (P-256 and P-384 are)"),
    }
}

/// The key, once it is known to be usable: an RSA modulus of 2048 bits
/// or more, an EC point on its curve, a 32-byte Ed25519 key, an HMAC key
/// of [`MIN_SECRET_BYTES`].
fn checked(
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
    kid: Option<String>,
) -> Result<Key, &'static str> {
    match key.family() {
        AlgorithmFamily::Rsa => {
            let modulus = match key.kind() {
                jsonwebtoken::DecodingKeyKind::RsaModulusExponent { n, .. } => n.clone(),
                jsonwebtoken::DecodingKeyKind::SecretOrDer(der) => {
                    (DEFAULT_PROVIDER
                        .key_utils
                        .rsa_pub_components_from_public_key)(der)
                    .map_err(|_| "a broken RSA key")?
                    .0
                }
            };
            let significant = modulus.iter().skip_while(|b| **b == 0).count();
            if significant < MIN_RSA_MODULUS_BYTES {
                return Err("an RSA key under 2048 bits");
            }
        }
        AlgorithmFamily::Ec | AlgorithmFamily::Ed => {
            // The point must be on its curve: making a verifier parses it
            // (a dummy signature then simply does not verify). A short
            // Ed25519 key is refused before, as the verifier would slice it.
            if key.family() == AlgorithmFamily::Ed
                && key.try_get_as_bytes().map(<[u8]>::len) != Ok(32)
            {
                return Err("an Ed25519 key that is not 32 bytes");
            }
            jsonwebtoken::crypto::verify("AA", b"probe", &key, algorithms[0])
                .map_err(|_| "a broken EC or Ed25519 key")?;
        }
        AlgorithmFamily::Hmac => {
            if key.try_get_as_bytes().map_or(0, <[u8]>::len) < MIN_SECRET_BYTES {
                return Err("an HMAC key that is too short");
            }
        }
    }
    Ok(Key {
        kid,
        algorithms,
        key,
    })
}
