//! Private keys: checked before one is stored, and opened to log in, by
//! the same decoder, so a key Berth accepts is a key it can use: OpenSSH's
//! own format, PKCS#8 (encrypted or not), PKCS#1 RSA and SEC1 EC, and
//! encrypted PEM (AES-128-CBC, as `ssh-keygen -m PEM` writes it).

use russh::keys::{Error, PrivateKey, decode_secret_key};

use crate::command::Refused;

const MAX_KEY_BYTES: usize = 16 * 1024;

fn refused(rule: &'static str) -> Refused {
    Refused {
        what: "privateKey",
        value: String::new(),
        rule,
    }
}

/// Whether the key is encrypted (it needs its passphrase), or why it is
/// refused.
pub fn inspect_private_key(text: &str) -> Result<bool, Refused> {
    let text = text.trim();
    if text.len() > MAX_KEY_BYTES {
        return Err(refused("is longer than 16 KiB"));
    }
    // PKCS#8 encryption is only told apart from damage by the passphrase.
    if text.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----")
        && text.ends_with("-----END ENCRYPTED PRIVATE KEY-----")
    {
        return Ok(true);
    }
    match decode_secret_key(text, None) {
        Ok(_) => Ok(false),
        Err(Error::KeyIsEncrypted) => Ok(true),
        Err(_) => Err(refused(
            "is not a private key Berth can use (OpenSSH, PKCS#8, PKCS#1 or SEC1 PEM)",
        )),
    }
}

/// The key, decrypted with `passphrase` if it is encrypted.
pub(crate) fn open(text: &str, passphrase: Option<&str>) -> Result<PrivateKey, Refused> {
    let text = text.trim();
    if text.len() > MAX_KEY_BYTES {
        return Err(refused("is longer than 16 KiB"));
    }
    match decode_secret_key(text, passphrase) {
        Ok(key) => Ok(key),
        Err(Error::KeyIsEncrypted) => Err(refused("is encrypted and no passphrase was given")),
        Err(_) if passphrase.is_some() => Err(refused(
            "could not be opened: a wrong passphrase, or a damaged key",
        )),
        Err(_) => Err(refused("is not a private key Berth can use")),
    }
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
