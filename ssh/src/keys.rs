//! Checking a private key before it is stored: it must parse, and an
//! encrypted key needs its passphrase. The key is only used by libssh2 later,
//! so this checks the formats libssh2 reads: OpenSSH's own, and PEM (PKCS#1,
//! PKCS#8, SEC1), encrypted or not.

use crate::command::Refused;

/// Whether the key is encrypted, or why it is refused.
pub fn inspect_private_key(text: &str) -> Result<bool, Refused> {
    let refused = |rule: &'static str| Refused {
        what: "privateKey",
        value: String::new(),
        rule,
    };
    let text = text.trim();
    if text.len() > 16 * 1024 {
        return Err(refused("is longer than 16 KiB"));
    }
    if text.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----") {
        let key = ssh_key::PrivateKey::from_openssh(text)
            .map_err(|_| refused("is not a valid OpenSSH private key"))?;
        return Ok(key.is_encrypted());
    }
    // Legacy encrypted PEM carries headers that strict PEM parsing refuses.
    if text.contains("Proc-Type: 4,ENCRYPTED") {
        let armored = text.starts_with("-----BEGIN ")
            && text.ends_with("PRIVATE KEY-----")
            && text.contains("DEK-Info:");
        return if armored {
            Ok(true)
        } else {
            Err(refused("is not a valid encrypted PEM private key"))
        };
    }
    let (label, der) = pem_rfc7468::decode_vec(text.as_bytes())
        .map_err(|_| refused("is not a PEM or OpenSSH private key"))?;
    let known = [
        "RSA PRIVATE KEY",
        "EC PRIVATE KEY",
        "DSA PRIVATE KEY",
        "PRIVATE KEY",
        "ENCRYPTED PRIVATE KEY",
    ];
    if !known.contains(&label) {
        return Err(refused("is a PEM document but not a private key"));
    }
    // Every one of these is a DER SEQUENCE.
    if der.first() != Some(&0x30) || der.len() < 32 {
        return Err(refused("is not a valid DER private key"));
    }
    Ok(label == "ENCRYPTED PRIVATE KEY")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_a_key() {
        for bad in [
            "",
            "hello",
            "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----",
            "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUZ3Rlc3QtY2VydGlmaWNhdGUtMDEwCgYIKoZIzj0EAwIw\n-----END CERTIFICATE-----",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl user@host",
        ] {
            assert!(inspect_private_key(bad).is_err(), "{bad}");
        }
    }
}
