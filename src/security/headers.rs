//! The security headers (docs/api.md, "Security notes"), built once at start and stamped on every
//! response.

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};

use crate::config::Config;

#[derive(Clone, Debug)]
pub struct SecurityHeaders {
    always: Vec<(HeaderName, HeaderValue)>,
    /// `Strict-Transport-Security`, sent only on HTTPS requests (browsers ignore it on HTTP).
    hsts: Option<HeaderValue>,
}

impl SecurityHeaders {
    pub fn from_config(config: &Config) -> SecurityHeaders {
        let csp = HeaderValue::from_str(&config.content_security_policy)
            .unwrap_or_else(|_| HeaderValue::from_static(crate::config::DEFAULT_CSP));
        let always = vec![
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("strict-origin-when-cross-origin"),
            ),
            (header::CONTENT_SECURITY_POLICY, csp),
            (
                HeaderName::from_static("permissions-policy"),
                HeaderValue::from_static("camera=(), microphone=(), geolocation=()"),
            ),
            (
                HeaderName::from_static("cross-origin-opener-policy"),
                HeaderValue::from_static("same-origin"),
            ),
            (
                HeaderName::from_static("cross-origin-resource-policy"),
                HeaderValue::from_static("same-origin"),
            ),
            // The legacy XSS auditor is itself an attack vector; modern guidance turns it off.
            (header::X_XSS_PROTECTION, HeaderValue::from_static("0")),
        ];
        let hsts = (config.hsts.seconds > 0).then(|| {
            let mut value = format!("max-age={}", config.hsts.seconds);
            if config.hsts.include_subdomains {
                value.push_str("; includeSubDomains");
            }
            if config.hsts.preload {
                value.push_str("; preload");
            }
            HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("max-age=31536000"))
        });
        SecurityHeaders { always, hsts }
    }

    pub fn apply(&self, response_headers: &mut HeaderMap, request_was_https: bool) {
        // Room for these and the request id at once, instead of regrowing the map several times.
        response_headers.reserve(self.always.len() + 2);
        for (name, value) in &self.always {
            if name == header::CONTENT_SECURITY_POLICY {
                // A route may send a policy of its own (`/docs` allows `data:` images); it is kept.
                response_headers.entry(name).or_insert_with(|| value.clone());
            } else {
                response_headers.insert(name.clone(), value.clone());
            }
        }
        if let (Some(hsts), true) = (&self.hsts, request_was_https) {
            response_headers.insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
        }
    }
}
