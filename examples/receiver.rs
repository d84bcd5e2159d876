//! A webhook receiver for trying the broker by hand: prints every delivery
//! it gets and, given the subscriber's secret, checks its signature.
//!
//! ```text
//! cargo run --example receiver -- 127.0.0.1:9000 [whsec_...]
//! ```

use std::{convert::Infallible, net::SocketAddr};

use broker_delivery::signature::Signer;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args.next().as_deref().unwrap_or("127.0.0.1:9000").parse()?;
    let signer = args
        .next()
        .map(|s| Signer::from_secret(&s).ok_or("not a whsec_ secret"));
    let signer = signer.transpose()?;
    let listener = TcpListener::bind(addr).await?;
    println!("receiving webhooks on http://{addr}/");
    loop {
        let (stream, _) = listener.accept().await?;
        let signer = signer.clone();
        tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(
            TokioIo::new(stream),
            service_fn(move |req: Request<Incoming>| {
                let signer = signer.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    println!("{} {}", parts.method, parts.uri);
                    for (name, value) in &parts.headers {
                        println!("  {name}: {}", value.to_str().unwrap_or("<binary>"));
                    }
                    println!("  body: {}", String::from_utf8_lossy(&body));
                    if let Some(signer) = signer {
                        let header = |n: &str| {
                            parts
                                .headers
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                        };
                        let ts = header("webhook-timestamp").parse().unwrap_or(0);
                        let expected = signer.sign(header("webhook-id"), ts, &body);
                        let ok = header("webhook-signature")
                            .split(' ')
                            .any(|sig| sig == expected);
                        println!("  signature: {}", if ok { "valid" } else { "INVALID" });
                    }
                    Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
                }
            }),
        ));
    }
}
