//! Which registries may be spoken to over plain HTTP without being marked insecure: the
//! local-registry convention of crane, imgpkg and kbld (the `kind` local-registry workflow,
//! `localhost:5000`).
//!
//! Facts from go-containerregistry, `pkg/name/registry.go` (`Registry.Scheme`): the scheme is
//! `http` for `localhost` and `localhost:PORT`, any name ending in `.localhost` (with an
//! optional port), `127.0.0.1` with an optional port, `::1` and `[::1]:PORT`, and an IPv4
//! address in an RFC 1918 range (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16); `https` for
//! everything else — `*.local` included, which older releases treated as local. `pkg/v1/remote/transport/ping.go` then tries HTTPS first and falls back to
//! plain HTTP only for those names, which is what [`super::Registry`] does.

use std::net::{IpAddr, Ipv4Addr};

/// Whether `host` (`name[:port]`, as in an image reference) is one go-containerregistry
/// falls back to plain HTTP for.
pub(crate) fn falls_back_to_http(host: &str) -> bool {
    if host == "localhost" || host.starts_with("localhost:") {
        return true;
    }
    if let Some(name) = strip_port(host)
        && name.ends_with(".localhost")
    {
        return true;
    }
    if host == "::1" || host == "[::1]" || host.starts_with("[::1]:") {
        return true;
    }
    if let Some(rest) = host.strip_prefix("127.0.0.1")
        && (rest.is_empty() || is_port(rest))
    {
        return true;
    }
    // go-containerregistry splits at the first ':' and parses what is before it as an IP.
    let before_colon = host.split(':').next().unwrap_or(host);
    matches!(before_colon.parse::<IpAddr>(), Ok(IpAddr::V4(ip)) if is_rfc1918(ip))
}

/// `name` of `name[:port]` when the port, if any, is digits (go's `(?::\d{1,5})?$`).
fn strip_port(host: &str) -> Option<&str> {
    match host.rsplit_once(':') {
        Some((name, port)) if is_port_number(port) => Some(name),
        Some(_) => None,
        None => Some(host),
    }
}

/// `:` followed by one to five digits.
fn is_port(text: &str) -> bool {
    text.strip_prefix(':').is_some_and(is_port_number)
}

fn is_port_number(port: &str) -> bool {
    (1..=5).contains(&port.len()) && port.bytes().all(|b| b.is_ascii_digit())
}

fn is_rfc1918(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    a == 10 || (a == 172 && (16..=31).contains(&b)) || (a == 192 && b == 168)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_names_go_containerregistry_speaks_plain_http_to() {
        // Its own tables (pkg/name/registry_test.go: TestRegistryScheme, TestIsRFC1918), as
        // facts, plus the boundaries of each rule.
        for host in [
            "foo.svc.localhost:1234",
            "127.0.0.1:1234",
            "127.0.0.1",
            "localhost",
            "localhost:8080",
            "::1",
            "[::1]:5000",
            "10.2.3.4:5000",
            "172.16.3.4:3000",
            "192.168.3.4",
            "registry.localhost",
            "[::1]",
            "172.31.255.255:80",
        ] {
            assert!(falls_back_to_http(host), "{host} should fall back to http");
        }
        for host in [
            "foo.svc.local:1234",
            "registry.local",
            "127.0.0.1.evil.com",
            "my127.0.0.1registry.io",
            "gcr.io",
            "index.docker.io",
            "[2001:db8::1]:5000",
            "8.8.8.8",
            "10.256.0.0:5000",
            "example.com:5000",
            "localhost.example.com",
            "127.0.0.2:5000",
            "127.0.0.1:123456",
            "172.15.0.1",
            "172.32.0.1",
            "192.169.0.1",
        ] {
            assert!(!falls_back_to_http(host), "{host} should stay on https");
        }
    }
}
