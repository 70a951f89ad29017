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

/// A new deploy key: an Ed25519 key pair, the private half in OpenSSH's
/// format (to be sealed) and the public half as an `authorized_keys` line
/// ending in `comment`.
pub fn generate_deploy_key(comment: &str) -> (berth_config::SecretString, String) {
    let mut key = PrivateKey::random(
        &mut russh::keys::key::safe_rng(),
        russh::keys::Algorithm::Ed25519,
    )
    .expect("Ed25519 key generation does not fail");
    key.set_comment(comment);
    let private = key
        .to_openssh(russh::keys::ssh_key::LineEnding::LF)
        .expect("an Ed25519 key encodes");
    let public = key
        .public_key()
        .to_openssh()
        .expect("an Ed25519 public key encodes");
    (
        berth_config::SecretString::from(private.to_string()),
        public,
    )
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

    #[test]
    fn a_generated_deploy_key_opens_and_matches_its_public_half() {
        let (private, public) = generate_deploy_key("berth-deploy-web");
        let text = berth_config::ExposeSecret::expose_secret(&private);
        assert_eq!(inspect_private_key(text), Ok(false));
        assert!(public.starts_with("ssh-ed25519 "), "{public}");
        assert!(public.ends_with(" berth-deploy-web"), "{public}");
        let opened = russh::keys::decode_secret_key(text, None).unwrap();
        assert_eq!(opened.public_key().to_openssh().unwrap(), public);
    }
}
