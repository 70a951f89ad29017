//! An issued chain read back: what Berth records of it (serial, validity)
//! and the check that it names the domain it was ordered for.

use chrono::{DateTime, Utc};
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// Hex, lower case: names the installed files.
    pub serial: String,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
    /// The DNS names of its subjectAltName.
    pub names: Vec<String>,
}

impl Issued {
    /// When a renewal is due: once less than `fraction` of the lifetime is
    /// left (Let's Encrypt's advice is a third).
    pub fn renew_at(&self, fraction: f64) -> DateTime<Utc> {
        let lifetime = self.not_after - self.not_before;
        let left = lifetime.num_seconds() as f64 * fraction.clamp(0.0, 1.0);
        self.not_after - chrono::Duration::seconds(left as i64)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the certificate chain is unreadable: {0}")]
pub struct CertError(String);

/// Reads the leaf (the first certificate) of a PEM chain.
pub fn read_leaf(chain_pem: &str) -> Result<Issued, CertError> {
    let pem = Pem::iter_from_buffer(chain_pem.as_bytes())
        .next()
        .ok_or_else(|| CertError("no certificate in it".into()))?
        .map_err(|e| CertError(e.to_string()))?;
    let cert = pem.parse_x509().map_err(|e| CertError(e.to_string()))?;
    let time = |t: x509_parser::time::ASN1Time| {
        DateTime::<Utc>::from_timestamp(t.timestamp(), 0)
            .ok_or_else(|| CertError("a validity date out of range".into()))
    };
    let names = cert
        .subject_alternative_name()
        .map_err(|e| CertError(e.to_string()))?
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(name) => Some(name.to_ascii_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Issued {
        serial: cert
            .raw_serial_as_string()
            .replace(':', "")
            .to_ascii_lowercase(),
        not_before: time(cert.validity().not_before)?,
        not_after: time(cert.validity().not_after)?,
        names,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_with_a_third_of_the_lifetime_left() {
        let start = DateTime::<Utc>::from_timestamp(0, 0).unwrap();
        let issued = Issued {
            serial: "01".into(),
            not_before: start,
            not_after: start + chrono::Duration::days(90),
            names: vec![],
        };
        assert_eq!(
            issued.renew_at(1.0 / 3.0),
            start + chrono::Duration::days(60)
        );
        assert_eq!(issued.renew_at(1.0), start);
    }

    #[test]
    fn a_chain_is_read_back() {
        let made = rcgen::generate_simple_self_signed(vec!["app.example.test".to_owned()]).unwrap();
        let chain = format!("{}{}", made.cert.pem(), made.cert.pem());
        let leaf = read_leaf(&chain).unwrap();
        assert_eq!(leaf.names, vec!["app.example.test".to_owned()]);
        assert!(leaf.not_after > leaf.not_before);
        assert!(!leaf.serial.is_empty() && !leaf.serial.contains(':'));
        assert!(read_leaf("not a certificate").is_err());
    }
}
