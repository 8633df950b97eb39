//! `allowed_outbound_hosts`: parsing and checking, with Spin's rules.
//!
//! Each entry is `scheme://host[:port]` where the scheme may be `*`, the host
//! `*`, `*.domain`, a literal name or IP, a CIDR range, or `self` / `self.alt`
//! (the application itself), and the port a number, a range `a..b`
//! (exclusive end, as Spin) or `*`. Without a port the scheme's well-known
//! port applies. `http://<component>.spin.internal` names a component directly
//! (service chaining).

use std::net::IpAddr;

/// The domain suffix for calls straight to a component.
pub const SERVICE_CHAINING_SUFFIX: &str = ".spin.internal";

#[derive(Debug, Clone, PartialEq, Eq)]
enum SchemeRule {
    Any,
    One(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostRule {
    Any,
    AnySubdomain(String),
    ToSelf,
    Literal(url::Host),
    Cidr(IpAddr, u8),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PortRule {
    Any,
    One(u16),
    Range(u16, u16),
}

/// One parsed `allowed_outbound_hosts` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    original: String,
    scheme: SchemeRule,
    host: HostRule,
    port: PortRule,
}

/// Where a request is going, as far as the allow-list is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// The application itself (`self` / `self.alt`, or a relative URL).
    ToSelf,
    /// One component, by id (`<id>.spin.internal`).
    Component(String),
    /// Anywhere else on the network.
    Remote,
}

fn well_known_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        "postgres" => Some(5432),
        "mysql" => Some(3306),
        "redis" => Some(6379),
        "mqtt" => Some(1883),
        _ => None,
    }
}

impl AllowedHost {
    /// Parses one entry.
    pub fn parse(entry: &str) -> Result<Self, String> {
        let original = entry.to_owned();
        let entry = entry.trim();
        let Some((scheme, rest)) = entry.split_once("://") else {
            return Err(format!(
                "{entry:?} is not of the form <scheme>://<host>[:<port>] ('*' wildcards allowed; '*://*:*' allows everything)"
            ));
        };
        let scheme_rule = if scheme == "*" {
            SchemeRule::Any
        } else if !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphabetic()) {
            SchemeRule::One(scheme.to_ascii_lowercase())
        } else {
            return Err(format!("{entry:?}: invalid scheme {scheme:?}"));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') && !looks_like_cidr(rest) {
            return Err(format!("{entry:?}: must not include a path"));
        }
        let (host, port) = split_host_port(rest);
        let port_rule = match port {
            None => match well_known_port(scheme) {
                Some(p) => PortRule::One(p),
                None if scheme == "*" => PortRule::Any,
                None => {
                    return Err(format!(
                        "{entry:?}: no port given and scheme {scheme:?} has no default port"
                    ));
                }
            },
            Some("*") => PortRule::Any,
            Some(p) => match p.split_once("..") {
                Some((a, b)) => PortRule::Range(
                    a.parse()
                        .map_err(|_| format!("{entry:?}: bad port range {p:?}"))?,
                    b.parse()
                        .map_err(|_| format!("{entry:?}: bad port range {p:?}"))?,
                ),
                None => PortRule::One(
                    p.parse()
                        .map_err(|_| format!("{entry:?}: bad port {p:?}"))?,
                ),
            },
        };
        let host_rule = parse_host(host).map_err(|e| format!("{entry:?}: {e}"))?;
        Ok(Self {
            original,
            scheme: scheme_rule,
            host: host_rule,
            port: port_rule,
        })
    }

    fn allows_scheme(&self, scheme: &str) -> bool {
        match &self.scheme {
            SchemeRule::Any => true,
            SchemeRule::One(s) => s == scheme,
        }
    }

    fn allows_port(&self, scheme: &str, port: Option<u16>) -> bool {
        let Some(port) = port.or_else(|| well_known_port(scheme)) else {
            return matches!(self.port, PortRule::Any);
        };
        match self.port {
            PortRule::Any => true,
            PortRule::One(p) => p == port,
            PortRule::Range(a, b) => (a..b).contains(&port),
        }
    }

    fn allows_host(&self, host: &url::Host) -> bool {
        match (&self.host, host) {
            (HostRule::Any, _) => true,
            (HostRule::AnySubdomain(suffix), url::Host::Domain(d)) => d.ends_with(suffix.as_str()),
            (HostRule::Literal(l), h) => l == h,
            (HostRule::Cidr(net, bits), url::Host::Ipv4(ip)) => {
                cidr_contains(*net, *bits, (*ip).into())
            }
            (HostRule::Cidr(net, bits), url::Host::Ipv6(ip)) => {
                cidr_contains(*net, *bits, (*ip).into())
            }
            _ => false,
        }
    }
}

/// `ip/bits`, optionally followed by `:port`.
fn looks_like_cidr(s: &str) -> bool {
    s.split_once('/').is_some_and(|(ip, tail)| {
        let bits = tail.split_once(':').map_or(tail, |(b, _)| b);
        ip.parse::<IpAddr>().is_ok() && bits.parse::<u8>().is_ok()
    })
}

fn split_host_port(rest: &str) -> (&str, Option<&str>) {
    if rest.starts_with('[') {
        // [v6]:port
        if let Some(end) = rest.find(']') {
            let host = &rest[..=end];
            return match rest[end + 1..].strip_prefix(':') {
                Some(p) => (host, Some(p)),
                None => (host, None),
            };
        }
    }
    if looks_like_cidr(rest) {
        let (ip, tail) = rest.split_once('/').expect("checked by looks_like_cidr");
        return match tail.split_once(':') {
            Some((bits, port)) => (&rest[..ip.len() + 1 + bits.len()], Some(port)),
            None => (rest, None),
        };
    }
    if rest.matches(':').count() > 1 {
        return (rest, None);
    }
    match rest.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (rest, None),
    }
}

fn parse_host(host: &str) -> Result<HostRule, String> {
    if host == "*" {
        return Ok(HostRule::Any);
    }
    if host == "self" || host == "self.alt" {
        return Ok(HostRule::ToSelf);
    }
    if let Some((ip, bits)) = host.split_once('/') {
        let ip: IpAddr = ip.parse().map_err(|_| format!("invalid CIDR {host:?}"))?;
        let bits: u8 = bits.parse().map_err(|_| format!("invalid CIDR {host:?}"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        if bits > max {
            return Err(format!("invalid CIDR {host:?}"));
        }
        return Ok(HostRule::Cidr(ip, bits));
    }
    if let Some(domain) = host.strip_prefix("*.") {
        if domain.contains('*') {
            return Err("wildcards are allowed only as a leading '*.'".into());
        }
        return match url::Host::parse(domain) {
            Ok(url::Host::Domain(d)) => Ok(HostRule::AnySubdomain(format!(".{d}"))),
            _ => Err(format!("invalid wildcard domain {domain:?}")),
        };
    }
    if host.contains('*') {
        return Err("wildcards are allowed only as a leading '*.'".into());
    }
    url::Host::parse(host)
        .map(HostRule::Literal)
        .map_err(|e| format!("invalid host {host:?}: {e}"))
}

fn cidr_contains(net: IpAddr, bits: u8, ip: IpAddr) -> bool {
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            u32::from(n) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            u128::from(n) & mask == u128::from(i) & mask
        }
        _ => false,
    }
}

/// A component's whole allow-list.
#[derive(Debug, Clone, Default)]
pub struct AllowedHosts {
    entries: Vec<AllowedHost>,
}

impl AllowedHosts {
    /// Parses every entry (templates already resolved).
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        Ok(Self {
            entries: entries
                .iter()
                .map(|e| AllowedHost::parse(e))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Entries as written, for start-up output.
    pub fn originals(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.original.as_str())
    }

    /// Classifies a request URI and decides whether it may be sent.
    /// Returns the destination if allowed, `None` if denied.
    pub fn check(&self, uri: &http::Uri) -> Option<Destination> {
        let scheme = uri.scheme_str().unwrap_or("http").to_ascii_lowercase();
        let Some(authority) = uri.authority() else {
            // A relative URL is a request to the application itself.
            return self.allows_self(&scheme).then_some(Destination::ToSelf);
        };
        let host_str = authority.host();
        if host_str.eq_ignore_ascii_case("self.alt") {
            return self.allows_self(&scheme).then_some(Destination::ToSelf);
        }
        let host = url::Host::parse(host_str.trim_start_matches('[').trim_end_matches(']'))
            .or_else(|_| url::Host::parse(host_str))
            .ok()?;
        let allowed = self.entries.iter().any(|e| {
            e.allows_scheme(&scheme)
                && e.allows_host(&host)
                && e.allows_port(&scheme, authority.port_u16())
        });
        if !allowed {
            return None;
        }
        match &host {
            url::Host::Domain(d) if d.ends_with(SERVICE_CHAINING_SUFFIX) => Some(
                Destination::Component(d.trim_end_matches(SERVICE_CHAINING_SUFFIX).to_owned()),
            ),
            _ => Some(Destination::Remote),
        }
    }

    fn allows_self(&self, scheme: &str) -> bool {
        self.entries
            .iter()
            .any(|e| e.allows_scheme(scheme) && matches!(e.host, HostRule::ToSelf | HostRule::Any))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(entries: &[&str]) -> AllowedHosts {
        AllowedHosts::parse(&entries.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn check(h: &AllowedHosts, uri: &str) -> Option<Destination> {
        h.check(&uri.parse().unwrap())
    }

    #[test]
    fn literal_hosts_and_ports() {
        let h = hosts(&["http://127.0.0.1:8081", "https://api.github.com"]);
        assert_eq!(
            check(&h, "http://127.0.0.1:8081/jobs"),
            Some(Destination::Remote)
        );
        assert_eq!(check(&h, "http://127.0.0.1:8082/jobs"), None);
        assert_eq!(check(&h, "https://127.0.0.1:8081/jobs"), None);
        assert_eq!(
            check(&h, "https://api.github.com/repos"),
            Some(Destination::Remote)
        );
        assert_eq!(
            check(&h, "https://api.github.com:443/"),
            Some(Destination::Remote)
        );
        assert_eq!(check(&h, "http://api.github.com/"), None);
        assert_eq!(check(&h, "http://example.com/"), None);
    }

    #[test]
    fn wildcards_ranges_and_cidr() {
        let h = hosts(&[
            "*://*.example.com:*",
            "http://localhost:8000..8100",
            "http://10.1.0.0/16:*",
        ]);
        assert!(check(&h, "https://a.example.com:9/").is_some());
        assert!(check(&h, "https://example.com/").is_none());
        assert!(check(&h, "http://localhost:8099/").is_some());
        assert!(check(&h, "http://localhost:8100/").is_none());
        assert!(check(&h, "http://10.1.200.3:5/").is_some());
        assert!(check(&h, "http://10.2.0.1:5/").is_none());
        let all = hosts(&["*://*:*"]);
        assert!(check(&all, "http://anything:1/").is_some());
    }

    #[test]
    fn self_and_service_chaining() {
        let h = hosts(&["http://self", "http://metrics.spin.internal"]);
        assert_eq!(check(&h, "/health"), Some(Destination::ToSelf));
        assert_eq!(
            check(&h, "http://self.alt/health"),
            Some(Destination::ToSelf)
        );
        assert_eq!(
            check(&h, "http://metrics.spin.internal/x"),
            Some(Destination::Component("metrics".into()))
        );
        assert_eq!(check(&h, "http://api.spin.internal/x"), None);
        let none = hosts(&[]);
        assert_eq!(check(&none, "/health"), None);
        assert_eq!(check(&none, "http://self.alt/"), None);
        let any_internal = hosts(&["http://*.spin.internal"]);
        assert_eq!(
            check(&any_internal, "http://api.spin.internal/"),
            Some(Destination::Component("api".into()))
        );
    }

    #[test]
    fn bad_entries_are_rejected() {
        for bad in [
            "*",
            "example.com",
            "http://a.com/path",
            "http://a.*.com",
            "ftp://x.com",
            "http://x:notaport",
            "1http://x",
        ] {
            assert!(AllowedHost::parse(bad).is_err(), "{bad}");
        }
    }
}
