//! HTTPS behind a proxy: the proxy tells us the original scheme in `X-Forwarded-Proto`.

use axum::http::{HeaderMap, HeaderValue, Uri, header};

/// The scheme the client used, as the proxy reports it; `None` on a direct connection.
pub fn forwarded_proto(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get("x-forwarded-proto")?.to_str().ok()?;
    // Chained proxies may append: the first entry is the client-facing one.
    Some(value.split(',').next().unwrap_or_default().trim())
}

pub fn is_https(headers: &HeaderMap) -> bool {
    forwarded_proto(headers).is_some_and(|p| p.eq_ignore_ascii_case("https"))
}

/// The `https://` location for a request that came in over plain HTTP, or `None` when it
/// did not (no header means a direct connection, such as a platform health check).
pub fn redirect_location(headers: &HeaderMap, uri: &Uri) -> Option<HeaderValue> {
    if !forwarded_proto(headers)?.eq_ignore_ascii_case("http") {
        return None;
    }
    // The Host was checked against ALLOWED_HOSTS before this runs, so it is safe to echo.
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok())?;
    let host = super::hosts::strip_port(host);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    HeaderValue::from_str(&format!("https://{host}{path}")).ok()
}
