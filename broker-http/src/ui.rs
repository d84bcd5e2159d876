//! The console at `/ui`: plain HTML, CSS and ES modules from `src/ui/`,
//! embedded at build time (nothing comes from elsewhere, nothing is read
//! at run time) and served under a strict Content-Security-Policy. The
//! pages talk to the public API only, with the token the user gives
//! them; serving them needs no credential, as they hold no data.

use bytes::Bytes;
use http::{header, HeaderValue, Method, Response, StatusCode};

use crate::{json, ApiError, ResponseBody};

/// Settings of the console ([`ApiConfig::ui`](crate::ApiConfig::ui)).
#[derive(Debug, Clone)]
pub struct UiConfig {
    /// The CSP `frame-ancestors` sources: who may show the console in a
    /// frame (a tenant portal inside the customer's own app). Default
    /// `'none'`: nobody.
    frame_ancestors: String,
}

impl UiConfig {
    /// The console, framed by nobody.
    pub fn new() -> Self {
        UiConfig {
            frame_ancestors: "'none'".to_owned(),
        }
    }

    /// Lets `sources` frame the console: a space-separated list of CSP
    /// sources, such as `https://app.example.com` or `'self'`.
    ///
    /// # Errors
    ///
    /// A sentence saying why, when `sources` is empty, would end the
    /// directive (`;`, `,`) or is not a header value.
    pub fn with_frame_ancestors(mut self, sources: &str) -> Result<Self, String> {
        let sources = sources.split_whitespace().collect::<Vec<_>>().join(" ");
        if sources.is_empty() {
            return Err("frame-ancestors needs at least one source, or 'none'".to_owned());
        }
        if sources.contains([';', ',']) || HeaderValue::from_str(&sources).is_err() {
            return Err(format!(
                "{sources:?} is not a list of CSP sources (no ';' or ',')"
            ));
        }
        self.frame_ancestors = sources;
        Ok(self)
    }

    /// The `Content-Security-Policy` of every console response: its own
    /// files only, no inline script or style, no plug-ins, calls to its
    /// own origin only.
    pub fn content_security_policy(&self) -> String {
        format!(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors {}",
            self.frame_ancestors
        )
    }
}

impl Default for UiConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// One embedded file.
struct Asset {
    /// Its path under `/ui/`.
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

macro_rules! assets {
    ($($path:literal => $type:expr),* $(,)?) => {
        &[$(Asset {
            path: $path,
            content_type: $type,
            body: include_str!(concat!("ui/", $path)),
        }),*]
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file of the console.
const ASSETS: &[Asset] = assets![
    "index.html" => "text/html; charset=utf-8",
    "console.css" => "text/css; charset=utf-8",
    "app.js" => JS,
    "api.js" => JS,
    "dom.js" => JS,
    "pages/login.js" => JS,
    "pages/overview.js" => JS,
    "pages/topic.js" => JS,
    "pages/subscriber.js" => JS,
    "pages/events.js" => JS,
];

/// `GET /ui/<path>`; `rest` is the path after `/ui` (empty, or starting
/// with `/`).
pub(crate) fn serve(
    config: Option<&UiConfig>,
    method: &Method,
    rest: &str,
) -> Result<Response<ResponseBody>, ApiError> {
    let config = config.ok_or(ApiError::NotFound)?;
    if method != Method::GET && method != Method::HEAD {
        return Err(ApiError::MethodNotAllowed("GET, HEAD"));
    }
    let file = match rest {
        // Relative URLs in the pages resolve against `/ui/`.
        "" => return Ok(redirect("/ui/")),
        "/" => "index.html",
        other => &other[1..],
    };
    let asset = ASSETS
        .iter()
        .find(|a| a.path == file)
        .ok_or(ApiError::NotFound)?;
    let body = if method == Method::HEAD {
        Bytes::new()
    } else {
        Bytes::from_static(asset.body.as_bytes())
    };
    let mut response = Response::new(json::body_of(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    secure(headers, config);
    Ok(response)
}

fn redirect(to: &'static str) -> Response<ResponseBody> {
    let mut response = Response::new(json::body_of(Bytes::new()));
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    response
        .headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(to));
    response
}

/// The headers every console file goes out with.
fn secure(headers: &mut http::HeaderMap, config: &UiConfig) {
    if let Ok(csp) = HeaderValue::from_str(&config.content_security_policy()) {
        headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    // Small files, and a new binary may bring new ones: ask each time.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_ancestors_take_sources_and_nothing_that_ends_the_directive() {
        let config = UiConfig::new()
            .with_frame_ancestors("  https://app.example.com   'self' ")
            .unwrap();
        assert!(config
            .content_security_policy()
            .ends_with("frame-ancestors https://app.example.com 'self'"));
        assert!(UiConfig::new()
            .content_security_policy()
            .ends_with("frame-ancestors 'none'"));
        for bad in ["", "  ", "'self'; script-src *", "a, b", "a\u{1}b"] {
            assert!(
                UiConfig::new().with_frame_ancestors(bad).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn every_file_is_served_and_nothing_else() {
        let config = UiConfig::new();
        for asset in ASSETS {
            let response = serve(Some(&config), &Method::GET, &format!("/{}", asset.path))
                .unwrap_or_else(|e| panic!("{}: {e}", asset.path));
            assert_eq!(response.status(), StatusCode::OK);
            assert!(!asset.body.is_empty(), "{}", asset.path);
        }
        for missing in [
            "/nope.js",
            "/../Cargo.toml",
            "/pages",
            "/pages/",
            "//app.js",
        ] {
            assert!(
                matches!(
                    serve(Some(&config), &Method::GET, missing),
                    Err(ApiError::NotFound)
                ),
                "{missing}"
            );
        }
        assert!(matches!(
            serve(None, &Method::GET, "/"),
            Err(ApiError::NotFound)
        ));
        assert!(matches!(
            serve(Some(&config), &Method::POST, "/"),
            Err(ApiError::MethodNotAllowed(_))
        ));
    }

    #[test]
    fn no_page_has_inline_script_or_style() {
        let html = ASSETS.iter().find(|a| a.path == "index.html").unwrap().body;
        for forbidden in ["<style", " style=", " onclick=", " onload=", "javascript:"] {
            assert!(!html.contains(forbidden), "index.html holds {forbidden:?}");
        }
        for script in html.match_indices("<script") {
            let tag = &html[script.0..html[script.0..].find('>').unwrap() + script.0];
            assert!(tag.contains("src="), "an inline script: {tag}");
        }
    }
}
