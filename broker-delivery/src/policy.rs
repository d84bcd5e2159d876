//! Where deliveries may go: the destination (SSRF) policy, enforced in the
//! connector on the addresses a host actually resolves to, at every
//! connect, so DNS tricks (a name that resolves elsewhere after
//! registration, or to several addresses) cannot get around it.

use std::{
    fmt,
    future::Future,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use http::Uri;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Which destination addresses deliveries may connect to.
///
/// Always refused: link-local addresses (169.254.0.0/16, fe80::/10, where
/// cloud metadata services live), the AWS metadata address fd00:ec2::254,
/// unspecified (0.0.0.0/8, ::), broadcast and multicast. An IPv6 address
/// that carries an IPv4 address is judged as that IPv4 address too (every
/// one it carries must be allowed): IPv4-mapped `::ffff:a.b.c.d`,
/// IPv4-compatible `::a.b.c.d`, IPv4-translated `::ffff:0:a.b.c.d`, NAT64
/// `64:ff9b::a.b.c.d` and `64:ff9b:1::/48`, 6to4 `2002:AABB:CCDD::/48`,
/// Teredo `2001:0::/32` (its server and its client), and ISATAP
/// interface identifiers `…:0:5efe:a.b.c.d` / `…:200:5efe:a.b.c.d`.
///
/// Loopback and private ranges are allowed by default (internal services
/// are the normal subscribers); [`DestinationPolicy::deny_private`] refuses
/// them too, for multi-tenant deployments.
///
/// # Examples
///
/// ```
/// use broker_delivery::DestinationPolicy;
///
/// let open = DestinationPolicy::default();
/// assert!(open.allows("127.0.0.1".parse().unwrap()));
/// assert!(!open.allows("169.254.169.254".parse().unwrap()));
/// assert!(!open.allows("::ffff:169.254.169.254".parse().unwrap()));
/// assert!(!open.allows("64:ff9b::169.254.169.254".parse().unwrap()));
///
/// let strict = DestinationPolicy { deny_private: true, ..DestinationPolicy::default() };
/// assert!(!strict.allows("10.1.2.3".parse().unwrap()));
/// assert!(strict.allows("93.184.216.34".parse().unwrap()));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DestinationPolicy {
    /// Also refuse loopback (127.0.0.0/8, ::1), private (10/8, 172.16/12,
    /// 192.168/16, fc00::/7), shared (100.64/10) and other non-public
    /// special-purpose ranges.
    pub deny_private: bool,
    /// Allow nothing but loopback IP literals (`127.0.0.0/8`, `[::1]`),
    /// without resolving any name: for tests and fuzzing that register
    /// arbitrary URLs, so no delivery ever leaves the machine.
    pub loopback_only: bool,
}

impl DestinationPolicy {
    /// Whether a delivery may connect to `ip`.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        if self.loopback_only {
            return ip.is_loopback();
        }
        let judged = |ip: IpAddr| !(always_refused(ip) || (self.deny_private && is_private(ip)));
        match ip {
            IpAddr::V6(v6) => {
                judged(ip)
                    && embedded_v4(v6)
                        .into_iter()
                        .flatten()
                        .all(|v4| judged(v4.into()))
            }
            IpAddr::V4(_) => judged(ip),
        }
    }
}

/// The IPv4 addresses an IPv6 address carries, in the forms a router or
/// a host may turn into an IPv4 destination (IPv4-mapped addresses are
/// already unmapped by `to_canonical`).
fn embedded_v4(v6: Ipv6Addr) -> [Option<Ipv4Addr>; 2] {
    let s = v6.segments();
    let v4 = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        Some(Ipv4Addr::new(a, b, c, d))
    };
    let last = v4(s[6], s[7]);
    match s {
        // IPv4-compatible ::a.b.c.d (not :: nor ::1, which are IPv6's own).
        [0, 0, 0, 0, 0, 0, _, _] if !v6.is_unspecified() && !v6.is_loopback() => [last, None],
        // IPv4-translated ::ffff:0:a.b.c.d (SIIT).
        [0, 0, 0, 0, 0xffff, 0, _, _] => [last, None],
        // NAT64: the well-known prefix and the local-use one.
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] | [0x64, 0xff9b, 1, ..] => [last, None],
        // 6to4: 2002:AABB:CCDD::/48.
        [0x2002, hi, lo, ..] => [v4(hi, lo), None],
        // Teredo: the server, and the client (its bits inverted).
        [0x2001, 0, hi, lo, _, _, chi, clo] => [v4(hi, lo), v4(!chi, !clo)],
        // ISATAP interface identifiers.
        [_, _, _, _, 0 | 0x200, 0x5efe, _, _] => [last, None],
        _ => [None, None],
    }
}

fn always_refused(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_link_local() || v4.octets()[0] == 0 || v4.is_broadcast() || v4.is_multicast()
        }
        IpAddr::V6(v6) => {
            (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
                || v6.is_unspecified()
                || v6.is_multicast()
        }
    }
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || (a == 100 && (b & 0xc0) == 64) // 100.64.0.0/10, shared address space
                || (a == 192 && b == 0 && c == 0) // 192.0.0.0/24, IETF protocol assignments
                || (a == 198 && (b & 0xfe) == 18) // 198.18.0.0/15, benchmarking
                || a >= 240 // 240.0.0.0/4, reserved
                || v4 == Ipv4Addr::new(192, 0, 0, 170)
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback()
                || (first & 0xfe00) == 0xfc00 // fc00::/7, unique local
                || (first & 0xffc0) == 0xfec0 // fec0::/10, old site-local
        }
    }
}

/// A delivery the policy refused: no address of the host was allowed.
#[derive(Debug)]
pub(crate) struct Refused {
    host: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "destination {} is refused by the destination policy",
            self.host
        )
    }
}

impl std::error::Error for Refused {}

/// Whether `error`, or anything it was caused by, is a policy refusal.
pub(crate) fn is_refusal(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<Refused>() {
            return true;
        }
        next = e.source();
    }
    false
}

/// Resolves, applies the policy, and connects over TCP with a timeout.
/// Wrapped by the TLS connector for `https://` URLs.
#[derive(Clone)]
pub(crate) struct PolicyConnector {
    pub(crate) policy: DestinationPolicy,
    pub(crate) connect_timeout: Duration,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for PolicyConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let stream = tokio::time::timeout(this.connect_timeout, this.connect(&uri))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
            Ok(TokioIo::new(stream))
        })
    }
}

impl PolicyConnector {
    async fn connect(&self, uri: &Uri) -> Result<TcpStream, BoxError> {
        let host = uri.host().ok_or("the URL has no host")?;
        let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
            Some("https") => 443,
            _ => 80,
        });
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let resolved: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            // Loopback-only resolves no name at all: not even a DNS query
            // leaves the machine.
            Err(_) if self.policy.loopback_only => Vec::new(),
            Err(_) => tokio::net::lookup_host((bare, port)).await?.collect(),
        };
        let allowed: Vec<SocketAddr> = resolved
            .into_iter()
            .filter(|addr| self.policy.allows(addr.ip()))
            .collect();
        if allowed.is_empty() {
            return Err(Box::new(Refused {
                host: host.to_owned(),
            }));
        }
        let mut last_error = None;
        for addr in allowed {
            match TcpStream::connect(addr).await {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error
            .map(Into::into)
            .unwrap_or_else(|| "no address to connect to".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_forms_that_carry_an_ipv4_address_are_judged_as_it() {
        let open = DestinationPolicy::default();
        let strict = DestinationPolicy {
            deny_private: true,
            ..DestinationPolicy::default()
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // Each form, carrying the metadata address (always refused) and
        // loopback (refused when private ones are).
        for (metadata, loopback) in [
            ("::ffff:169.254.169.254", "::ffff:127.0.0.1"),
            ("::169.254.169.254", "::127.0.0.1"),
            ("::ffff:0:169.254.169.254", "::ffff:0:127.0.0.1"),
            ("64:ff9b::169.254.169.254", "64:ff9b::127.0.0.1"),
            ("64:ff9b:1::a9fe:a9fe", "64:ff9b:1::7f00:1"),
            ("2002:a9fe:a9fe::1", "2002:7f00:1::1"),
            // Teredo: server 65.54.227.120 (public), client inverted.
            (
                "2001:0:4136:e378:8000:63bf:5601:5601",
                "2001:0:4136:e378:8000:63bf:80ff:fffe",
            ),
            ("fe80::5efe:169.254.169.254", "2001:db8::5efe:127.0.0.1"),
            ("2001:db8::200:5efe:a9fe:a9fe", "2001:db8::200:5efe:7f00:1"),
        ] {
            assert!(!open.allows(ip(metadata)), "{metadata}");
            assert!(!strict.allows(ip(metadata)), "{metadata}");
            assert!(!strict.allows(ip(loopback)), "{loopback}");
        }
        // The same forms carrying a public address pass the strict policy.
        for public in [
            "::93.184.216.34",
            "64:ff9b::93.184.216.34",
            "2002:5db8:d822::1",
            "2001:db8::5efe:93.184.216.34",
        ] {
            assert!(strict.allows(ip(public)), "{public}");
        }
        // IPv6's own loopback and unspecified are not IPv4-compatible forms.
        assert!(open.allows(ip("::1")));
        assert!(!strict.allows(ip("::1")));
        assert!(!open.allows(ip("::")));
    }

    fn allowed(policy: DestinationPolicy, ip: &str) -> bool {
        policy.allows(ip.parse().unwrap())
    }

    #[test]
    fn refuses_metadata_and_link_local_always() {
        for policy in [
            DestinationPolicy::default(),
            DestinationPolicy {
                deny_private: true,
                ..DestinationPolicy::default()
            },
        ] {
            for ip in [
                "169.254.169.254",
                "169.254.0.1",
                "fe80::1",
                "febf::1",
                "fd00:ec2::254",
                "::ffff:169.254.169.254",
                "0.0.0.0",
                "0.1.2.3",
                "::",
                "255.255.255.255",
                "224.0.0.1",
                "ff02::1",
            ] {
                assert!(!allowed(policy, ip), "{ip} with {policy:?}");
            }
        }
    }

    #[test]
    fn loopback_only_allows_nothing_else() {
        let only = DestinationPolicy {
            loopback_only: true,
            ..DestinationPolicy::default()
        };
        for ip in ["127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"] {
            assert!(allowed(only, ip), "{ip}");
        }
        for ip in [
            "10.0.0.1",
            "192.168.0.1",
            "8.8.8.8",
            "169.254.169.254",
            "fc00::1",
            "0.0.0.0",
        ] {
            assert!(!allowed(only, ip), "{ip}");
        }
    }

    #[test]
    fn private_ranges_follow_the_flag() {
        let open = DestinationPolicy::default();
        let strict = DestinationPolicy {
            deny_private: true,
            ..DestinationPolicy::default()
        };
        for ip in [
            "127.0.0.1",
            "127.9.9.9",
            "::1",
            "::ffff:127.0.0.1",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "fc00::1",
            "fd12:3456::1",
        ] {
            assert!(allowed(open, ip), "{ip} open");
            assert!(!allowed(strict, ip), "{ip} strict");
        }
        for ip in ["8.8.8.8", "172.32.0.1", "2606:4700::1111", "100.128.0.1"] {
            assert!(allowed(strict, ip), "{ip} is public");
        }
    }
}
