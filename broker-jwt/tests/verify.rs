//! The verifier against tokens minted here with `jsonwebtoken`, keys from
//! the workspace's `tests/keys/` (made with openssl for these tests only).

use std::path::{Path, PathBuf};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use broker_core::{Grants, TokenRejection, TokenVerifier as _};
use broker_jwt::{Error, JwtConfig, JwtVerifier, Loaded};
use jsonwebtoken::{jwk::Jwk, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test";

fn key_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/keys")
        .join(name)
}

fn private(name: &str, alg: Algorithm) -> EncodingKey {
    let pem = std::fs::read(key_file(name)).unwrap();
    match alg {
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
        _ => EncodingKey::from_rsa_pem(&pem),
    }
    .unwrap()
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn mint(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

fn hs(claims: Value) -> String {
    mint(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET),
        None,
        claims,
    )
}

fn with_secret() -> JwtVerifier {
    JwtVerifier::new(JwtConfig {
        secret: Some(SECRET.to_vec()),
        ..JwtConfig::default()
    })
    .unwrap()
}

fn with_public_key(name: &str) -> JwtVerifier {
    JwtVerifier::new(JwtConfig {
        public_key: Some(key_file(name)),
        ..JwtConfig::default()
    })
    .unwrap()
}

/// A JWKS document of the public halves of these private keys.
fn jwks(keys: &[(&str, Algorithm, &str)]) -> String {
    let keys: Vec<Jwk> = keys
        .iter()
        .map(|(file, alg, kid)| {
            let mut jwk = Jwk::from_encoding_key(&private(file, *alg), *alg).unwrap();
            jwk.common.key_id = Some((*kid).to_owned());
            jwk
        })
        .collect();
    json!({ "keys": keys }).to_string()
}

#[test]
fn hmac_tokens_carry_their_scope() {
    let v = with_secret();
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let token = mint(
            alg,
            &EncodingKey::from_secret(SECRET),
            None,
            json!({ "exp": now() + 60, "scope": "openid publish:orders.* listen:audit" }),
        );
        let grants = v.verify(&token).unwrap();
        assert!(grants.may_publish("orders.eu") && grants.may_listen("audit"));
        assert!(!grants.may_publish("audit") && !grants.is_admin());
    }
    let listed = hs(json!({ "exp": now() + 60, "scope": ["admin", "publish:t"] }));
    let grants = v.verify(&listed).unwrap();
    assert!(grants.is_admin() && grants.may_publish("t"));
    let none = hs(json!({ "exp": now() + 60, "sub": "someone" }));
    assert_eq!(v.verify(&none).unwrap(), Grants::default());
    let odd = hs(json!({ "exp": now() + 60, "scope": 42 }));
    assert_eq!(v.verify(&odd), Err(TokenRejection::Malformed));
}

#[test]
fn time_claims_are_checked_with_thirty_seconds_of_leeway() {
    let v = with_secret();
    assert_eq!(
        v.verify(&hs(json!({ "exp": now() - 3600 }))),
        Err(TokenRejection::Expired)
    );
    assert_eq!(
        v.verify(&hs(json!({ "exp": now() - 45 }))),
        Err(TokenRejection::Expired)
    );
    assert!(v.verify(&hs(json!({ "exp": now() - 10 }))).is_ok());
    assert_eq!(
        v.verify(&hs(json!({ "exp": now() + 7200, "nbf": now() + 3600 }))),
        Err(TokenRejection::NotYetValid)
    );
    assert!(v
        .verify(&hs(json!({ "exp": now() + 60, "nbf": now() + 10 })))
        .is_ok());
    // exp is required.
    assert_eq!(
        v.verify(&hs(json!({ "scope": "admin" }))),
        Err(TokenRejection::Malformed)
    );
    assert_eq!(
        v.verify(&hs(json!({ "exp": "tomorrow" }))),
        Err(TokenRejection::Malformed)
    );
}

#[test]
fn a_bad_signature_is_refused() {
    let v = with_secret();
    let other = mint(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"another secret of thirty-two bytes or more"),
        None,
        json!({ "exp": now() + 60, "scope": "admin" }),
    );
    assert_eq!(v.verify(&other), Err(TokenRejection::BadSignature));
    // The claims of a valid token, changed.
    let token = hs(json!({ "exp": now() + 60, "scope": "listen:t" }));
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    parts[1] = URL_SAFE_NO_PAD.encode(json!({ "exp": now() + 60, "scope": "admin" }).to_string());
    assert_eq!(
        v.verify(&parts.join(".")),
        Err(TokenRejection::BadSignature)
    );
}

#[test]
fn malformed_tokens_are_refused_as_such() {
    let v = with_secret();
    let claims = URL_SAFE_NO_PAD.encode(r#"{"exp":9999999999}"#);
    for bad in [
        "a.b.c".to_owned(),
        format!("{}.{claims}.c2ln", URL_SAFE_NO_PAD.encode("not json")),
        format!(
            "{}.{claims}.c2ln",
            URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT"}"#)
        ),
        format!("{}.{claims}.c2ln", URL_SAFE_NO_PAD.encode(r#"{"alg":7}"#)),
    ] {
        assert_eq!(v.verify(&bad), Err(TokenRejection::Malformed), "{bad}");
    }
    // Signed, but its claims are not a JSON object.
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256"}"#);
    let body = URL_SAFE_NO_PAD.encode("[1,2]");
    let message = format!("{header}.{body}");
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(SECRET),
        Algorithm::HS256,
    )
    .unwrap();
    assert_eq!(
        v.verify(&format!("{message}.{signature}")),
        Err(TokenRejection::Malformed)
    );
}

#[test]
fn only_the_configured_algorithms_are_taken() {
    let claims = json!({ "exp": now() + 60, "scope": "admin" });
    // alg: none, unsigned, whatever keys there are.
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let rsa = with_public_key("rsa.pub.pem");
    let both = JwtVerifier::new(JwtConfig {
        secret: Some(SECRET.to_vec()),
        public_key: Some(key_file("rsa.pub.pem")),
        ..JwtConfig::default()
    })
    .unwrap();
    for v in [&rsa, &both, &with_secret()] {
        assert_eq!(v.verify(&unsigned), Err(TokenRejection::WrongAlgorithm));
        let none_signed = format!("{unsigned}c2ln");
        assert_eq!(v.verify(&none_signed), Err(TokenRejection::WrongAlgorithm));
    }
    // The RSA public key used as an HMAC secret (the classic confusion):
    // HS256 is not an algorithm of an RSA key...
    let public_pem = std::fs::read(key_file("rsa.pub.pem")).unwrap();
    let confused = mint(
        Algorithm::HS256,
        &EncodingKey::from_secret(&public_pem),
        None,
        claims.clone(),
    );
    assert_eq!(rsa.verify(&confused), Err(TokenRejection::WrongAlgorithm));
    // ...and with a secret configured too, only the secret verifies HS256.
    assert_eq!(both.verify(&confused), Err(TokenRejection::BadSignature));
    // An RS256 token where only a secret is configured.
    let rs = mint(
        Algorithm::RS256,
        &private("rsa.pem", Algorithm::RS256),
        None,
        claims.clone(),
    );
    assert_eq!(
        with_secret().verify(&rs),
        Err(TokenRejection::WrongAlgorithm)
    );
    assert!(rsa.verify(&rs).is_ok() && both.verify(&rs).is_ok());
    // An EC key takes ES256 and nothing else.
    let ec = with_public_key("ec.pub.pem");
    assert_eq!(ec.verify(&rs), Err(TokenRejection::WrongAlgorithm));
    // An algorithm jsonwebtoken does not know at all.
    let odd = format!(
        "{}.{}.c2ln",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"HS1"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    assert_eq!(rsa.verify(&odd), Err(TokenRejection::WrongAlgorithm));
}

#[test]
fn pem_public_keys_of_each_kind_verify_their_algorithms() {
    let claims = json!({ "exp": now() + 60, "scope": "listen:t" });
    let cases = [
        ("rsa", Algorithm::RS256),
        ("rsa", Algorithm::RS512),
        ("rsa", Algorithm::PS256),
        ("ec", Algorithm::ES256),
        ("ed", Algorithm::EdDSA),
    ];
    for (name, alg) in cases {
        let v = with_public_key(&format!("{name}.pub.pem"));
        let token = mint(
            alg,
            &private(&format!("{name}.pem"), alg),
            None,
            claims.clone(),
        );
        assert!(v.verify(&token).unwrap().may_listen("t"), "{alg:?}");
        // Another key of the same kind does not verify it.
        if name == "rsa" {
            let other = with_public_key("rsa2.pub.pem");
            assert_eq!(
                other.verify(&token),
                Err(TokenRejection::BadSignature),
                "{alg:?}"
            );
        }
    }
}

#[test]
fn issuer_and_audience_are_required_when_configured() {
    let v = JwtVerifier::new(JwtConfig {
        secret: Some(SECRET.to_vec()),
        issuer: Some("https://idp.example".into()),
        audience: Some("broker".into()),
        ..JwtConfig::default()
    })
    .unwrap();
    let exp = now() + 60;
    let iss = "https://idp.example";
    assert!(v
        .verify(&hs(json!({ "exp": exp, "iss": iss, "aud": "broker" })))
        .is_ok());
    assert!(v
        .verify(&hs(
            json!({ "exp": exp, "iss": iss, "aud": ["other", "broker"] })
        ))
        .is_ok());
    for (claims, why) in [
        (
            json!({ "exp": exp, "iss": "https://evil.example", "aud": "broker" }),
            TokenRejection::WrongIssuer,
        ),
        (
            json!({ "exp": exp, "aud": "broker" }),
            TokenRejection::WrongIssuer,
        ),
        (
            json!({ "exp": exp, "iss": iss, "aud": "other" }),
            TokenRejection::WrongAudience,
        ),
        (
            json!({ "exp": exp, "iss": iss }),
            TokenRejection::WrongAudience,
        ),
    ] {
        assert_eq!(v.verify(&hs(claims.clone())), Err(why), "{claims}");
    }
    // Unconfigured, neither is looked at.
    assert!(with_secret()
        .verify(&hs(
            json!({ "exp": exp, "iss": "anyone", "aud": "anything" })
        ))
        .is_ok());
}

#[test]
fn a_jwks_file_is_found_by_kid_and_rotated_by_reload() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(
        &path,
        jwks(&[
            ("rsa.pem", Algorithm::RS256, "one"),
            ("ec.pem", Algorithm::ES256, "ec"),
        ]),
    )
    .unwrap();
    let v = JwtVerifier::new(JwtConfig {
        jwks: Some(path.clone()),
        ..JwtConfig::default()
    })
    .unwrap();
    assert_eq!(v.file_keys(), 2);
    let claims = json!({ "exp": now() + 60, "scope": "publish:t" });
    let rs = |file: &str, kid: Option<&str>| {
        mint(
            Algorithm::RS256,
            &private(file, Algorithm::RS256),
            kid,
            claims.clone(),
        )
    };
    let one = rs("rsa.pem", Some("one"));
    let two = rs("rsa2.pem", Some("two"));
    assert!(v.verify(&one).is_ok());
    assert!(
        v.verify(&rs("rsa.pem", None)).is_ok(),
        "no kid: every key is tried"
    );
    assert_eq!(v.verify(&two), Err(TokenRejection::BadSignature));
    // A JWK that names its alg verifies that one only.
    let ps = mint(
        Algorithm::PS256,
        &private("rsa.pem", Algorithm::PS256),
        Some("one"),
        claims.clone(),
    );
    assert_eq!(v.verify(&ps), Err(TokenRejection::WrongAlgorithm));
    let es = mint(
        Algorithm::ES256,
        &private("ec.pem", Algorithm::ES256),
        Some("ec"),
        claims.clone(),
    );
    assert!(v.verify(&es).is_ok());

    // Rotation: the file now holds the new key only.
    std::fs::write(&path, jwks(&[("rsa2.pem", Algorithm::RS256, "two")])).unwrap();
    assert_eq!(v.verify(&two), Err(TokenRejection::BadSignature), "not yet");
    let clone = v.clone();
    assert_eq!(
        clone.reload().unwrap(),
        Loaded {
            keys: 1,
            skipped: 0
        }
    );
    assert!(v.verify(&two).is_ok(), "a clone's reload is everyone's");
    assert_eq!(v.verify(&one), Err(TokenRejection::BadSignature));

    // A broken file on reload keeps the keys in use.
    std::fs::write(&path, "{ not json").unwrap();
    assert!(matches!(v.reload(), Err(Error::Jwks { .. })));
    assert!(v.verify(&two).is_ok());
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(v.reload(), Err(Error::Read { .. })));
    assert!(v.verify(&two).is_ok());
}

#[test]
fn unusable_jwks_keys_are_left_out_and_none_usable_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let good: Value = serde_json::from_str(&jwks(&[("ed.pem", Algorithm::EdDSA, "ed")])).unwrap();
    let mut encryption = good["keys"][0].clone();
    encryption["use"] = json!("enc");
    let keys = json!({ "keys": [
        good["keys"][0],
        encryption,
        { "kty": "EC", "crv": "P-521", "x": "AA", "y": "AA" },
        { "kty": "OKP", "crv": "Ed25519", "x": "AAAA" },
        { "kty": "oct", "k": "c2hvcnQ" },
        { "kty": "RSA", "n": "AQAB", "e": "AQAB" },
        { "kty": "weird" },
    ]});
    std::fs::write(&path, keys.to_string()).unwrap();
    let config = JwtConfig {
        jwks: Some(path.clone()),
        ..JwtConfig::default()
    };
    let v = JwtVerifier::new(config.clone()).unwrap();
    assert_eq!(
        v.reload().unwrap(),
        Loaded {
            keys: 1,
            skipped: 6
        }
    );
    std::fs::write(&path, r#"{"keys":[{"kty":"oct","k":"c2hvcnQ"}]}"#).unwrap();
    let e = JwtVerifier::new(config.clone()).unwrap_err();
    assert!(e.to_string().contains("none of its 1 keys"), "{e}");
    std::fs::write(&path, r#"{"keys":[]}"#).unwrap();
    assert!(matches!(JwtVerifier::new(config), Err(Error::Jwks { .. })));
}

#[test]
fn bad_configurations_are_refused_with_a_reason() {
    assert!(matches!(
        JwtVerifier::new(JwtConfig::default()),
        Err(Error::NoKeys)
    ));
    let e = JwtVerifier::new(JwtConfig {
        secret: Some(b"short".to_vec()),
        ..JwtConfig::default()
    })
    .unwrap_err();
    assert!(matches!(e, Error::WeakSecret { len: 5 }));
    let public = |path: PathBuf| {
        JwtVerifier::new(JwtConfig {
            public_key: Some(path),
            ..JwtConfig::default()
        })
        .unwrap_err()
    };
    let e = public(key_file("rsa.pem"));
    assert!(e.to_string().contains("private key"), "{e}");
    let e = public(key_file("nowhere.pem"));
    assert!(matches!(e, Error::Read { .. }), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    assert!(matches!(public(garbage), Error::PublicKey { .. }));
    let large = dir.path().join("large.pem");
    std::fs::write(&large, vec![b'A'; broker_jwt::MAX_FILE_BYTES + 1]).unwrap();
    assert!(matches!(public(large), Error::TooLarge { .. }));
    // No message ever shows the secret.
    let config = JwtConfig {
        secret: Some(SECRET.to_vec()),
        ..JwtConfig::default()
    };
    assert!(!format!("{config:?}").contains("0123456789"));
}

#[test]
fn a_token_without_kid_is_tried_against_a_bounded_number_of_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let kids: Vec<String> = (0..broker_jwt::MAX_KEYS_TRIED + 1)
        .map(|n| format!("k{n}"))
        .collect();
    let mut keys: Vec<(&str, Algorithm, &str)> = kids
        .iter()
        .map(|kid| ("rsa.pem", Algorithm::RS256, kid.as_str()))
        .collect();
    keys.push(("rsa2.pem", Algorithm::RS256, "last"));
    std::fs::write(&path, jwks(&keys)).unwrap();
    let v = JwtVerifier::new(JwtConfig {
        jwks: Some(path),
        ..JwtConfig::default()
    })
    .unwrap();
    let claims = json!({ "exp": now() + 60 });
    let key = private("rsa2.pem", Algorithm::RS256);
    let unnamed = mint(Algorithm::RS256, &key, None, claims.clone());
    assert_eq!(v.verify(&unnamed), Err(TokenRejection::BadSignature));
    let named = mint(Algorithm::RS256, &key, Some("last"), claims);
    assert!(v.verify(&named).is_ok());
}

#[test]
fn a_remembered_token_still_expires() {
    let v = with_secret();
    // Good for a second or two more, leeway included.
    let token = hs(json!({ "exp": now() - 29, "scope": "listen:t" }));
    assert!(v.verify(&token).unwrap().may_listen("t"));
    assert!(v.verify(&token).is_ok(), "remembered");
    let started = std::time::Instant::now();
    while v.verify(&token).is_ok() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "a remembered token outlived its exp"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(v.verify(&token), Err(TokenRejection::Expired));
    // Remembering is per whole token: a changed one is checked afresh.
    let fresh = hs(json!({ "exp": now() + 60, "scope": "listen:t" }));
    assert!(v.verify(&fresh).is_ok());
    let signature = fresh.rfind('.').unwrap() + 1;
    let other = if fresh.as_bytes()[signature] == b'A' {
        "B"
    } else {
        "A"
    };
    let mut tampered = fresh.clone();
    tampered.replace_range(signature..=signature, other);
    assert_eq!(v.verify(&tampered), Err(TokenRejection::BadSignature));
    assert!(v.verify(&fresh).is_ok());
}
