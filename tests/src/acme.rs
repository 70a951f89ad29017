//! A local ACME CA for the certificate tests: pebble (Let's Encrypt's test
//! CA) validating HTTP-01 on the test nginx's port, and
//! pebble-challtestsrv as the DNS both it and Berth's workers ask (every
//! name answers 127.0.0.1 unless a test sets another record through its
//! management API). Both are Debian's packages, started per test.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use tokio::process::{Child, Command};

use crate::{eventually, free_port, scratch_dir};

pub struct Pebble {
    _pebble: Child,
    _dns: Child,
    /// `ACME_DIRECTORY_URL` for Berth.
    pub directory_url: String,
    /// The self-signed certificate of pebble's own listeners (its
    /// directory and management API), to trust for reaching them.
    pub listener_cert: PathBuf,
    /// pebble-challtestsrv's DNS server.
    pub dns: SocketAddr,
    dns_management: String,
    pebble_management: String,
    http: reqwest::Client,
}

impl Pebble {
    /// A CA whose HTTP-01 checks go to `http_port` of the address a name
    /// resolves to.
    pub async fn start(http_port: u16) -> Pebble {
        let dir = scratch_dir("pebble");
        let listener = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .expect("pebble's listener certificate");
        let cert = dir.join("listener.pem");
        let key = dir.join("listener.key");
        std::fs::write(&cert, listener.cert.pem()).unwrap();
        std::fs::write(&key, listener.signing_key.serialize_pem()).unwrap();
        let (acme_port, management_port, dns_port, dns_management_port, tls_port) = (
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
        );
        let config = dir.join("pebble.json");
        std::fs::write(
            &config,
            json!({"pebble": {
                "listenAddress": format!("127.0.0.1:{acme_port}"),
                "managementListenAddress": format!("127.0.0.1:{management_port}"),
                "certificate": cert,
                "privateKey": key,
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false
            }})
            .to_string(),
        )
        .unwrap();
        let log = |name: &str| std::fs::File::create(dir.join(name)).expect("log file");
        let dns_child = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{dns_management_port}")])
            .stdout(log("challtestsrv.log"))
            .stderr(log("challtestsrv.err"))
            .kill_on_drop(true)
            .spawn()
            .expect("pebble-challtestsrv (scripts/test.sh installs pebble)");
        let pebble_child = Command::new("pebble")
            .args(["-config", config.to_str().unwrap()])
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            // Validations at once; no nonce refused at random; a new
            // authorization for every order, so a renewal is validated too.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"))
            .kill_on_drop(true)
            .spawn()
            .expect("pebble (scripts/test.sh installs it)");
        let http = reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(listener.cert.pem().as_bytes()).unwrap(),
            )
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let pebble = Pebble {
            _pebble: pebble_child,
            _dns: dns_child,
            directory_url: format!("https://127.0.0.1:{acme_port}/dir"),
            listener_cert: cert,
            dns: format!("127.0.0.1:{dns_port}").parse().unwrap(),
            dns_management: format!("http://127.0.0.1:{dns_management_port}"),
            pebble_management: format!("https://127.0.0.1:{management_port}"),
            http,
        };
        eventually(Duration::from_secs(20), "pebble to answer", || async {
            pebble
                .http
                .get(&pebble.directory_url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        eventually(
            Duration::from_secs(20),
            "challtestsrv to answer",
            || async {
                pebble
                    .http
                    .post(format!("{}/clear-a", pebble.dns_management))
                    .json(&json!({"host": "ready.test."}))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            },
        )
        .await;
        pebble
    }

    /// The worker's settings that point Berth at this CA and this DNS.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("ACME_DIRECTORY_URL", self.directory_url.clone()),
            (
                "BERTH_ACME_CA_BUNDLE",
                self.listener_cert.to_str().unwrap().to_owned(),
            ),
            ("BERTH_DNS_RESOLVER", self.dns.to_string()),
        ]
    }

    /// Every name without a record of its own answers `address` from now on
    /// (the test server's).
    pub async fn point_names_at(&self, address: &str) {
        let response = self
            .http
            .post(format!("{}/set-default-ipv4", self.dns_management))
            .json(&json!({"ip": address}))
            .send()
            .await
            .expect("challtestsrv");
        assert!(response.status().is_success(), "{response:?}");
    }

    /// `host` answers A queries with `addresses` from now on.
    pub async fn set_a(&self, host: &str, addresses: &[&str]) {
        let response = self
            .http
            .post(format!("{}/add-a", self.dns_management))
            .json(&json!({"host": format!("{}.", host.trim_end_matches('.')), "addresses": addresses}))
            .send()
            .await
            .expect("challtestsrv");
        assert!(response.status().is_success(), "{response:?}");
    }

    /// The root that issues pebble's certificates (a new one per pebble).
    pub async fn issuing_root(&self) -> reqwest::Certificate {
        let pem = self
            .http
            .get(format!("{}/roots/0", self.pebble_management))
            .send()
            .await
            .expect("pebble's management API")
            .text()
            .await
            .unwrap();
        reqwest::Certificate::from_pem(pem.as_bytes()).expect("pebble's root")
    }
}
