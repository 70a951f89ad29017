//! Where a name points, asked of the configured resolver (the system's, or
//! `BERTH_DNS_RESOLVER`: tests point it at pebble-challtestsrv), compared
//! with the server's addresses before a CA is asked to validate it.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DnsError(String);

/// A resolver that never caches: a user who has just fixed a record wants
/// the next check to see it.
#[derive(Clone)]
pub struct Dns {
    resolver: TokioResolver,
}

impl Dns {
    /// `server`: one name server (`IP:PORT`, both UDP and TCP), or `None`
    /// for the system's configuration.
    pub fn new(server: Option<SocketAddr>) -> Result<Self, DnsError> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = match server {
            Some(addr) => {
                let connection = |mut c: ConnectionConfig| {
                    c.port = addr.port();
                    c
                };
                let config = ResolverConfig::from_name_servers(vec![NameServerConfig::new(
                    addr.ip(),
                    true,
                    vec![
                        connection(ConnectionConfig::udp()),
                        connection(ConnectionConfig::tcp()),
                    ],
                )]);
                TokioResolver::builder_with_config(config, provider)
            }
            None => TokioResolver::builder(provider)
                .map_err(|e| DnsError(format!("the system's resolver configuration: {e}")))?,
        };
        let options: &mut ResolverOpts = builder.options_mut();
        options.cache_size = 0;
        options.timeout = Duration::from_secs(5);
        options.attempts = 2;
        options.ndots = 0;
        let resolver = builder
            .build()
            .map_err(|e| DnsError(format!("the resolver: {e}")))?;
        Ok(Self { resolver })
    }

    /// Every A and AAAA address of `name`; none is an answer too (no
    /// record), a failure to ask is an error.
    pub async fn addresses(&self, name: &str) -> Result<Vec<IpAddr>, DnsError> {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        match self.resolver.lookup_ip(fqdn.as_str()).await {
            Ok(found) => {
                let mut addresses: Vec<IpAddr> = found.iter().collect();
                addresses.sort();
                addresses.dedup();
                Ok(addresses)
            }
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Ok(Vec::new()),
            Err(e) => Err(DnsError(format!("cannot resolve {name}: {e}"))),
        }
    }
}

/// How a name's addresses compare with the server's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pointing {
    /// Every address found is one of the server's.
    AtServer,
    /// No address, or one that is not the server's.
    Elsewhere { found: Vec<IpAddr> },
}

pub fn compare(found: &[IpAddr], server: &[IpAddr]) -> Pointing {
    if !found.is_empty() && found.iter().all(|a| server.contains(a)) {
        Pointing::AtServer
    } else {
        Pointing::Elsewhere {
            found: found.to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_points_at_the_server_only_with_all_its_addresses() {
        let server: Vec<IpAddr> = vec!["203.0.113.7".parse().unwrap()];
        let at = |found: &[&str]| {
            compare(
                &found.iter().map(|a| a.parse().unwrap()).collect::<Vec<_>>(),
                &server,
            )
        };
        assert_eq!(at(&["203.0.113.7"]), Pointing::AtServer);
        assert!(matches!(at(&[]), Pointing::Elsewhere { .. }));
        assert!(matches!(
            at(&["203.0.113.7", "198.51.100.1"]),
            Pointing::Elsewhere { .. }
        ));
    }
}
