//! Which addresses Berth may connect to, and resolving a server's name once,
//! so a name cannot resolve to an allowed address for the check and a denied
//! one for the connection.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use ipnet::IpNet;

use crate::{SshError, Target, command};

/// Which server addresses Berth may connect to. Private and loopback addresses
/// stay allowed: self-hosters deploy to their LAN and to the Berth host itself.
#[derive(Debug, Clone)]
pub struct AddressPolicy {
    denied: Vec<IpNet>,
}

impl AddressPolicy {
    pub fn new(denied: Vec<IpNet>) -> Self {
        Self { denied }
    }

    /// An IPv6 address is checked as itself and as every IPv4 address it
    /// carries (mapped, compatible, NAT64, 6to4, Teredo), so
    /// `64:ff9b::a9fe:a9fe` is as denied as `169.254.169.254`.
    pub fn allows(&self, ip: IpAddr) -> bool {
        !address_forms(ip)
            .iter()
            .any(|form| self.denied.iter().any(|net| net.contains(form)))
    }
}

/// `ip` and, for IPv6, every IPv4 address it carries.
fn address_forms(ip: IpAddr) -> Vec<IpAddr> {
    let mut forms = vec![ip];
    if let IpAddr::V6(v6) = ip {
        forms.extend(embedded_ipv4(v6).into_iter().map(IpAddr::V4));
    }
    forms
}

/// The IPv4 addresses an IPv6 address stands for under the transition schemes
/// that route to them.
pub fn embedded_ipv4(v6: std::net::Ipv6Addr) -> Vec<std::net::Ipv4Addr> {
    use std::net::Ipv4Addr;
    let s = v6.segments();
    let bits = u128::from(v6);
    let low32 = Ipv4Addr::from((bits & 0xffff_ffff) as u32);
    let mut found = Vec::new();
    // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible, deprecated but routed
    // by some stacks); :: and ::1 are not IPv4.
    if s[..5] == [0; 5] && (s[5] == 0xffff || (s[5] == 0 && bits > 1)) {
        found.push(low32);
    }
    // NAT64: the well-known 64:ff9b::/96 and the local-use 64:ff9b:1::/48.
    if (s[..6] == [0x64, 0xff9b, 0, 0, 0, 0]) || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1) {
        found.push(low32);
    }
    // 6to4: 2002:AABB:CCDD::/48 carries AA.BB.CC.DD.
    if s[0] == 0x2002 {
        found.push(Ipv4Addr::from(((s[1] as u32) << 16) | s[2] as u32));
    }
    // Teredo: 2001:0::/32, server in bits 32..64, client inverted in the last 32.
    if s[0] == 0x2001 && s[1] == 0 {
        found.push(Ipv4Addr::from(((s[2] as u32) << 16) | s[3] as u32));
        found.push(Ipv4Addr::from(!((bits & 0xffff_ffff) as u32)));
    }
    found
}

/// Addresses on the Berth host's own side (loopback, private, link-local):
/// connection errors to them are reported in one uniform way, so server
/// validation cannot be used to tell open ports from closed ones.
pub(crate) fn is_internal(ip: IpAddr) -> bool {
    address_forms(ip).iter().any(|ip| match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback() || v4.is_private() || v4.is_link_local() || v4.is_unspecified()
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    })
}

impl Default for AddressPolicy {
    fn default() -> Self {
        Self::new(berth_config::SshConfig::default_deny_networks())
    }
}

pub(crate) fn resolve(target: &Target, policy: &AddressPolicy) -> Result<SocketAddr, SshError> {
    command::check_host(&target.host).map_err(|e| SshError::Denied(e.to_string()))?;
    let unreachable = |reason: String| SshError::Unreachable {
        target: format!("{}:{}", target.host, target.port),
        reason,
    };
    let addresses: Vec<SocketAddr> = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(|e| unreachable(format!("cannot resolve the host: {e}")))?
        .collect();
    let first = addresses
        .first()
        .copied()
        .ok_or_else(|| unreachable("the host has no address".into()))?;
    if let Some(denied) = addresses.iter().find(|a| !policy.allows(a.ip())) {
        return Err(SshError::Denied(format!(
            "{} resolves to {}, which is in a denied network (BERTH_SSH_DENY_NETWORKS)",
            target.host,
            denied.ip()
        )));
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_ranges_are_denied_and_private_ones_allowed() {
        let policy = AddressPolicy::default();
        for denied in [
            "169.254.169.254",
            "::ffff:169.254.169.254",
            "fd00:ec2::254",
            "::169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::a9fe:a9fe",
            "2002:a9fe:a9fe::1",
            "2001:0:a9fe:a9fe::1",
            "2001:0:4136:e378:8000:63bf:5601:5601",
        ] {
            assert!(!policy.allows(denied.parse().unwrap()), "{denied}");
        }
        for allowed in [
            "127.0.0.1",
            "10.0.0.5",
            "192.168.1.2",
            "::1",
            "::",
            "203.0.113.9",
            "2606:4700::1111",
            "64:ff9b::cb00:7109",
        ] {
            assert!(policy.allows(allowed.parse().unwrap()), "{allowed}");
        }
        let custom = AddressPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]);
        assert!(!custom.allows("127.0.0.9".parse().unwrap()));
        assert!(AddressPolicy::new(Vec::new()).allows("169.254.169.254".parse().unwrap()));
    }
}
