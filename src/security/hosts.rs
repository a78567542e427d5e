//! `ALLOWED_HOSTS`: which `Host` headers this service answers to.

use axum::http::{HeaderMap, Uri, header};

#[derive(Clone, Debug, Default)]
pub struct AllowedHosts {
    any: bool,
    exact: Vec<String>,
    /// `.example.com` entries, kept with their leading dot.
    domains: Vec<String>,
}

impl AllowedHosts {
    pub fn new(entries: &[String]) -> AllowedHosts {
        let mut hosts = AllowedHosts::default();
        for entry in entries {
            let entry = entry.trim().trim_end_matches('.').to_ascii_lowercase();
            if entry == "*" {
                hosts.any = true;
            } else if entry.starts_with('.') {
                hosts.domains.push(entry);
            } else if entry.parse::<std::net::Ipv6Addr>().is_ok() {
                // A bare IPv6 literal: Host headers always carry it in brackets.
                hosts.exact.push(format!("[{entry}]"));
            } else {
                hosts.exact.push(entry);
            }
        }
        hosts
    }

    /// Whether a request's host (from `Host`, or the URI authority in HTTP/2) is allowed.
    pub fn allows_request(&self, headers: &HeaderMap, uri: &Uri) -> bool {
        if self.any {
            return true;
        }
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| uri.authority().map(|a| a.as_str()));
        host.is_some_and(|h| self.allows(h))
    }

    /// Matches one `Host` value, its port ignored, case-insensitively.
    pub fn allows(&self, host: &str) -> bool {
        if self.any {
            return true;
        }
        // The entries are lowercase already; comparing without case spares a lowercase copy.
        let name = strip_port(host.trim()).trim_end_matches('.');
        if name.is_empty() {
            return false;
        }
        self.exact.iter().any(|e| e.eq_ignore_ascii_case(name))
            || self.domains.iter().any(|d| {
                let suffix = name
                    .len()
                    .checked_sub(d.len())
                    .and_then(|start| name.as_bytes().get(start..));
                suffix.is_some_and(|s| s.eq_ignore_ascii_case(d.as_bytes())) || d[1..].eq_ignore_ascii_case(name)
            })
    }
}

/// The host of a `Host` value, without its port.
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // `[::1]:8080` → `[::1]`
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(list: &[&str]) -> AllowedHosts {
        AllowedHosts::new(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn exact_names_ignore_port_and_case() {
        let h = hosts(&["api.example.com", "127.0.0.1"]);
        assert!(h.allows("API.example.com:8443"));
        assert!(h.allows("127.0.0.1:8080"));
        assert!(!h.allows("example.com"));
        assert!(!h.allows("api.example.com.evil.net"));
    }

    #[test]
    fn domain_entry_matches_domain_and_subdomains() {
        let h = hosts(&[".example.com"]);
        assert!(h.allows("example.com"));
        assert!(h.allows("a.b.example.com"));
        assert!(!h.allows("badexample.com"));
        assert!(h.allows("WWW.Example.COM"));
        assert!(!h.allows("é.com"));
    }

    #[test]
    fn ipv6_literals_with_or_without_brackets() {
        assert!(hosts(&["[::1]"]).allows("[::1]:8080"));
        assert!(hosts(&["::1"]).allows("[::1]"));
        assert!(!hosts(&["[::1]"]).allows("[::2]"));
    }

    #[test]
    fn star_allows_everything_and_empty_nothing() {
        assert!(hosts(&["*"]).allows("anything.test"));
        assert!(!hosts(&[]).allows("localhost"));
        assert!(!hosts(&["localhost"]).allows(""));
    }
}
