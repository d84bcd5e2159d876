//! Embedding the broker in another Rust service: the service registers a
//! publisher and a subscriber through the library, serves the HTTP API on a
//! port of its own, and publishes without going over HTTP.
//!
//! Run with `cargo run --example embed`; it starts a tiny webhook receiver
//! on 127.0.0.1, publishes one event to it, prints what arrived, and exits.

use std::{convert::Infallible, time::Duration};

use broker_core::{Broker, Endpoint};
use broker_delivery::{DeliveryConfig, WebhookNotifier};
use broker_http::{serve, Api, ApiConfig, ServerConfig};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, sync::mpsc};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A webhook receiver standing in for another service.
    let (tx, mut received) = mpsc::channel::<(String, Bytes)>(8);
    let receiver = TcpListener::bind("127.0.0.1:0").await?;
    let receiver_url = format!("http://{}/hooks/orders", receiver.local_addr()?);
    tokio::spawn(async move {
        while let Ok((stream, _)) = receiver.accept().await {
            let tx = tx.clone();
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(
                TokioIo::new(stream),
                service_fn(move |req: Request<Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let id = req.headers()["webhook-id"]
                            .to_str()
                            .unwrap_or("")
                            .to_owned();
                        let body = req.into_body().collect().await.map(|b| b.to_bytes());
                        let _ = tx.send((id, body.unwrap_or_default())).await;
                        Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
                    }
                }),
            ));
        }
    });

    // The broker, embedded.
    let notifier = WebhookNotifier::new(DeliveryConfig::default());
    let broker = Broker::new(notifier.clone());
    let publisher = broker
        .register_publisher("orders", "embedded-service")
        .await?
        .item;
    let endpoint = Endpoint::new(
        &receiver_url,
        None,
        [("X-Source", "embed-example")],
        broker.limits(),
    )?;
    let subscriber = broker.register_subscriber("orders", endpoint).await?.item;
    println!(
        "subscriber {} will be signed with {}",
        subscriber.id(),
        subscriber.secret().expose()
    );

    // Its HTTP API, on a port of our own, until we are done.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("broker API on http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let api = Api::new(broker.clone(), ApiConfig::default());
    let server = tokio::spawn(serve(listener, api, ServerConfig::default(), async {
        let _ = stopped.await;
    }));

    // Publish in-process: no HTTP round trip for the publisher.
    let receipt = broker
        .publish(
            "orders",
            publisher.token().expose(),
            Some(http::HeaderValue::from_static("application/json")),
            Bytes::from_static(br#"{"order":42}"#),
        )
        .await?;
    println!(
        "published {} to {} subscriber(s)",
        receipt.id, receipt.subscribers
    );

    let (id, body) = tokio::time::timeout(Duration::from_secs(5), received.recv())
        .await?
        .ok_or("receiver stopped")?;
    println!("received {id}: {}", String::from_utf8_lossy(&body));

    let _ = stop.send(());
    server.await??;
    broker.close();
    notifier.drain(Duration::from_secs(5)).await;
    Ok(())
}
