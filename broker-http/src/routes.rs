//! The route table of the v1 API: one `match` on method and path.

use broker_core::Role;
use http::{Method, Response};
use hyper::body::Body;

use crate::{
    handlers::{self, Owner},
    live, Api, ApiError, ResponseBody,
};

impl<'a> Route<'a> {
    /// The topic the route is about, if one.
    pub(crate) fn topic(self) -> Option<&'a str> {
        use Route::*;
        match self {
            Health | Stats | Ready | Metrics | OpenApi | Topics | WebSocket | Tokens | WhoAmI
            | Ui(_) => None,
            Topic(t) | Publishers(t) | Subscribers(t) | Messages(t) | Batch(t) | Groups(t)
            | Listeners(t) | Events(t) => Some(t),
            Publisher(t, _)
            | Subscriber(t, _)
            | DeadLetters(t, _)
            | Message(t, _)
            | Attempts(t, _)
            | Redrive(t, _)
            | SubscriberReplay(t, _)
            | Enable(t, _)
            | RotateSecret(t, _)
            | Group(t, _)
            | Pull(t, _)
            | Ack(t, _)
            | GroupDeadLetters(t, _)
            | GroupRedrive(t, _)
            | Listener(t, _) => Some(t),
        }
    }
}

/// A recognised path, with its parameters borrowed from the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route<'a> {
    Health,
    /// `GET /v1/stats` (seed 003's shape).
    Stats,
    Ready,
    Metrics,
    OpenApi,
    Topics,
    Topic(&'a str),
    Publishers(&'a str),
    Publisher(&'a str, &'a str),
    Subscribers(&'a str),
    Subscriber(&'a str, &'a str),
    DeadLetters(&'a str, &'a str),
    Message(&'a str, &'a str),
    Attempts(&'a str, &'a str),
    Redrive(&'a str, &'a str),
    SubscriberReplay(&'a str, &'a str),
    Enable(&'a str, &'a str),
    RotateSecret(&'a str, &'a str),
    Messages(&'a str),
    Batch(&'a str),
    Groups(&'a str),
    Group(&'a str, &'a str),
    Pull(&'a str, &'a str),
    Ack(&'a str, &'a str),
    GroupDeadLetters(&'a str, &'a str),
    GroupRedrive(&'a str, &'a str),
    Listeners(&'a str),
    Listener(&'a str, &'a str),
    Events(&'a str),
    WebSocket,
    /// `POST /v1/tokens`: the admin mints a token.
    Tokens,
    /// `GET /v1/whoami`: the admin or a tenant.
    WhoAmI,
    /// The console: the path after `/ui` (empty, or from its `/`).
    Ui(&'a str),
}

impl<'a> Route<'a> {
    /// Recognises `path`. Parameters are taken verbatim (no percent
    /// decoding): topic names and ids never need escaping, so an escaped
    /// one is simply invalid.
    pub(crate) fn recognise(path: &'a str) -> Option<Self> {
        if let Some(rest) = path.strip_prefix("/ui") {
            if rest.is_empty() || rest.starts_with('/') {
                return Some(Route::Ui(rest));
            }
        }
        let rest = path.strip_prefix('/')?;
        let mut segments = rest.split('/');
        let parts: [Option<&str>; 6] = std::array::from_fn(|_| segments.next());
        if segments.next().is_some() {
            return None;
        }
        Some(match parts {
            // `/v1/health` is seed 003's name for it.
            [Some("healthz"), None, ..] | [Some("v1"), Some("health"), None, ..] => Route::Health,
            [Some("v1"), Some("stats"), None, ..] => Route::Stats,
            [Some("readyz"), None, ..] => Route::Ready,
            [Some("metrics"), None, ..] => Route::Metrics,
            [Some("v1"), Some("openapi.json"), None, ..] => Route::OpenApi,
            [Some("v1"), Some("ws"), None, ..] => Route::WebSocket,
            [Some("v1"), Some("tokens"), None, ..] => Route::Tokens,
            [Some("v1"), Some("whoami"), None, ..] => Route::WhoAmI,
            [Some("v1"), Some("topics"), None, ..] => Route::Topics,
            [Some("v1"), Some("topics"), Some(t), None, ..] => Route::Topic(t),
            [Some("v1"), Some("topics"), Some(t), Some("publishers"), None, _] => {
                Route::Publishers(t)
            }
            [Some("v1"), Some("topics"), Some(t), Some("publishers"), Some(id), None] => {
                Route::Publisher(t, id)
            }
            [Some("v1"), Some("topics"), Some(t), Some("subscribers"), None, _] => {
                Route::Subscribers(t)
            }
            [Some("v1"), Some("topics"), Some(t), Some("subscribers"), Some(id), None] => {
                Route::Subscriber(t, id)
            }
            [Some("v1"), Some("topics"), Some(t), Some("subscribers"), Some(id), Some(action)] => {
                match action {
                    "dead-letters" => Route::DeadLetters(t, id),
                    "attempts" => Route::Attempts(t, id),
                    "redrive" => Route::Redrive(t, id),
                    "replay" => Route::SubscriberReplay(t, id),
                    "enable" => Route::Enable(t, id),
                    "rotate-secret" => Route::RotateSecret(t, id),
                    _ => return None,
                }
            }
            [Some("v1"), Some("topics"), Some(t), Some("messages"), None, _] => Route::Messages(t),
            [Some("v1"), Some("topics"), Some(t), Some("messages"), Some("batch"), None] => {
                Route::Batch(t)
            }
            [Some("v1"), Some("topics"), Some(t), Some("messages"), Some(id), None] => {
                Route::Message(t, id)
            }
            [Some("v1"), Some("topics"), Some(t), Some("groups"), None, _] => Route::Groups(t),
            [Some("v1"), Some("topics"), Some(t), Some("groups"), Some(g), None] => {
                Route::Group(t, g)
            }
            [Some("v1"), Some("topics"), Some(t), Some("groups"), Some(g), Some(action)] => {
                match action {
                    "pull" => Route::Pull(t, g),
                    "ack" => Route::Ack(t, g),
                    "dead-letters" => Route::GroupDeadLetters(t, g),
                    "redrive" => Route::GroupRedrive(t, g),
                    _ => return None,
                }
            }
            [Some("v1"), Some("topics"), Some(t), Some("events"), None, _] => Route::Events(t),
            [Some("v1"), Some("topics"), Some(t), Some("listeners"), None, _] => {
                Route::Listeners(t)
            }
            [Some("v1"), Some("topics"), Some(t), Some("listeners"), Some(id), None] => {
                Route::Listener(t, id)
            }
            _ => return None,
        })
    }

    /// The route's name, for metrics labels (bounded: no parameters).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Route::Health => "healthz",
            Route::Stats => "stats",
            Route::Ready => "readyz",
            Route::Metrics => "metrics",
            Route::OpenApi => "openapi",
            Route::Topics => "topics",
            Route::Topic(_) => "topic",
            Route::Publishers(_) => "publishers",
            Route::Publisher(..) => "publisher",
            Route::Subscribers(_) => "subscribers",
            Route::Subscriber(..) => "subscriber",
            Route::DeadLetters(..) => "dead_letters",
            Route::Attempts(..) => "attempts",
            Route::Redrive(..) => "redrive",
            Route::SubscriberReplay(..) => "subscriber_replay",
            Route::Enable(..) => "enable",
            Route::RotateSecret(..) => "rotate_secret",
            Route::Messages(_) => "messages",
            Route::Batch(_) => "batch",
            Route::Message(..) => "message",
            Route::Groups(_) => "groups",
            Route::Group(..) => "group",
            Route::Pull(..) => "pull",
            Route::Ack(..) => "ack",
            Route::GroupDeadLetters(..) => "group_dead_letters",
            Route::GroupRedrive(..) => "group_redrive",
            Route::Listeners(_) => "listeners",
            Route::Listener(..) => "listener",
            Route::Events(_) => "events",
            Route::WebSocket => "ws",
            Route::Tokens => "tokens",
            Route::WhoAmI => "whoami",
            Route::Ui(_) => "ui",
        }
    }

    /// The methods this route takes, as an `Allow` header value.
    pub(crate) fn allow(self) -> &'static str {
        match self {
            Route::Health
            | Route::Stats
            | Route::Ready
            | Route::Metrics
            | Route::OpenApi
            | Route::Events(_)
            | Route::DeadLetters(..)
            | Route::Attempts(..)
            | Route::Message(..)
            | Route::GroupDeadLetters(..)
            | Route::WhoAmI
            | Route::WebSocket => "GET",
            Route::Ui(_) => "GET, HEAD",
            Route::Messages(_) | Route::Topics => "GET, POST",
            Route::Topic(_) => "GET, DELETE",
            Route::Publishers(_)
            | Route::Subscribers(_)
            | Route::Batch(_)
            | Route::Groups(_)
            | Route::Pull(..)
            | Route::Ack(..)
            | Route::GroupRedrive(..)
            | Route::Redrive(..)
            | Route::SubscriberReplay(..)
            | Route::Enable(..)
            | Route::RotateSecret(..)
            | Route::Tokens
            | Route::Listeners(_) => "POST",
            Route::Subscriber(..) => "GET, PATCH, DELETE",
            Route::Publisher(..) | Route::Listener(..) | Route::Group(..) => "DELETE",
        }
    }
}

/// Routes one request to its handler; `route` is what
/// [`Route::recognise`] made of its path.
pub(crate) async fn dispatch<B>(
    api: &Api,
    route: Option<Route<'_>>,
    parts: &http::request::Parts,
    on_upgrade: Option<hyper::upgrade::OnUpgrade>,
    body: B,
) -> Result<Response<ResponseBody>, ApiError>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let route = route.ok_or(ApiError::NotFound)?;
    // Live listening authorises with its own tokens; the console's files
    // are for anyone (they hold no data).
    match (&parts.method, route) {
        (method, Route::Ui(rest)) => {
            return crate::ui::serve(api.config().ui.as_ref(), method, rest)
        }
        (&Method::GET, Route::Events(topic)) => return live::sse::events(api, topic, parts).await,
        (&Method::GET, Route::WebSocket) => return live::ws::upgrade(api, parts, on_upgrade).await,
        // Fetching by offset is listening too: a listener or the admin.
        (&Method::GET, Route::Messages(topic)) => return handlers::fetch(api, topic, parts).await,
        (&Method::GET, Route::Message(topic, id)) => {
            return handlers::lookup(api, topic, id, parts).await
        }
        (&Method::POST, Route::Pull(t, g)) => return handlers::pull(api, t, g, parts, body).await,
        (&Method::POST, Route::Ack(t, g)) => return handlers::ack(api, t, g, parts, body).await,
        _ => {}
    }
    let h = &parts.headers;
    match (&parts.method, route) {
        (&Method::GET, Route::Health) => Ok(handlers::health(api)),
        (&Method::GET, Route::Ready) => Ok(handlers::ready(api).await),
        (&Method::GET, Route::OpenApi) => Ok(handlers::openapi()),
        (&Method::POST, Route::Messages(topic)) => handlers::publish(api, topic, h, body).await,
        (&Method::POST, Route::Batch(topic)) => handlers::publish_batch(api, topic, h, body).await,
        (method, route) => {
            // Everything else is management: the admin token guards it,
            // or a tenant's `manage:` scope for its own topics; listing
            // and creating topics check per topic, the rest is admin's.
            let who = api.manager(h)?;
            match (method, route, route.topic()) {
                (_, _, Some(topic)) => who.require(topic)?,
                (&Method::GET | &Method::POST, Route::Topics, None)
                | (&Method::GET, Route::WhoAmI, None) => {}
                _ => who.require_admin()?,
            }
            match (method, route) {
                (&Method::GET, Route::Topics) => Ok(handlers::list_topics(api, &who)),
                (&Method::GET, Route::WhoAmI) => Ok(handlers::whoami(&who)),
                (&Method::POST, Route::Tokens) => handlers::mint_token(api, h, body).await,
                (&Method::GET, Route::Stats) => Ok(handlers::stats(api)),
                (&Method::GET, Route::Metrics) => handlers::metrics(api),
                (&Method::GET, Route::Topic(t)) => handlers::topic_detail(api, t).await,
                (&Method::POST, Route::Topics) => handlers::create_topic(api, h, body, &who).await,
                (&Method::DELETE, Route::Topic(t)) => handlers::delete_topic(api, t).await,
                (&Method::POST, Route::Publishers(t)) => {
                    handlers::register_credential(api, Role::Publish, t, h, body).await
                }
                (&Method::DELETE, Route::Publisher(t, id)) => {
                    handlers::deregister_publisher(api, t, id).await
                }
                (&Method::POST, Route::Subscribers(t)) => {
                    handlers::register_subscriber(api, t, h, body).await
                }
                (&Method::DELETE, Route::Subscriber(t, id)) => {
                    handlers::deregister_subscriber(api, t, id).await
                }
                (&Method::GET, Route::Subscriber(t, id)) => {
                    handlers::subscriber_detail(api, t, id).await
                }
                (&Method::PATCH, Route::Subscriber(t, id)) => {
                    handlers::update_subscriber(api, t, id, h, body).await
                }
                (&Method::GET, Route::Attempts(t, id)) => {
                    handlers::attempts(api, t, id, parts.uri.query()).await
                }
                (&Method::GET, Route::DeadLetters(t, id)) => {
                    handlers::dead_letters(api, t, Owner::Subscriber(id), parts.uri.query()).await
                }
                (&Method::POST, Route::Redrive(t, id)) => {
                    handlers::redrive(api, t, Owner::Subscriber(id), h, body).await
                }
                (&Method::POST, Route::SubscriberReplay(t, id)) => {
                    handlers::replay_subscriber(api, t, id, h, body).await
                }
                (&Method::POST, Route::Enable(t, id)) => handlers::enable(api, t, id).await,
                (&Method::POST, Route::RotateSecret(t, id)) => {
                    handlers::rotate_secret(api, t, id).await
                }
                (&Method::POST, Route::Listeners(t)) => {
                    handlers::register_credential(api, Role::Listen, t, h, body).await
                }
                (&Method::DELETE, Route::Listener(t, id)) => {
                    handlers::deregister_listener(api, t, id).await
                }
                (&Method::POST, Route::Groups(t)) => handlers::create_group(api, t, h, body).await,
                (&Method::DELETE, Route::Group(t, g)) => handlers::delete_group(api, t, g).await,
                (&Method::GET, Route::GroupDeadLetters(t, g)) => {
                    handlers::dead_letters(api, t, Owner::Group(g), parts.uri.query()).await
                }
                (&Method::POST, Route::GroupRedrive(t, g)) => {
                    handlers::redrive(api, t, Owner::Group(g), h, body).await
                }
                (_, route) => Err(ApiError::MethodNotAllowed(route.allow())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Route::{self, *};

    #[test]
    fn recognises_every_route() {
        let cases = [
            ("/healthz", Some(Health)),
            ("/readyz", Some(Ready)),
            ("/metrics", Some(Metrics)),
            ("/v1/openapi.json", Some(OpenApi)),
            ("/v1/topics", Some(Topics)),
            ("/v1/topics/a", Some(Topic("a"))),
            ("/v1/topics/a/publishers", Some(Publishers("a"))),
            ("/v1/topics/a/publishers/p", Some(Publisher("a", "p"))),
            ("/v1/topics/a/subscribers", Some(Subscribers("a"))),
            ("/v1/topics/a/subscribers/s", Some(Subscriber("a", "s"))),
            (
                "/v1/topics/a/subscribers/s/dead-letters",
                Some(DeadLetters("a", "s")),
            ),
            (
                "/v1/topics/a/subscribers/s/redrive",
                Some(Redrive("a", "s")),
            ),
            (
                "/v1/topics/a/subscribers/s/replay",
                Some(SubscriberReplay("a", "s")),
            ),
            ("/v1/topics/a/subscribers/s/enable", Some(Enable("a", "s"))),
            ("/v1/topics/a/messages/batch", Some(Batch("a"))),
            ("/v1/topics/a/groups", Some(Groups("a"))),
            ("/v1/topics/a/groups/g", Some(Group("a", "g"))),
            ("/v1/topics/a/groups/g/pull", Some(Pull("a", "g"))),
            ("/v1/topics/a/groups/g/ack", Some(Ack("a", "g"))),
            (
                "/v1/topics/a/groups/g/dead-letters",
                Some(GroupDeadLetters("a", "g")),
            ),
            (
                "/v1/topics/a/groups/g/redrive",
                Some(GroupRedrive("a", "g")),
            ),
            (
                "/v1/topics/a/subscribers/s/rotate-secret",
                Some(RotateSecret("a", "s")),
            ),
            ("/v1/topics/a/subscribers/s/other", None),
            ("/v1/topics/a/messages", Some(Messages("a"))),
            ("/v1/topics/a/events", Some(Events("a"))),
            ("/v1/topics/a/listeners", Some(Listeners("a"))),
            ("/v1/topics/a/listeners/l", Some(Listener("a", "l"))),
            ("/v1/ws", Some(WebSocket)),
            ("/v1/tokens", Some(Tokens)),
            ("/v1/whoami", Some(WhoAmI)),
            ("/ui", Some(Ui(""))),
            ("/ui/", Some(Ui("/"))),
            ("/ui/pages/topic.js", Some(Ui("/pages/topic.js"))),
            ("/uix", None),
            ("/v1/ws/x", None),
            ("/v1/topics//publishers", Some(Publishers(""))),
            ("/v1/topics/%2F/messages", Some(Messages("%2F"))),
            ("", None),
            ("/", None),
            ("/v1", None),
            ("/v1/topics/a/messages/x", Some(Message("a", "x"))),
            ("/v1/topics/a/messages/x/y", None),
            ("/v1/topics/a/b/c/d/e", None),
            ("/v1/topics/a/publishers/p/q", None),
            ("/v2/topics", None),
            ("healthz", None),
            ("/healthz/", None),
        ];
        for (path, want) in cases {
            assert_eq!(Route::recognise(path), want, "{path:?}");
        }
    }
}
