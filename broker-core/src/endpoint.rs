//! A subscriber's HTTP spec: URL, method and headers, validated.

use http::{header::HeaderName, HeaderMap, HeaderValue, Method, Uri};

use std::sync::Arc;

use crate::{Error, Filter, Limits, Retry, MAX_SCHEDULE, MAX_WAIT};

/// Where and how a subscriber wants its deliveries: an absolute `http` or
/// `https` URL, one of `POST`, `PUT` or `PATCH`, and custom headers.
///
/// The URL is kept in a canonical form (lower-case scheme and host, no
/// default port, `/` for an empty path), so that replaying a registration
/// with a differently spelled but equal URL finds the same subscriber.
///
/// # Examples
///
/// ```
/// use broker_core::{Endpoint, Limits};
///
/// let endpoint = Endpoint::new(
///     "HTTP://Example.COM:80",
///     Some("post"),
///     [("X-Api-Key", "k1")],
///     &Limits::default(),
/// )
/// .unwrap();
/// assert_eq!(endpoint.url().to_string(), "http://example.com/");
/// assert_eq!(endpoint.method().as_str(), "POST");
/// assert_eq!(endpoint.headers()["x-api-key"], "k1");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    url: Uri,
    method: Method,
    headers: HeaderMap,
    retry: Retry,
    ordered: bool,
    /// Which messages it wants (`None`: all).
    filter: Option<Arc<Filter>>,
}

/// Header names the broker sets itself or that belong to one connection.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
    "expect",
];

fn invalid(reason: impl Into<String>) -> Error {
    Error::InvalidEndpoint {
        reason: reason.into(),
    }
}

impl Endpoint {
    /// Validates a subscriber's URL, method (default `POST`) and headers.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidEndpoint`] when the URL is not an absolute `http` or
    /// `https` URL with a host (or holds user info, a fragment, a bad port,
    /// or is longer than [`Limits::max_url_len`]); when the method is not
    /// `POST`, `PUT` or `PATCH`; when a header name or value is not valid
    /// HTTP, is given twice, is one the broker controls (`Host`,
    /// `Content-Type`, `Content-Length`, hop-by-hop headers, `webhook-*`), or
    /// the headers exceed [`Limits::max_headers`] or
    /// [`Limits::max_header_bytes`].
    pub fn new<K, V>(
        url: &str,
        method: Option<&str>,
        headers: impl IntoIterator<Item = (K, V)>,
        limits: &Limits,
    ) -> Result<Self, Error>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let url = canonical_url(url, limits)?;
        let method = match method {
            None => Method::POST,
            Some(m) if m.eq_ignore_ascii_case("POST") => Method::POST,
            Some(m) if m.eq_ignore_ascii_case("PUT") => Method::PUT,
            Some(m) if m.eq_ignore_ascii_case("PATCH") => Method::PATCH,
            Some(_) => return Err(invalid("method must be POST, PUT or PATCH")),
        };
        let headers = validate_headers(headers, limits)?;
        Ok(Endpoint {
            url,
            method,
            headers,
            retry: Retry::Attempts(1),
            ordered: false,
            filter: None,
        })
    }

    /// Opts in to retries: each delivery is attempted up to `max_attempts`
    /// times in all (1, the default, is the spec's fire-and-forget).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidEndpoint`] when `max_attempts` is 0 or more than
    /// [`Limits::max_delivery_attempts`].
    ///
    /// # Examples
    ///
    /// ```
    /// use broker_core::{Endpoint, Limits};
    ///
    /// let limits = Limits::default();
    /// let none: [(&str, &str); 0] = [];
    /// let endpoint = Endpoint::new("http://h/", None, none, &limits)?.with_max_attempts(5, &limits)?;
    /// assert_eq!(endpoint.max_attempts(), 5);
    /// # Ok::<_, broker_core::Error>(())
    /// ```
    pub fn with_max_attempts(self, max_attempts: u32, limits: &Limits) -> Result<Self, Error> {
        if max_attempts == 0 || max_attempts > limits.max_delivery_attempts {
            return Err(invalid(format!(
                "retry.max_attempts must be between 1 and {}",
                limits.max_delivery_attempts
            )));
        }
        self.with_retry(Retry::Attempts(max_attempts), limits)
    }

    /// Sets the retry policy.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidEndpoint`] when [`Retry::Attempts`] is 0 or more than
    /// [`Limits::max_delivery_attempts`], or a [`Retry::Schedule`] lists
    /// more than [`MAX_SCHEDULE`] waits or one longer than [`MAX_WAIT`].
    ///
    /// # Examples
    ///
    /// ```
    /// use broker_core::{Endpoint, Limits, Retry};
    ///
    /// let limits = Limits::default();
    /// let none: [(&str, &str); 0] = [];
    /// let endpoint = Endpoint::new("http://h/", None, none, &limits)?.with_retry(Retry::standard(), &limits)?;
    /// assert_eq!(endpoint.max_attempts(), 8);
    /// # Ok::<_, broker_core::Error>(())
    /// ```
    pub fn with_retry(mut self, retry: Retry, limits: &Limits) -> Result<Self, Error> {
        match &retry {
            Retry::Attempts(n) if *n == 0 || *n > limits.max_delivery_attempts => {
                return Err(invalid(format!(
                    "retry.max_attempts must be between 1 and {}",
                    limits.max_delivery_attempts
                )))
            }
            Retry::Schedule(waits) if waits.len() > MAX_SCHEDULE => {
                return Err(invalid(format!(
                    "retry.schedule may list at most {MAX_SCHEDULE} waits"
                )))
            }
            Retry::Schedule(waits) if waits.iter().any(|w| *w > MAX_WAIT) => {
                return Err(invalid("retry.schedule waits must be at most 24h"))
            }
            _ => {}
        }
        self.retry = retry;
        Ok(self)
    }

    /// Delivers one message at a time, in offset order: a failing message
    /// holds back the later ones until it is delivered or given up on.
    pub fn with_ordered(mut self, ordered: bool) -> Self {
        self.ordered = ordered;
        self
    }

    /// Delivers only the messages `filter` matches (`None`: all); the
    /// others are done with at once, counted
    /// [`filtered`](crate::DeliveryCounts::filtered).
    pub fn with_filter(mut self, filter: Option<Filter>) -> Self {
        self.filter = filter.map(Arc::new);
        self
    }

    /// Its filter, if any.
    pub fn filter(&self) -> Option<&Filter> {
        self.filter.as_deref()
    }

    /// Whether it wants `message` (its filter matches, or it has none).
    pub fn wants(&self, message: &crate::Message) -> bool {
        self.filter.as_ref().is_none_or(|f| f.matches(message))
    }

    /// The canonical URL.
    pub fn url(&self) -> &Uri {
        &self.url
    }

    /// The HTTP method of deliveries.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The subscriber's own headers, sent with every delivery.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The same as (name, value) strings, as a registration gives them
    /// (and a store keeps them).
    pub fn header_pairs(&self) -> Vec<(String, String)> {
        self.headers
            .iter()
            .map(|(k, v)| {
                let value = String::from_utf8_lossy(v.as_bytes()).into_owned();
                (k.as_str().to_owned(), value)
            })
            .collect()
    }

    /// How many attempts each delivery gets in all (1: no retry).
    pub fn max_attempts(&self) -> u32 {
        self.retry.max_attempts()
    }

    /// The retry policy.
    pub fn retry(&self) -> &Retry {
        &self.retry
    }

    /// Whether deliveries go one at a time, in offset order.
    pub fn ordered(&self) -> bool {
        self.ordered
    }
}

fn canonical_url(raw: &str, limits: &Limits) -> Result<Uri, Error> {
    if raw.len() > limits.max_url_len {
        return Err(invalid(format!(
            "url must be at most {} bytes",
            limits.max_url_len
        )));
    }
    if raw.contains('#') {
        return Err(invalid("url must not have a fragment"));
    }
    let uri: Uri = raw
        .parse()
        .map_err(|_| invalid("url must be an absolute http:// or https:// URL"))?;
    let scheme = match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") => "http",
        Some(s) if s.eq_ignore_ascii_case("https") => "https",
        _ => return Err(invalid("url must be an absolute http:// or https:// URL")),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| invalid("url must have a host"))?;
    if authority.as_str().contains('@') {
        return Err(invalid(
            "url must not hold user info; put credentials in a header instead",
        ));
    }
    let host = authority.host();
    if host.is_empty() || host == "[]" {
        return Err(invalid("url must have a host"));
    }
    // Read the port from the text: `Authority::port` hides ports that do
    // not fit in a u16 instead of refusing them.
    let port = match authority.as_str()[host.len()..].strip_prefix(':') {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n != 0 && p.bytes().all(|b| b.is_ascii_digit()) => Some(n),
            _ => return Err(invalid("url port must be between 1 and 65535")),
        },
    };
    let default_port = if scheme == "http" { 80 } else { 443 };
    let mut canonical = String::with_capacity(raw.len());
    canonical.push_str(scheme);
    canonical.push_str("://");
    canonical.push_str(&host.to_ascii_lowercase());
    if let Some(port) = port.filter(|&p| p != default_port) {
        canonical.push(':');
        canonical.push_str(&port.to_string());
    }
    match uri.path_and_query() {
        Some(pq) if !pq.as_str().is_empty() => {
            if !pq.as_str().starts_with('/') {
                canonical.push('/');
            }
            canonical.push_str(pq.as_str());
        }
        _ => canonical.push('/'),
    }
    canonical
        .parse()
        .map_err(|_| invalid("url must be an absolute http:// or https:// URL"))
}

fn validate_headers<K, V>(
    headers: impl IntoIterator<Item = (K, V)>,
    limits: &Limits,
) -> Result<HeaderMap, Error>
where
    K: AsRef<str>,
    V: AsRef<str>,
{
    let mut map = HeaderMap::new();
    let mut bytes = 0usize;
    for (name, value) in headers {
        let (name, value) = (name.as_ref(), value.as_ref());
        if map.len() == limits.max_headers {
            return Err(invalid(format!(
                "at most {} headers are allowed",
                limits.max_headers
            )));
        }
        bytes += name.len() + value.len();
        if bytes > limits.max_header_bytes {
            return Err(invalid(format!(
                "headers must total at most {} bytes",
                limits.max_header_bytes
            )));
        }
        let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            invalid(format!(
                "header name {name:?} is not a valid HTTP header name"
            ))
        })?;
        if RESERVED_HEADERS.contains(&header.as_str()) || header.as_str().starts_with("webhook-") {
            return Err(invalid(format!(
                "header {name:?} is set by the broker and cannot be overridden"
            )));
        }
        let value = HeaderValue::from_str(value).map_err(|_| {
            invalid(format!(
                "the value of header {name:?} holds characters not allowed in HTTP (such as CR or LF)"
            ))
        })?;
        if map.insert(header, value).is_some() {
            return Err(invalid(format!("header {name:?} is given more than once")));
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(raw: &str) -> Result<String, Error> {
        Endpoint::new(raw, None, [("a", "b")], &Limits::default()).map(|e| e.url().to_string())
    }

    #[test]
    fn canonicalises_urls() {
        assert_eq!(url("http://a.example").unwrap(), "http://a.example/");
        assert_eq!(
            url("HTTPS://A.Example:443/X?q=1").unwrap(),
            "https://a.example/X?q=1"
        );
        assert_eq!(
            url("http://127.0.0.1:8080/hook").unwrap(),
            "http://127.0.0.1:8080/hook"
        );
        assert_eq!(url("http://[::1]:9/h").unwrap(), "http://[::1]:9/h");
    }

    #[test]
    fn refuses_bad_urls() {
        for bad in [
            "",
            "/relative",
            "example.com/x",
            "ftp://example.com/",
            "file:///etc/passwd",
            "http://user:pass@example.com/",
            "http://example.com/#frag",
            "http://example.com:0/",
            "http://example.com:65536/",
            "http://example.com:99999999999/",
            "http:///path",
            "http://exa mple.com/",
            &format!("http://example.com/{}", "a".repeat(3000)),
        ] {
            assert!(
                matches!(url(bad), Err(Error::InvalidEndpoint { .. })),
                "{bad:?} should be refused, got {:?}",
                url(bad)
            );
        }
    }

    #[test]
    fn methods() {
        let l = Limits::default();
        let none: [(&str, &str); 0] = [];
        for (m, want) in [("put", "PUT"), ("Patch", "PATCH"), ("POST", "POST")] {
            let e = Endpoint::new("http://h/", Some(m), none, &l).unwrap();
            assert_eq!(e.method().as_str(), want);
        }
        for bad in ["GET", "DELETE", "", "P OST"] {
            assert!(Endpoint::new("http://h/", Some(bad), none, &l).is_err());
        }
    }

    #[test]
    fn refuses_bad_headers() {
        let l = Limits::default();
        for (name, value) in [
            ("X-A", "a\r\nInjected: yes"),
            ("X-A", "a\nb"),
            ("Bad Name", "v"),
            ("", "v"),
            ("Host", "evil"),
            ("Content-Length", "1"),
            ("transfer-encoding", "chunked"),
            ("Connection", "close"),
            ("Webhook-Signature", "v1,x"),
            ("webhook-id", "x"),
        ] {
            assert!(
                Endpoint::new("http://h/", None, [(name, value)], &l).is_err(),
                "{name:?}: {value:?} should be refused"
            );
        }
        let dup = Endpoint::new("http://h/", None, [("X-A", "1"), ("x-a", "2")], &l);
        assert!(dup.is_err());
        let many: Vec<_> = (0..33)
            .map(|i| (format!("x-{i}"), "v".to_string()))
            .collect();
        assert!(Endpoint::new("http://h/", None, many, &l).is_err());
        let big = [("x-big", "v".repeat(9000))];
        assert!(Endpoint::new("http://h/", None, big, &l).is_err());
    }
}
