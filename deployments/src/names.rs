//! The names Berth gives what it creates for a deployment on a server: every
//! container and image carries the deployment's id (and Berth's label), and
//! every file lives under the server's data directory or is a `berth-<id>`
//! site, so clean-up finds exactly its own and nothing else.

use uuid::Uuid;

/// The label on every container and image of one deployment.
pub const DEPLOYMENT_LABEL: &str = "berth.deployment";
/// The label naming the release a container or image belongs to.
pub const RELEASE_LABEL: &str = "berth.release";

/// The first 8 hex digits of the id: short in a host name, long enough to
/// tell a user's deployments apart.
pub fn short_id(id: Uuid) -> String {
    id.simple().to_string()[..8].to_owned()
}

pub fn container_name(id: Uuid, release: i32) -> String {
    format!("berth-{}-v{release}", id.simple())
}

pub fn image_tag(id: Uuid, release: i32) -> String {
    format!("berth/{}:v{release}", id.simple())
}

/// Everything of the deployment under the server's data directory.
pub fn deployment_dir(data_dir: &str, id: Uuid) -> String {
    format!("{}/deployments/{id}", data_dir.trim_end_matches('/'))
}

pub fn release_dir(data_dir: &str, id: Uuid, release: i32) -> String {
    format!("{}/releases/{release}", deployment_dir(data_dir, id))
}

/// Where nginx finds ACME's HTTP-01 tokens on the server: the root of
/// every site's `/.well-known/acme-challenge/` location.
pub fn acme_root(data_dir: &str) -> String {
    format!("{}/acme", data_dir.trim_end_matches('/'))
}

/// The directory of one domain's certificate files (inside the
/// deployment's, so deleting the deployment removes them).
pub fn certificate_dir(data_dir: &str, id: Uuid, domain_id: Uuid) -> String {
    format!("{}/certs/{domain_id}", deployment_dir(data_dir, id))
}

/// One issued certificate's chain and key, named by its serial: a renewal
/// writes new files beside the served ones, and the site points at one
/// set at a time.
pub fn certificate_files(
    data_dir: &str,
    id: Uuid,
    domain_id: Uuid,
    serial: &str,
) -> (String, String) {
    let dir = certificate_dir(data_dir, id, domain_id);
    (format!("{dir}/{serial}.crt"), format!("{dir}/{serial}.key"))
}

/// The host name nginx serves a deployment under before any domain:
/// `<name>-<short id>.<base>`, the base being the server's `hostnameBase`,
/// else `<address>.sslip.io` for an IP address (sslip.io answers with the
/// address inside the name), else the server's host name itself (a name
/// whose subdomains the owner points at it).
pub fn generated_host(name: &str, id: Uuid, server_host: &str, base: Option<&str>) -> String {
    let base = match base {
        Some(base) => base.trim_end_matches('.').to_owned(),
        None if server_host.parse::<std::net::Ipv4Addr>().is_ok() => {
            format!("{server_host}.sslip.io")
        }
        None if server_host.parse::<std::net::Ipv6Addr>().is_ok() => {
            format!("{}.sslip.io", server_host.replace(':', "-"))
        }
        None => server_host.trim_end_matches('.').to_ascii_lowercase(),
    };
    format!("{name}-{}.{base}", short_id(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_id() {
        let id: Uuid = "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".parse().unwrap();
        assert_eq!(short_id(id), "0193a1b2");
        assert_eq!(
            container_name(id, 3),
            "berth-0193a1b2c3d47e5f8a9b0c1d2e3f4a5b-v3"
        );
        assert_eq!(
            image_tag(id, 3),
            "berth/0193a1b2c3d47e5f8a9b0c1d2e3f4a5b:v3"
        );
        assert_eq!(
            release_dir("/var/lib/berth/", id, 2),
            "/var/lib/berth/deployments/0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b/releases/2"
        );
        assert_eq!(
            generated_host("web", id, "203.0.113.7", None),
            "web-0193a1b2.203.0.113.7.sslip.io"
        );
        assert_eq!(
            generated_host("web", id, "2001:db8::1", None),
            "web-0193a1b2.2001-db8--1.sslip.io"
        );
        assert_eq!(
            generated_host("web", id, "Box.Example.com", None),
            "web-0193a1b2.box.example.com"
        );
        assert_eq!(
            generated_host("web", id, "203.0.113.7", Some("apps.example.com.")),
            "web-0193a1b2.apps.example.com"
        );
    }
}
