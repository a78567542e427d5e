//! The client's address, from the one source `CLIENT_IP_SOURCE` names and nothing else.
//!
//! Computed once per request by [`attach`], the outermost layer, and stored as [`ClientIp`], so
//! logs, rate limits and handlers all see the same address.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts, Request};
use axum::http::{HeaderMap, request::Parts};

use crate::config::ClientIpSource;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// Reads a proxy header only when configured to. A forged `X-Forwarded-For` changes nothing
/// under `connect`, and under `x-forwarded-for` only the rightmost entry (added by our own
/// proxy) counts. When the header is missing the request did not come through the proxy,
/// and the socket peer is the client.
pub fn resolve(source: ClientIpSource, headers: &HeaderMap, peer: IpAddr) -> IpAddr {
    let from_header = match source {
        ClientIpSource::Connect => return peer,
        ClientIpSource::Fly => ::client_ip::fly_client_ip(headers),
        ClientIpSource::XForwardedFor => ::client_ip::rightmost_x_forwarded_for(headers),
        ClientIpSource::XRealIp => ::client_ip::x_real_ip(headers),
        ClientIpSource::CfConnectingIp => ::client_ip::cf_connecting_ip(headers),
    };
    from_header.unwrap_or(peer)
}

/// For `tower::ServiceBuilder::map_request`: resolves the request's client address once.
pub fn attach(source: ClientIpSource, mut req: Request) -> Request {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
    let ip = resolve(source, req.headers(), peer);
    req.extensions_mut().insert(ClientIp(ip));
    req
}

impl<S: Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<ClientIp>()
            .copied()
            .unwrap_or(ClientIp(IpAddr::V4(Ipv4Addr::UNSPECIFIED))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().expect("test header"));
        }
        map
    }

    const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));

    #[test]
    fn connect_ignores_forged_headers() {
        let h = headers(&[("x-forwarded-for", "1.1.1.1"), ("fly-client-ip", "2.2.2.2")]);
        assert_eq!(resolve(ClientIpSource::Connect, &h, PEER), PEER);
    }

    #[test]
    fn x_forwarded_for_takes_the_rightmost_entry() {
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 3.3.3.3")]);
        assert_eq!(
            resolve(ClientIpSource::XForwardedFor, &h, PEER),
            "3.3.3.3".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn missing_header_falls_back_to_the_peer() {
        assert_eq!(resolve(ClientIpSource::Fly, &HeaderMap::new(), PEER), PEER);
        let h = headers(&[("x-real-ip", "not an ip")]);
        assert_eq!(resolve(ClientIpSource::XRealIp, &h, PEER), PEER);
    }
}
