//! The one error type of broker-http, and the one place that maps errors to
//! HTTP statuses and JSON error bodies.

use std::fmt;

use http::{header, HeaderValue, Response, StatusCode};
use serde::Serialize;

use crate::ResponseBody;

/// Why a request was refused.
///
/// [`ApiError::status`] and [`ApiError::code`] are the single mapping from
/// errors to what the client sees; every response body is
/// `{"error":{"code":"…","message":"…"}}`.
#[derive(Debug)]
#[non_exhaustive]
pub enum ApiError {
    /// A refusal from the broker itself (validation, auth, not found, …).
    Broker(broker_core::Error),
    /// The request body is not valid JSON of the expected shape.
    InvalidJson(serde_json::Error),
    /// The request body could not be read (the client went away, or sent a
    /// malformed body).
    BadBody,
    /// A JSON endpoint was sent another media type.
    UnsupportedMediaType,
    /// The body is larger than the limit, in bytes.
    PayloadTooLarge(usize),
    /// The body did not arrive in time.
    BodyTimeout,
    /// Management calls need the admin token.
    AdminUnauthorized,
    /// Listening needs a listener token or the admin token (or anonymous
    /// listening turned on).
    ListenerUnauthorized,
    /// The listener token is another topic's.
    ListenerForbidden,
    /// `Authorization: Bearer` and `X-API-Key` were both sent, with
    /// different tokens.
    ConflictingCredentials,
    /// `GET /v1/ws` without a WebSocket handshake (or over HTTP/2).
    UpgradeRequired,
    /// As many live connections as allowed are open.
    TooManyLiveConnections,
    /// Live listening (SSE, WebSocket) is not set up on this API.
    LiveDisabled,
    /// Minting tokens is not set up on this API (no minter).
    MintingDisabled,
    /// A query parameter is malformed.
    InvalidQuery(&'static str),
    /// A JSON body that parsed but asks for something impossible.
    InvalidRequest(std::borrow::Cow<'static, str>),
    /// No route has this path.
    NotFound,
    /// The route exists, but not with this method; the `Allow` value.
    MethodNotAllowed(&'static str),
}

impl ApiError {
    /// The status code this error is answered with.
    pub fn status(&self) -> StatusCode {
        use broker_core::Error as E;
        match self {
            ApiError::Broker(e) => match e {
                E::InvalidTopic { .. }
                | E::InvalidEventType { .. }
                | E::InvalidFilter { .. }
                | E::InvalidIdempotencyKey { .. }
                | E::InvalidPublisherName { .. }
                | E::InvalidListenerName { .. }
                | E::InvalidEndpoint { .. }
                | E::InvalidGroup { .. }
                | E::InvalidScope { .. }
                | E::InvalidTtl { .. }
                | E::InvalidSubject { .. } => StatusCode::BAD_REQUEST,
                E::TopicNotFound
                | E::PublisherNotFound
                | E::SubscriberNotFound
                | E::MessageNotFound
                | E::ListenerNotFound
                | E::GroupNotFound => StatusCode::NOT_FOUND,
                E::Unauthorized | E::InvalidToken { .. } => StatusCode::UNAUTHORIZED,
                E::Forbidden | E::InsufficientScope { .. } | E::ReservedTopic => {
                    StatusCode::FORBIDDEN
                }
                E::SubscriberConflict { .. }
                | E::AlreadyRegistered { .. }
                | E::LimitExceeded { .. }
                | E::TopicExists => StatusCode::CONFLICT,
                E::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
                E::Closed | E::Storage { .. } | E::Overloaded { .. } => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ApiError::InvalidJson(_) | ApiError::BadBody => StatusCode::BAD_REQUEST,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::AdminUnauthorized | ApiError::ListenerUnauthorized => {
                StatusCode::UNAUTHORIZED
            }
            ApiError::ListenerForbidden => StatusCode::FORBIDDEN,
            ApiError::UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
            ApiError::TooManyLiveConnections => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::InvalidQuery(_)
            | ApiError::InvalidRequest(_)
            | ApiError::ConflictingCredentials => StatusCode::BAD_REQUEST,
            ApiError::NotFound | ApiError::LiveDisabled | ApiError::MintingDisabled => {
                StatusCode::NOT_FOUND
            }
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    /// The machine-readable `code` of the error body.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Broker(e) => e.code(),
            ApiError::InvalidJson(_) => "invalid_json",
            ApiError::BadBody => "bad_body",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::BodyTimeout => "request_timeout",
            ApiError::AdminUnauthorized | ApiError::ListenerUnauthorized => "unauthorized",
            ApiError::ListenerForbidden => "forbidden",
            ApiError::ConflictingCredentials => "conflicting_credentials",
            ApiError::UpgradeRequired => "upgrade_required",
            ApiError::TooManyLiveConnections => "too_many_live_connections",
            ApiError::InvalidQuery(_) => "invalid_query",
            ApiError::InvalidRequest(_) => "invalid_request",
            ApiError::NotFound => "not_found",
            ApiError::LiveDisabled => "live_disabled",
            ApiError::MintingDisabled => "minting_disabled",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
        }
    }

    /// The `code` of a WebSocket `error` frame: the five codes of the live
    /// protocol.
    pub fn live_code(&self) -> &'static str {
        use broker_core::Error as E;
        match self {
            ApiError::Broker(E::TopicNotFound) => "TOPIC_NOT_FOUND",
            ApiError::Broker(E::IdempotencyKeyReused) => "IDEMPOTENCY_KEY_REUSED",
            ApiError::Broker(
                E::Unauthorized
                | E::Forbidden
                | E::ReservedTopic
                | E::InvalidToken { .. }
                | E::InsufficientScope { .. },
            )
            | ApiError::AdminUnauthorized
            | ApiError::ListenerUnauthorized
            | ApiError::ListenerForbidden => "UNAUTHORIZED",
            e if e.status().is_client_error() => "BAD_REQUEST",
            _ => "INTERNAL",
        }
    }

    /// The JSON error response.
    pub fn into_response(self) -> Response<ResponseBody> {
        #[derive(Serialize)]
        struct Body<'a> {
            error: Inner<'a>,
        }
        #[derive(Serialize)]
        struct Inner<'a> {
            code: &'a str,
            message: String,
        }
        let status = self.status();
        // A 500 never carries the cause: it is logged, not shown.
        let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %self, "internal error");
            "internal error".to_owned()
        } else if let ApiError::Broker(broker_core::Error::Storage { .. }) = &self {
            // The cause (paths, OS errors) is for the operator's log.
            tracing::error!(error = %self, "storage error");
            "the broker could not store this; nothing was changed, retry later".to_owned()
        } else {
            self.to_string()
        };
        let body = serde_json::to_vec(&Body {
            error: Inner {
                code: self.code(),
                message,
            },
        })
        .unwrap_or_default();
        let mut response = crate::json::response(status, body);
        match self {
            ApiError::MethodNotAllowed(allow) => {
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            ApiError::Broker(
                broker_core::Error::Storage { .. } | broker_core::Error::Overloaded { .. },
            ) => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::UpgradeRequired => {
                let h = response.headers_mut();
                h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                h.insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
            }
            ApiError::AdminUnauthorized
            | ApiError::ListenerUnauthorized
            | ApiError::Broker(broker_core::Error::Unauthorized) => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            // RFC 6750's error codes, with the reason as a short name.
            ApiError::Broker(broker_core::Error::InvalidToken { reason }) => {
                let value = format!(
                    "Bearer error=\"invalid_token\", error_description=\"{}\"",
                    reason.as_str()
                );
                if let Ok(value) = HeaderValue::from_str(&value) {
                    response
                        .headers_mut()
                        .insert(header::WWW_AUTHENTICATE, value);
                }
            }
            ApiError::Broker(broker_core::Error::InsufficientScope { needed }) => {
                let value = format!("Bearer error=\"insufficient_scope\", scope=\"{needed}\"");
                if let Ok(value) = HeaderValue::from_str(&value) {
                    response
                        .headers_mut()
                        .insert(header::WWW_AUTHENTICATE, value);
                }
            }
            _ => {}
        }
        response
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::Broker(e) => e.fmt(f),
            ApiError::InvalidJson(e) => {
                write!(f, "the request body is not valid JSON for this call: {e}")
            }
            ApiError::BadBody => f.write_str("the request body could not be read"),
            ApiError::UnsupportedMediaType => {
                f.write_str("this call takes a JSON body: send `Content-Type: application/json`")
            }
            ApiError::PayloadTooLarge(limit) => {
                write!(
                    f,
                    "the request body is larger than the limit of {limit} bytes"
                )
            }
            ApiError::BodyTimeout => {
                f.write_str("the request body did not arrive in time; send it without pausing")
            }
            ApiError::AdminUnauthorized => f.write_str(
                "management calls need the admin token or a JWT with the admin scope: send \
                 `Authorization: Bearer <token>` or `X-API-Key: <token>`",
            ),
            ApiError::ListenerUnauthorized => f.write_str(
                "listening needs a listener token of this topic, a JWT with its listen scope, \
                 or the admin token: send `Authorization: Bearer <token>`, \
                 `X-API-Key: <token>` or `?access_token=<token>`",
            ),
            ApiError::ListenerForbidden => {
                f.write_str("this listener token is not valid for this topic")
            }
            ApiError::ConflictingCredentials => f.write_str(
                "`Authorization: Bearer` and `X-API-Key` carry different tokens; send one, \
                 or the same token in both",
            ),
            ApiError::UpgradeRequired => f.write_str(
                "this path takes a WebSocket handshake (HTTP/1.1 GET with `Upgrade: websocket`, \
                 `Sec-WebSocket-Version: 13`)",
            ),
            ApiError::TooManyLiveConnections => {
                f.write_str("too many live connections are open; try again later")
            }
            ApiError::LiveDisabled => {
                f.write_str("live listening (SSE, WebSocket) is not enabled on this server")
            }
            ApiError::MintingDisabled => {
                f.write_str("this server mints no tokens (it has no token minter)")
            }
            ApiError::InvalidQuery(why) => write!(f, "invalid query: {why}"),
            ApiError::InvalidRequest(why) => write!(f, "invalid request: {why}"),
            ApiError::NotFound => f.write_str("no such path; the API lives under /v1"),
            ApiError::MethodNotAllowed(allow) => {
                write!(f, "this path does not take that method; it takes {allow}")
            }
        }
    }
}

impl std::error::Error for ApiError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ApiError::Broker(e) => Some(e),
            ApiError::InvalidJson(e) => Some(e),
            _ => None,
        }
    }
}

impl From<broker_core::Error> for ApiError {
    fn from(e: broker_core::Error) -> Self {
        ApiError::Broker(e)
    }
}
