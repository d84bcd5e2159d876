//! The HTTP side of the webhook broker, on hyper 1.x with no framework:
//!
//! - [`Api`]: the v1 API as a hyper `Service` over a [`broker_core::Broker`]
//!   (route table in `routes.rs`, one function per call in `handlers.rs`);
//! - [`LiveHub`]: a second [`broker_core::Notifier`] that pushes each
//!   message to live listeners over Server-Sent Events
//!   (`GET /v1/topics/{topic}/events`) and WebSocket (`GET /v1/ws`), each
//!   connection with its own bounded queue (`live/`); enable it with
//!   [`ApiConfig::live`] and `Broker::new((webhooks, hub))`;
//! - [`serve`]: accepts connections on a listener the caller bound, until a
//!   shutdown future the caller supplies completes;
//! - [`Metrics`]: Prometheus metrics for `GET /metrics`, set through
//!   [`ApiConfig::metrics`];
//!
//! Webhook delivery is the `broker-delivery` crate's `WebhookNotifier`;
//! this crate only asks the broker about it (pacing, circuits, leases),
//! through [`broker_core::Notifier`].
//!
//! Errors map to statuses and JSON bodies in one place, [`ApiError`]; the
//! OpenAPI document of the API is `docs/openapi.json`, served at
//! `GET /v1/openapi.json`.
//!
//! # Examples
//!
//! Embedding the broker in another service:
//!
//! ```no_run
//! use broker_core::Broker;
//! use broker_delivery::{DeliveryConfig, WebhookNotifier};
//! use broker_http::{serve, Api, ApiConfig, ServerConfig};
//!
//! # async fn run() -> std::io::Result<()> {
//! let notifier = WebhookNotifier::new(DeliveryConfig::default());
//! let broker = Broker::new(notifier.clone());
//! let api = Api::new(broker.clone(), ApiConfig::default());
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! serve(listener, api, ServerConfig::default(), async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await?;
//!
//! broker.close();
//! let undelivered = notifier.drain(std::time::Duration::from_secs(10)).await;
//! println!("{undelivered} deliveries left undelivered");
//! # Ok(()) }
//! ```

mod error;
mod handlers;
mod json;
mod live;
mod metrics;
mod routes;
mod server;
mod ui;

use std::{convert::Infallible, future::Future, pin::Pin, sync::Arc};

use broker_core::Broker;
use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use hyper::body::Body;
use subtle::ConstantTimeEq;

pub use error::ApiError;
pub use live::{LiveConfig, LiveHub, Overflow};

/// The body of every response: boxed, so whole and streamed bodies share
/// one type.
pub type ResponseBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;
pub use metrics::Metrics;
pub use server::{serve, ServerConfig};
pub use ui::UiConfig;

/// Settings of the HTTP API.
#[derive(Clone)]
pub struct ApiConfig {
    /// When set, every management call (register, deregister, list,
    /// detail) needs `Authorization: Bearer <admin token>` (or `X-API-Key`),
    /// which may also listen live on any topic. Publishing always takes a
    /// publisher token, or a JWT with `publish:` scope. A broker with a
    /// token verifier ([`Broker::with_token_verifier`]) guards management
    /// even without an admin token: then a JWT with `admin` scope is the
    /// one way in.
    pub admin_token: Option<String>,
    /// The largest message body accepted, in bytes. Default 1 MiB.
    pub max_body_bytes: usize,
    /// The largest JSON body of a management call (and of a group pull),
    /// in bytes. Default 64 KiB. A group ack may be `max_body_bytes`.
    pub max_json_bytes: usize,
    /// Time a client has to send a whole request body once its headers
    /// are in; a body that stalls is answered `408`. Default 30 s.
    pub body_timeout: std::time::Duration,
    /// Served at `GET /metrics` (behind the admin token, when one is set);
    /// `None`, the default: no `/metrics`.
    pub metrics: Option<Arc<Metrics>>,
    /// Live listening: `GET /v1/topics/{topic}/events` (Server-Sent Events)
    /// and `GET /v1/ws` (WebSocket). The hub must also be (part of) the
    /// broker's notifier, or it hears no publishes. `None`, the default:
    /// those paths answer `404`.
    pub live: Option<LiveHub>,
    /// The retry policy of a subscriber that names none. `None`, the
    /// default: one attempt (the spec's fire-and-forget).
    pub default_retry: Option<broker_core::Retry>,
    /// After a secret rotation, how long deliveries are signed with the old
    /// secret too. Default 24 h.
    pub secret_overlap: std::time::Duration,
    /// Signs the tokens of `POST /v1/tokens` (the admin's call); the
    /// broker's token verifier must accept what it signs. `None`, the
    /// default: that path answers `404`.
    pub minter: Option<Arc<dyn broker_core::TokenMinter>>,
    /// Whether the broker's token verifier, when it has one, closes
    /// management to callers without a credential even when no admin token
    /// is set (then a JWT with `admin` scope is the way in). Default true.
    /// The server turns it off when the verifier holds only the key it
    /// mints with, so that a broker given no credential stays open.
    pub verifier_guards_management: bool,
    /// The console at `/ui`. `None`, the default: no console.
    pub ui: Option<UiConfig>,
}

impl ApiConfig {
    /// The defaults: no admin token, 1 MiB messages, 64 KiB JSON bodies.
    pub fn new() -> Self {
        ApiConfig {
            admin_token: None,
            max_body_bytes: 1024 * 1024,
            max_json_bytes: 64 * 1024,
            body_timeout: std::time::Duration::from_secs(30),
            metrics: None,
            live: None,
            default_retry: None,
            secret_overlap: std::time::Duration::from_secs(24 * 3600),
            minter: None,
            verifier_guards_management: true,
            ui: None,
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiConfig")
            .field("admin_token", &self.admin_token.as_ref().map(|_| ".."))
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_json_bytes", &self.max_json_bytes)
            .field("body_timeout", &self.body_timeout)
            .field("metrics", &self.metrics.is_some())
            .field("live", &self.live)
            .field("default_retry", &self.default_retry)
            .field("secret_overlap", &self.secret_overlap)
            .field("minter", &self.minter.is_some())
            .field(
                "verifier_guards_management",
                &self.verifier_guards_management,
            )
            .field("ui", &self.ui)
            .finish()
    }
}

/// The v1 HTTP API over a broker: a hyper `Service`, cheap to clone.
///
/// Call [`Api::handle`] directly (tests do, with no socket) or hand it to
/// [`serve`].
///
/// # Examples
///
/// ```
/// use broker_core::Broker;
/// use broker_delivery::{DeliveryConfig, WebhookNotifier};
/// use broker_http::{Api, ApiConfig};
/// use http_body_util::{BodyExt, Full};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let broker = Broker::new(WebhookNotifier::new(DeliveryConfig::default()));
/// let api = Api::new(broker, ApiConfig::new());
/// let request = http::Request::post("/v1/topics/orders/publishers")
///     .header("content-type", "application/json")
///     .body(Full::new(bytes::Bytes::from_static(br#"{"name":"checkout"}"#)))
///     .unwrap();
/// let response = api.handle(request).await;
/// assert_eq!(response.status(), 201);
/// let body = response.into_body().collect().await.unwrap().to_bytes();
/// let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
/// assert_eq!(json["name"], "checkout");
/// # });
/// ```
#[derive(Clone)]
pub struct Api {
    inner: Arc<ApiInner>,
}

struct ApiInner {
    broker: Broker,
    config: ApiConfig,
    started: std::time::Instant,
}

impl Api {
    /// Serves `broker` with `config`.
    pub fn new(broker: Broker, config: ApiConfig) -> Self {
        Api {
            inner: Arc::new(ApiInner {
                broker,
                config,
                started: std::time::Instant::now(),
            }),
        }
    }

    /// The broker behind the API.
    pub fn broker(&self) -> &Broker {
        &self.inner.broker
    }

    /// How long since the API was made (the server's uptime).
    pub fn uptime(&self) -> std::time::Duration {
        self.inner.started.elapsed()
    }

    /// The API's settings.
    pub fn config(&self) -> &ApiConfig {
        &self.inner.config
    }

    /// Answers one request. Every error becomes a JSON error response, so
    /// this never fails.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<ResponseBody>
    where
        B: Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (mut parts, body) = req.into_parts();
        let route = routes::Route::recognise(parts.uri.path());
        // hyper's upgrade hook, taken out of the extensions (a disjoint
        // field, so the route may keep borrowing the path) only where an
        // upgrade is answered.
        let on_upgrade = match route {
            Some(routes::Route::WebSocket) => {
                parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
            }
            _ => None,
        };
        let (route_name, is_publish) = (
            route.map_or("unknown", routes::Route::name),
            matches!(route, Some(routes::Route::Messages(_))),
        );
        let outcome = routes::dispatch(self, route, &parts, on_upgrade, body).await;
        if let Some(metrics) = &self.inner.config.metrics {
            let status = match &outcome {
                Ok(response) => response.status(),
                Err(e) => e.status(),
            };
            metrics.http_request(route_name, status.as_u16());
            if is_publish {
                metrics.publish(&outcome);
            }
        }
        match outcome {
            Ok(response) => response,
            Err(e) => e.into_response(),
        }
    }

    /// Who makes a management call: the admin (the admin token, a JWT
    /// with `admin` in its scope, or anyone when management is open), or a
    /// tenant with the grants of its JWT (`manage:`, `listen:`), checked
    /// per topic by the route table.
    ///
    /// Management is open when the API has no admin token and the broker
    /// no token verifier that guards it
    /// ([`ApiConfig::verifier_guards_management`]). A JWT presented to an
    /// open broker still counts: a tenant's narrows what is seen (a portal
    /// on an open broker), and one the verifier refuses is `401`.
    fn manager(&self, headers: &HeaderMap) -> Result<Manager, ApiError> {
        let config = &self.inner.config;
        let verifier = self.inner.broker.has_token_verifier();
        let open = config.admin_token.is_none() && !(verifier && config.verifier_guards_management);
        let presented = handlers::credential(headers)?;
        let Some(presented) = presented else {
            return if open {
                Ok(Manager::Admin)
            } else {
                Err(ApiError::AdminUnauthorized)
            };
        };
        if self.is_admin(presented) {
            return Ok(Manager::Admin);
        }
        match self.inner.broker.verify_token(presented)? {
            Some(grants) if grants.is_admin() => Ok(Manager::Admin),
            Some(grants) => Ok(Manager::Tenant(grants)),
            None if open => Ok(Manager::Admin),
            None => Err(ApiError::AdminUnauthorized),
        }
    }

    /// Whether `presented` is the admin token (compared in constant time);
    /// false when none is set.
    pub(crate) fn is_admin(&self, presented: &str) -> bool {
        self.inner
            .config
            .admin_token
            .as_ref()
            .is_some_and(|expected| bool::from(presented.as_bytes().ct_eq(expected.as_bytes())))
    }

    /// The live hub, or why there is none.
    fn live(&self) -> Result<&LiveHub, ApiError> {
        self.inner
            .config
            .live
            .as_ref()
            .ok_or(ApiError::LiveDisabled)
    }
}

/// Who makes a management call ([`Api::manager`]).
#[derive(Debug, Clone)]
pub(crate) enum Manager {
    /// Every call.
    Admin,
    /// Calls on the topics its grants may manage.
    Tenant(broker_core::Grants),
}

impl Manager {
    /// Whether it may manage `topic`.
    pub(crate) fn may_manage(&self, topic: &str) -> bool {
        match self {
            Manager::Admin => true,
            Manager::Tenant(grants) => grants.may_manage(topic),
        }
    }

    /// Whether `topic` is listed to it: one it may manage or listen to.
    pub(crate) fn sees(&self, topic: &str) -> bool {
        match self {
            Manager::Admin => true,
            Manager::Tenant(grants) => grants.may_manage(topic) || grants.may_listen(topic),
        }
    }

    /// `403` unless it may manage `topic`.
    pub(crate) fn require(&self, topic: &str) -> Result<(), ApiError> {
        if self.may_manage(topic) {
            return Ok(());
        }
        Err(broker_core::Error::InsufficientScope {
            needed: format!("manage:{topic}"),
        }
        .into())
    }

    /// `403` unless it is the admin.
    pub(crate) fn require_admin(&self) -> Result<(), ApiError> {
        match self {
            Manager::Admin => Ok(()),
            Manager::Tenant(_) => Err(broker_core::Error::InsufficientScope {
                needed: "admin".to_owned(),
            }
            .into()),
        }
    }
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("broker", &self.inner.broker)
            .field("config", &self.inner.config)
            .finish()
    }
}

impl<B> hyper::service::Service<Request<B>> for Api
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: Request<B>) -> Self::Future {
        let api = self.clone();
        Box::pin(async move { Ok(api.handle(req).await) })
    }
}

/// Compiles the Rust examples of README.md as doctests, so the README
/// cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
