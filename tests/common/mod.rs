//! Test harness: the real server on 127.0.0.1:0, a plain hyper client, and
//! webhook sinks on 127.0.0.1:0 that record what they receive.
#![allow(dead_code, unreachable_pub)]

use std::{
    collections::VecDeque,
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use broker_core::{Broker, Limits};
use broker_delivery::{DeliveryConfig, WebhookNotifier};
use broker_http::{serve, Api, ApiConfig, Metrics, ServerConfig};
use bytes::Bytes;
use futures_util::stream;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{body::Incoming, service::service_fn, Response};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo},
};
use serde_json::Value;
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot, Semaphore},
    task::JoinHandle,
};

/// How long a test waits for something that should happen at once before
/// declaring it did not happen.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub struct TestServer {
    pub addr: SocketAddr,
    pub broker: Broker,
    pub notifier: WebhookNotifier,
    client: Client<HttpConnector, Full<Bytes>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// Asserts the status and the JSON error shape; returns the code.
    pub fn error_code(&self, status: u16) -> String {
        assert_eq!(
            self.status.as_u16(),
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(self.headers["content-type"], "application/json");
        let json = self.json();
        let message = json["error"]["message"].as_str().expect("error.message");
        assert!(!message.is_empty());
        let code = json["error"]["code"].as_str().expect("error.code");
        assert!(
            code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "{code}"
        );
        code.to_owned()
    }
}

/// The tests' HTTP client. A pooled connection idle for a second is not
/// reused: a server may close an idle keep-alive connection after its
/// header read timeout (2 s in some tests), and a request sent on it just
/// then fails with `IncompleteMessage`.
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(1))
        .build(HttpConnector::new())
}

impl TestServer {
    pub async fn start() -> Self {
        Self::with_config(ApiConfig::default(), DeliveryConfig::default()).await
    }

    pub async fn with_config(api: ApiConfig, delivery: DeliveryConfig) -> Self {
        Self::with_all(api, delivery, ServerConfig::default(), Limits::default()).await
    }

    pub async fn with_all(
        api: ApiConfig,
        delivery: DeliveryConfig,
        server: ServerConfig,
        limits: Limits,
    ) -> Self {
        let notifier = WebhookNotifier::new(delivery);
        // As the server binary does: webhooks and live listeners both hear
        // every publish.
        let broker = match &api.live {
            Some(live) => Broker::with_limits((notifier.clone(), live.clone()), limits),
            None => Broker::with_limits(notifier.clone(), limits),
        };
        Self::around(broker, notifier, api, server).await
    }

    /// A server whose broker checks JWT-shaped tokens with `verifier`.
    pub async fn with_verifier(api: ApiConfig, verifier: impl broker_core::TokenVerifier) -> Self {
        let notifier = WebhookNotifier::new(DeliveryConfig::default());
        let broker = match &api.live {
            Some(live) => Broker::new((notifier.clone(), live.clone())),
            None => Broker::new(notifier.clone()),
        };
        let broker = broker.with_token_verifier(verifier);
        Self::around(broker, notifier, api, ServerConfig::default()).await
    }

    /// A server whose broker keeps its logs in `store` (a small memory
    /// budget, a data dir).
    pub async fn with_store(delivery: DeliveryConfig, store: impl broker_core::Store) -> Self {
        let notifier = WebhookNotifier::new(delivery);
        let broker = Broker::open(notifier.clone(), Limits::default(), store)
            .await
            .expect("the store opens");
        Self::around(
            broker,
            notifier,
            ApiConfig::default(),
            ServerConfig::default(),
        )
        .await
    }

    async fn around(
        broker: Broker,
        notifier: WebhookNotifier,
        api: ApiConfig,
        server: ServerConfig,
    ) -> Self {
        let mut api = api;
        if api.metrics.is_none() {
            let mut metrics = Metrics::new(&broker).with_collector(notifier.collector());
            if let Some(live) = &api.live {
                metrics = metrics.with_live(live);
            }
            api.metrics = Some(Arc::new(metrics));
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let api = Api::new(broker.clone(), api);
        let task = tokio::spawn(serve(listener, api, server, async {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            broker,
            notifier,
            client: client(),
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Sends one request; `headers` are (name, value) pairs.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        let mut req = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri(format!("http://{}{}", self.addr, path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body.into())).unwrap();
        let res = tokio::time::timeout(PATIENCE, self.client.request(req))
            .await
            .expect("the server answered in time")
            .expect("the request went through");
        let (parts, body) = res.into_parts();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.call("GET", path, &[], Bytes::new()).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.call("DELETE", path, &[], Bytes::new()).await
    }

    pub async fn post_json(&self, path: &str, json: Value) -> Reply {
        self.call(
            "POST",
            path,
            &[("content-type", "application/json")],
            json.to_string(),
        )
        .await
    }

    /// Registers a publisher and returns its token.
    pub async fn publisher(&self, topic: &str, name: &str) -> String {
        let r = self
            .post_json(
                &format!("/v1/topics/{topic}/publishers"),
                serde_json::json!({ "name": name }),
            )
            .await;
        assert!(r.status.is_success(), "{:?}", r.body);
        r.json()["token"].as_str().unwrap().to_owned()
    }

    /// Registers a subscriber and returns its JSON.
    pub async fn subscriber(&self, topic: &str, body: Value) -> Value {
        let r = self
            .post_json(&format!("/v1/topics/{topic}/subscribers"), body)
            .await;
        assert!(r.status.is_success(), "{:?}", r.body);
        r.json()
    }

    pub async fn publish(
        &self,
        topic: &str,
        token: &str,
        content_type: &str,
        body: &'static str,
    ) -> Reply {
        let auth = format!("Bearer {token}");
        self.call(
            "POST",
            &format!("/v1/topics/{topic}/messages"),
            &[("authorization", &auth), ("content-type", content_type)],
            body,
        )
        .await
    }

    /// Waits until every delivery is done; panics if they take too long.
    pub async fn settle(&self) {
        assert_eq!(
            self.notifier.drain(PATIENCE).await,
            0,
            "deliveries did not settle"
        );
    }

    /// Asserts the server still answers.
    pub async fn assert_alive(&self) {
        assert_eq!(self.get("/healthz").await.status, StatusCode::OK);
    }

    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
    }
}

/// One request a sink received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When the sink received it.
    pub at: tokio::time::Instant,
}

/// What a sink does with a request once recorded.
#[derive(Clone)]
pub enum Behaviour {
    /// Answer at once with this status.
    Status(u16),
    /// Answer at once with this status and body.
    Reply(u16, &'static [u8]),
    /// Hold every request until the gate gives a permit, then answer 200.
    Gated(Arc<Semaphore>),
    /// Never answer.
    Hang,
    /// Answer 200 after this long.
    Slow(Duration),
    /// Answer 307 to this location.
    Redirect(String),
    /// Answer 200 with a body of this many bytes, streamed.
    Huge(u64),
    /// Answer each request with the next (status, Retry-After) of the
    /// script, then 200 once it is used up.
    Script(Arc<Mutex<VecDeque<Step>>>),
}

/// A scripted answer: a status and an optional `Retry-After`.
pub type Step = (u16, Option<&'static str>);

impl Behaviour {
    pub fn script(steps: &[Step]) -> Self {
        Behaviour::Script(Arc::new(Mutex::new(steps.iter().copied().collect())))
    }
}

type SinkBody = BoxBody<Bytes, Infallible>;

async fn respond(behaviour: &Behaviour) -> Response<SinkBody> {
    let status = |code: u16| {
        let mut res = Response::new(Full::<Bytes>::default().boxed());
        *res.status_mut() = StatusCode::from_u16(code).unwrap();
        res
    };
    match behaviour {
        Behaviour::Status(code) => status(*code),
        Behaviour::Reply(code, body) => {
            let mut res = Response::new(Full::new(Bytes::from_static(body)).boxed());
            *res.status_mut() = StatusCode::from_u16(*code).unwrap();
            res
        }
        Behaviour::Gated(gate) => {
            gate.acquire().await.unwrap().forget();
            status(200)
        }
        Behaviour::Hang => std::future::pending().await,
        Behaviour::Slow(wait) => {
            tokio::time::sleep(*wait).await;
            status(200)
        }
        Behaviour::Redirect(location) => {
            let mut res = status(307);
            res.headers_mut()
                .insert("location", location.parse().unwrap());
            res
        }
        Behaviour::Huge(len) => {
            const CHUNK: usize = 64 * 1024;
            let chunk = Bytes::from(vec![b'z'; CHUNK]);
            let chunks = len.div_ceil(CHUNK as u64) as usize;
            let body = StreamBody::new(stream::iter(
                std::iter::repeat_n(chunk, chunks).map(|c| Ok::<_, Infallible>(Frame::data(c))),
            ));
            Response::new(BodyExt::boxed(body))
        }
        Behaviour::Script(steps) => {
            let step = steps.lock().unwrap().pop_front();
            match step {
                None => status(200),
                Some((code, retry_after)) => {
                    let mut res = status(code);
                    if let Some(after) = retry_after {
                        res.headers_mut()
                            .insert("retry-after", after.parse().unwrap());
                    }
                    res
                }
            }
        }
    }
}

/// A webhook receiver on 127.0.0.1:0.
pub struct Sink {
    pub addr: SocketAddr,
    pub received: mpsc::UnboundedReceiver<Received>,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
}

impl Sink {
    pub async fn start(behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, behaviour)
    }

    /// Serves on a listener the caller bound (plain HTTP).
    pub fn serve(listener: TcpListener, behaviour: Behaviour) -> Self {
        Self::serve_with(listener, behaviour, None)
    }

    /// Serves HTTPS with `tls`.
    pub fn serve_with(
        listener: TcpListener,
        behaviour: Behaviour,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Self {
        let addr = listener.local_addr().unwrap();
        let (tx, received) = mpsc::unbounded_channel();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let tx = tx.clone();
                let behaviour = behaviour.clone();
                let service = service_fn(move |req: Request<Incoming>| {
                    let tx = tx.clone();
                    let behaviour = behaviour.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let _ = tx.send(Received {
                            method: parts.method,
                            path: parts.uri.path().to_owned(),
                            headers: parts.headers,
                            body,
                            at: tokio::time::Instant::now(),
                        });
                        Ok::<_, Infallible>(respond(&behaviour).await)
                    }
                });
                let tls = tls.clone();
                tokio::spawn(async move {
                    let builder = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                    }
                });
            }
        });
        Sink {
            addr,
            received,
            connections,
        }
    }

    pub async fn ok() -> Self {
        Self::start(Behaviour::Status(200)).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The next request, waiting for it.
    pub async fn next(&mut self) -> Received {
        tokio::time::timeout(PATIENCE, self.received.recv())
            .await
            .expect("a delivery arrived in time")
            .expect("the sink is running")
    }

    /// Everything received so far, without waiting.
    pub fn drain_now(&mut self) -> Vec<Received> {
        let mut all = Vec::new();
        while let Ok(r) = self.received.try_recv() {
            all.push(r);
        }
        all
    }
}

/// A port on 127.0.0.1 with nothing listening.
pub async fn dead_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// This process's resident memory, in bytes (Linux).
pub fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}
