//! Where a granted outbound request may connect. `allowed_outbound_hosts` grants *names*;
//! a granted name can still resolve to the host's own loopback, the cloud metadata address
//! (169.254.169.254) or a private network, which the grant never meant to open. So a name
//! is resolved here, and the request is refused when any address it resolves to is
//! internal (loopback, private, link-local, carrier-grade NAT, unspecified, broadcast,
//! multicast; their IPv6 counterparts). An internal address is reachable only when the
//! grant names that address itself (`http://127.0.0.1:*`): the operator asked for it.
//!
//! Plain `http://` requests then connect to the address that was checked (the request
//! keeps its `Host` header), so a second lookup cannot answer differently (DNS rebinding).
//! `https://` requests keep their name for TLS: the certificate must match the granted
//! name, which an internal service answering a rebound lookup cannot present.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Why a request may not connect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The name resolves to an internal address.
    #[error(
        "{host} resolves to {addr}, an internal address (loopback, private or link-local); grant the address itself to reach it"
    )]
    Internal {
        /// The granted name.
        host: String,
        /// The internal address it resolved to.
        addr: IpAddr,
    },
    /// The name does not resolve.
    #[error("{host} does not resolve: {reason}")]
    Unresolved {
        /// The granted name.
        host: String,
        /// What the resolver said.
        reason: String,
    },
}

/// Whether `ip` is an address of the host or of a private network rather than of the
/// public internet.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => internal_v4(v4),
            None => internal_v6(v6),
        },
    }
}

fn internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        // 0.0.0.0/8 ("this network") and 100.64.0.0/10 (carrier-grade NAT).
        || a == 0
        || (a == 100 && (b & 0xc0) == 64)
}

fn internal_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        // fc00::/7 unique local, fe80::/10 link-local.
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
}

/// The address a request to `host:port` connects to. An address literal (`127.0.0.1`,
/// `[::1]`) is taken as granted; a name must resolve to public addresses only, and the
/// first is returned.
pub async fn checked_addr(host: &str, port: u16) -> Result<SocketAddr, Refused> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((bare, port))
        .await
        .map_err(|e| Refused::Unresolved {
            host: bare.to_owned(),
            reason: e.to_string(),
        })?
        .collect();
    public_only(bare, &addrs)
}

/// The first of `addrs` when none is internal.
fn public_only(host: &str, addrs: &[SocketAddr]) -> Result<SocketAddr, Refused> {
    if let Some(internal) = addrs.iter().find(|a| is_internal(a.ip())) {
        return Err(Refused::Internal {
            host: host.to_owned(),
            addr: internal.ip(),
        });
    }
    addrs.first().copied().ok_or_else(|| Refused::Unresolved {
        host: host.to_owned(),
        reason: "no addresses".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn internal_ranges_are_told_from_public_ones() {
        for internal in [
            "127.0.0.1",
            "127.8.9.10",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fc12::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(is_internal(ip(internal)), "{internal} should be internal");
        }
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "100.63.255.255",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(!is_internal(ip(public)), "{public} should be public");
        }
    }

    #[test]
    fn a_name_with_any_internal_address_is_refused_naming_it() {
        let public = SocketAddr::new(ip("8.8.8.8"), 443);
        let metadata = SocketAddr::new(ip("169.254.169.254"), 443);
        assert_eq!(public_only("api.example", &[public]), Ok(public));
        let err = public_only("api.example", &[public, metadata]).unwrap_err();
        assert!(err.to_string().contains("169.254.169.254"), "{err}");
        assert!(err.to_string().contains("api.example"), "{err}");
        assert!(matches!(
            public_only("api.example", &[]),
            Err(Refused::Unresolved { .. })
        ));
    }

    #[tokio::test]
    async fn address_literals_are_taken_as_granted_and_localhost_is_refused() {
        assert_eq!(
            checked_addr("127.0.0.1", 8080).await,
            Ok(SocketAddr::new(ip("127.0.0.1"), 8080))
        );
        assert_eq!(
            checked_addr("[::1]", 8080).await,
            Ok(SocketAddr::new(ip("::1"), 8080))
        );
        let err = checked_addr("localhost", 8080).await.unwrap_err();
        assert!(matches!(err, Refused::Internal { .. }), "{err:?}");
    }
}
