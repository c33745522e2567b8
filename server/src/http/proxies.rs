//! The client's address when the server listens behind reverse proxies
//! (`trusted_proxies`): the address every per-client decision uses (login
//! and verify limits, a token's `bound_cidrs`, the audit log's
//! `remote_address`) would otherwise be the proxy's, one for all clients,
//! and one client's failed logins would lock every other out.
//!
//! Only a connection from a trusted proxy is believed: its
//! `X-Forwarded-For`, read from the right (each proxy appends the address
//! it was reached from), names the client as the first address that is
//! not itself a trusted proxy. Any other connection's header is ignored, so
//! a client cannot choose its own address.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::Router;
use ipnet::IpNet;

/// `app` with each request's `ConnectInfo` set to its client as the
/// trusted proxies say (`app` itself when there are none).
pub fn behind(app: Router, proxies: &[IpNet]) -> Router {
    if proxies.is_empty() {
        return app;
    }
    let proxies: Arc<[IpNet]> = proxies.into();
    app.layer(axum::middleware::from_fn(
        move |mut req: Request, next: Next| {
            let proxies = proxies.clone();
            async move {
                let Some(ConnectInfo(peer)) =
                    req.extensions().get::<ConnectInfo<SocketAddr>>().copied()
                else {
                    return next.run(req).await;
                };
                match client(peer.ip(), req.headers(), &proxies) {
                    Ok(ip) => {
                        req.extensions_mut()
                            .insert(ConnectInfo(SocketAddr::new(ip, peer.port())));
                        next.run(req).await
                    }
                    // Refused rather than guessed: the guess would decide whose
                    // limits the request counts against.
                    Err(e) => crate::http::error_body(StatusCode::BAD_REQUEST, &e),
                }
            }
        },
    ))
}

/// The client of a request that came from `peer`.
pub fn client(peer: IpAddr, headers: &HeaderMap, proxies: &[IpNet]) -> Result<IpAddr, String> {
    let trusted = |ip: &IpAddr| proxies.iter().any(|p| p.contains(ip));
    let peer = peer.to_canonical();
    if !trusted(&peer) {
        return Ok(peer);
    }
    let mut hops = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let text = value
            .to_str()
            .map_err(|_| "X-Forwarded-For from a trusted proxy is not text".to_string())?;
        for hop in text.split(',') {
            let ip = crate::request::parse_ip(hop).map_err(|_| {
                format!("X-Forwarded-For from a trusted proxy names {hop:?}, not an IP address")
            })?;
            hops.push(ip);
        }
    }
    // The proxy's own request (a health check) has no header: its own.
    let Some(first) = hops.first().copied() else {
        return Ok(peer);
    };
    Ok(hops
        .iter()
        .rev()
        .find(|ip| !trusted(ip))
        .copied()
        .unwrap_or(first))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn only_a_trusted_proxy_says_who_the_client_is() {
        let proxies: Vec<IpNet> = vec![
            "127.0.0.1/32".parse().unwrap(),
            "10.9.0.0/16".parse().unwrap(),
        ];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let from = |peer: &str, h: &[&str]| client(ip(peer), &headers(h), &proxies);
        // Not a proxy: its header is its own claim, ignored.
        assert_eq!(
            from("203.0.113.9", &["198.51.100.1"]),
            Ok(ip("203.0.113.9"))
        );
        // The proxy's client; what the client itself put first is passed over.
        assert_eq!(
            from("127.0.0.1", &["6.6.6.6, 198.51.100.1"]),
            Ok(ip("198.51.100.1"))
        );
        // Through two proxies, the header split over two lines.
        assert_eq!(
            from("127.0.0.1", &["198.51.100.1", " 10.9.1.1"]),
            Ok(ip("198.51.100.1"))
        );
        // IPv4 written as IPv6 is IPv4; no header is the proxy itself.
        assert_eq!(
            from("::ffff:127.0.0.1", &["::ffff:198.51.100.2"]),
            Ok(ip("198.51.100.2"))
        );
        assert_eq!(from("127.0.0.1", &[]), Ok(ip("127.0.0.1")));
        // Every hop a proxy: the first.
        assert_eq!(
            from("127.0.0.1", &["10.9.3.3, 10.9.1.1"]),
            Ok(ip("10.9.3.3"))
        );
        assert!(from("127.0.0.1", &["198.51.100.1:443"]).is_err());
        assert!(from("127.0.0.1", &["unknown"]).is_err());
    }
}
