//! Which addresses an upstream may make the controller connect to.
//!
//! A tenant names its upstreams (git, HTTP, Helm, GitHub, registries, the bundle's own
//! registry), so without a NetworkPolicy a URL can point the controller at the cluster's inside:
//! the API server's pod IP, a node's kubelet, cloud metadata at 169.254.169.254. With
//! `--deny-local-upstreams` or `--deny-upstream-cidrs` the controller refuses such addresses,
//! checked on the address actually connected to: names are resolved here and every address
//! they resolve to is checked before it is handed to the connector (a name that resolves
//! first to a public address and then to 127.0.0.1, DNS rebinding, gains nothing), and a URL
//! whose host is an address literal — which the HTTP connector dials without resolving — is
//! checked before its request is sent, redirects included.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

/// The addresses upstream connections may not reach. The default denies nothing (the CLI's,
/// and the controller's unless the operator opts in).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Egress {
    /// Loopback, link-local (cloud metadata), unspecified and IPv4-mapped forms of them.
    pub deny_local: bool,
    /// Further ranges, e.g. the cluster's pod, service and node CIDRs.
    pub deny: Vec<IpNet>,
}

/// An upstream refused by the egress policy.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "{host} resolves to {address} ({why}), which the controller may not connect to for an \
     upstream ({flag})"
)]
pub struct Denied {
    pub host: String,
    pub address: IpAddr,
    pub why: String,
    pub flag: &'static str,
}

impl Egress {
    /// Parses `--deny-upstream-cidrs` entries (`10.0.0.0/8`, `fd00::/8`, or one address).
    pub fn parse_cidrs(list: &[String]) -> Result<Vec<IpNet>, String> {
        list.iter()
            .map(|entry| {
                let entry = entry.trim();
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("{entry:?} is not a CIDR (like 10.0.0.0/8) or an address"))
            })
            .collect()
    }

    /// Whether anything is denied: when not, no resolver or check is installed at all.
    pub fn is_active(&self) -> bool {
        self.deny_local || !self.deny.is_empty()
    }

    /// Whether `host` may be connected to at `address`.
    pub fn check(&self, host: &str, address: IpAddr) -> Result<(), Denied> {
        // An IPv4 address written as IPv6 (::ffff:127.0.0.1) reaches the IPv4 address.
        let address = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
            v4 => v4,
        };
        let denied = |why: String, flag| {
            Err(Denied {
                host: host.to_owned(),
                address,
                why,
                flag,
            })
        };
        if self.deny_local {
            let local = match address {
                IpAddr::V4(v4) => {
                    if v4.is_loopback() {
                        Some("loopback")
                    } else if v4.is_link_local() {
                        Some("link-local, where cloud metadata answers")
                    } else if v4.is_unspecified() {
                        Some("unspecified, which reaches this host")
                    } else {
                        None
                    }
                }
                IpAddr::V6(v6) => {
                    if v6.is_loopback() {
                        Some("loopback")
                    } else if v6.is_unicast_link_local() {
                        Some("link-local")
                    } else if v6.is_unspecified() {
                        Some("unspecified, which reaches this host")
                    } else {
                        None
                    }
                }
            };
            if let Some(why) = local {
                return denied(why.to_owned(), "--deny-local-upstreams");
            }
        }
        if let Some(net) = self.deny.iter().find(|net| net.contains(&address)) {
            return denied(format!("in {net}"), "--deny-upstream-cidrs");
        }
        Ok(())
    }

    /// Checks the host of `url` when it is an address literal (names are checked when they
    /// are resolved, by [`Egress::resolver`]).
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), Denied> {
        if !self.is_active() {
            return Ok(());
        }
        let Some(host) = url.host_str() else {
            return Ok(());
        };
        match host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            Ok(address) => self.check(host, address),
            Err(_) => Ok(()),
        }
    }

    /// A DNS resolver that hands the connector only addresses this policy allows, and fails
    /// with [`Denied`] when a name resolves to nothing else.
    pub fn resolver(&self) -> Arc<Resolver> {
        Arc::new(Resolver(self.clone()))
    }

    /// A redirect policy of at most `max` hops that refuses a hop to a denied address literal.
    pub fn redirect_policy(&self, max: usize) -> reqwest::redirect::Policy {
        let egress = self.clone();
        reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= max {
                return attempt.error(format!("more than {max} redirects"));
            }
            match egress.check_url(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(denied) => attempt.error(denied),
            }
        })
    }

    /// Resolves `host:port` and keeps the addresses this policy allows (for connections made
    /// without reqwest: git over ssh).
    pub async fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        let found: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
        self.filter(host, found)
            .map_err(|denied| std::io::Error::new(std::io::ErrorKind::PermissionDenied, denied))
    }

    fn filter(&self, host: &str, found: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, Denied> {
        let mut first_denial = None;
        let allowed: Vec<SocketAddr> = found
            .into_iter()
            .filter(|addr| match self.check(host, addr.ip()) {
                Ok(()) => true,
                Err(denied) => {
                    first_denial.get_or_insert(denied);
                    false
                }
            })
            .collect();
        match (allowed.is_empty(), first_denial) {
            (true, Some(denied)) => Err(denied),
            _ => Ok(allowed),
        }
    }
}

/// [`Egress::resolver`]: the system resolver (getaddrinfo, as reqwest's default), filtered.
#[derive(Debug)]
pub struct Resolver(Egress);

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let egress = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed = egress.filter(&host, found)?;
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strict() -> Egress {
        Egress {
            deny_local: true,
            deny: Egress::parse_cidrs(&["10.96.0.0/12".into(), "fd00::1".into()]).unwrap(),
        }
    }

    #[test]
    fn local_and_listed_addresses_are_denied() {
        let egress = strict();
        for denied in [
            "127.0.0.1",
            "127.8.9.10",
            "::1",
            "169.254.169.254",
            "fe80::1",
            "0.0.0.0",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "10.96.0.1",
            "fd00::1",
        ] {
            let address: IpAddr = denied.parse().unwrap();
            let err = egress.check("h", address).unwrap_err();
            assert!(err.to_string().contains("--deny-"), "{denied}: {err}");
        }
        for allowed in ["8.8.8.8", "10.95.255.255", "192.168.1.1", "2606:4700::1"] {
            assert!(
                egress.check("h", allowed.parse().unwrap()).is_ok(),
                "{allowed}"
            );
        }
        // The default denies nothing.
        assert!(
            Egress::default()
                .check("h", "127.0.0.1".parse().unwrap())
                .is_ok()
        );
        assert!(Egress::parse_cidrs(&["ten.0.0.0/8".into()]).is_err());
    }

    #[test]
    fn address_literals_in_urls_are_checked() {
        let egress = strict();
        let url = |s: &str| reqwest::Url::parse(s).unwrap();
        assert!(
            egress
                .check_url(&url("http://169.254.169.254/latest"))
                .is_err()
        );
        assert!(egress.check_url(&url("https://[::1]:5000/v2/")).is_err());
        assert!(egress.check_url(&url("https://8.8.8.8/")).is_ok());
        // Names are the resolver's to check.
        assert!(egress.check_url(&url("https://localhost/")).is_ok());
    }

    #[tokio::test]
    async fn names_are_checked_on_what_they_resolve_to() {
        use reqwest::dns::Resolve as _;
        let egress = strict();
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        let err = match egress.resolver().resolve(name).await {
            Ok(addrs) => panic!("localhost resolved to {:?}", addrs.collect::<Vec<_>>()),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("localhost resolves to"), "{err}");
        assert!(err.contains("--deny-local-upstreams"), "{err}");
        let err = egress.resolve("localhost", 22).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
        // Not active: localhost resolves.
        let open = Egress::default().resolve("localhost", 22).await.unwrap();
        assert!(open.iter().all(|a| a.ip().is_loopback()));
    }
}
