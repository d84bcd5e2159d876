//! What checking a token costs: a registered listener token (the
//! registry's constant-time check) against JWTs of each algorithm, seen
//! for the first time (a signature check) and again (remembered), through
//! `Broker::authorize_listener`, on one thread, in the same run.
//!
//! ```sh
//! cargo run --release -p broker-jwt --example verify_cost
//! ```

use std::{path::Path, time::Instant};

use broker_core::{Broker, Publish};
use broker_jwt::{JwtConfig, JwtVerifier};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

struct Nobody;

#[async_trait::async_trait]
impl broker_core::Notifier for Nobody {
    async fn notify(&self, _: Publish) {}
}

const SECRET: &[u8] = b"a benchmark secret of thirty-two bytes or more";

fn key(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/keys")
            .join(name),
    )
    .expect("the test keys")
}

/// Median nanoseconds per check, of 5 rounds of `n`.
fn time(broker: &Broker, token: &str, n: u32) -> f64 {
    let mut rounds: Vec<f64> = (0..5)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..n {
                broker.authorize_listener("t", token).expect("authorized");
            }
            started.elapsed().as_nanos() as f64 / f64::from(n)
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[2]
}

/// Nanoseconds per check of tokens each seen once.
fn time_fresh(broker: &Broker, tokens: &[String]) -> f64 {
    let started = Instant::now();
    for token in tokens {
        broker.authorize_listener("t", token).expect("authorized");
    }
    started.elapsed().as_nanos() as f64 / tokens.len() as f64
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let jwks = dir.path().join("jwks.json");
    let jwk = |file: &str, alg, kid: &str| {
        let pem = key(file);
        let encoding = match alg {
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
            _ => EncodingKey::from_rsa_pem(&pem),
        }
        .expect("a private key");
        let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&encoding, alg).expect("a JWK");
        jwk.common.key_id = Some(kid.to_owned());
        (jwk, encoding)
    };
    let keys = [
        ("rsa.pem", Algorithm::RS256, "rs"),
        ("ec.pem", Algorithm::ES256, "es"),
        ("ed.pem", Algorithm::EdDSA, "ed"),
    ]
    .map(|(file, alg, kid)| (alg, kid, jwk(file, alg, kid)));
    let set =
        serde_json::json!({ "keys": keys.iter().map(|(_, _, (j, _))| j).collect::<Vec<_>>() });
    std::fs::write(&jwks, set.to_string()).expect("written");
    let verifier = JwtVerifier::new(JwtConfig {
        secret: Some(SECRET.to_vec()),
        jwks: Some(jwks),
        issuer: Some("https://idp.bench".into()),
        ..JwtConfig::default()
    })
    .expect("the keys load");
    let broker = Broker::new(Nobody).with_token_verifier(verifier);
    let listener = runtime
        .block_on(broker.register_listener("t", "bench"))
        .expect("registers")
        .item;
    let claims = |n: usize| {
        serde_json::json!({
            "iss": "https://idp.bench",
            "exp": jsonwebtoken::get_current_timestamp() + 3600,
            "jti": n,
            "scope": "openid listen:t",
        })
    };
    let registered = time(&broker, listener.token().expose(), 200_000);
    println!("registered listener token: {registered:>9.0} ns per check (baseline)");
    let secret = EncodingKey::from_secret(SECRET);
    let mut kinds = vec![("HS256", Header::new(Algorithm::HS256), &secret, 4_000)];
    for (alg, kid, (_, encoding)) in &keys {
        let mut header = Header::new(*alg);
        header.kid = Some((*kid).to_owned());
        let name = match alg {
            Algorithm::RS256 => "RS256",
            Algorithm::ES256 => "ES256",
            _ => "EdDSA",
        };
        kinds.push((name, header, encoding, 1_000));
    }
    for (name, header, key, n) in &kinds {
        // Distinct tokens (by `jti`), minted before the clock starts.
        let tokens: Vec<String> = (0..*n)
            .map(|i| jsonwebtoken::encode(header, &claims(i), key).expect("a token"))
            .collect();
        let fresh = time_fresh(&broker, &tokens);
        let again = time(&broker, &tokens[0], 200_000);
        println!(
            "JWT {name}: first seen {fresh:>9.0} ns ({:>4.0}x the baseline), \
             again {again:>5.0} ns ({:.1}x)",
            fresh / registered,
            again / registered
        );
    }
}
