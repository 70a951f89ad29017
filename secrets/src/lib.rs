//! Secrets at rest (SSH keys and passwords, TOTP secrets, codes in mail jobs):
//! AES-256-GCM under `BERTH_MASTER_KEY`, in a text form that names the key that
//! sealed it, so keys can be rotated (`BERTH_MASTER_KEY_PREVIOUS` keeps old ones
//! readable). The table, column and row id holding a ciphertext are bound as
//! associated data: a ciphertext copied into another row or column does not open.
//! Any failure to open is an error; nothing falls back to the stored text.
//!
//! Also keyed hashing ([`Keyring::mac`]) for short codes that must be stored
//! hashed but have too little entropy for a plain hash.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use berth_config::MasterKey;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

const VERSION: &str = "v1";
const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("sealed secret is malformed")]
    Malformed,
    #[error("sealed with key {0}, which is not configured")]
    UnknownKey(String),
    #[error("sealed secret does not open: wrong key, wrong row or altered")]
    Rejected,
}

/// Where a ciphertext lives; bound into it as associated data.
#[derive(Debug, Clone, Copy)]
pub struct Binding<'a> {
    pub table: &'a str,
    pub column: &'a str,
    pub row_id: &'a str,
}

/// Where a server's sealed credentials live: the row's id, table and column are
/// bound into the ciphertext (the api seals, workers open).
pub fn server_secret_binding<'a>(server_id: &'a str, column: &'a str) -> Binding<'a> {
    Binding {
        table: "servers",
        column,
        row_id: server_id,
    }
}

/// A deployment's sealed env, deploy key or webhook secret (`column`).
pub fn deployment_secret_binding<'a>(deployment_id: &'a str, column: &'a str) -> Binding<'a> {
    Binding {
        table: "deployments",
        column,
        row_id: deployment_id,
    }
}

/// A release's sealed snapshot; `release` is `<deployment id>/<number>`.
pub fn release_snapshot_binding(release: &str) -> Binding<'_> {
    Binding {
        table: "releases",
        column: "snapshot",
        row_id: release,
    }
}

/// The row id a linked provider account's token is bound to: the api
/// seals, workers open and reseal re-seals with this one spelling.
pub fn oauth_identity_row(user_id: impl std::fmt::Display, provider: &str) -> String {
    format!("{user_id}/{provider}")
}

/// A linked provider account's sealed access token; `identity` is
/// [`oauth_identity_row`].
pub fn oauth_token_binding(identity: &str) -> Binding<'_> {
    Binding {
        table: "oauth_identities",
        column: "token",
        row_id: identity,
    }
}

/// Berth's sealed ACME account credentials for one directory URL.
pub fn acme_account_binding(directory_url: &str) -> Binding<'_> {
    Binding {
        table: "acme_accounts",
        column: "credentials",
        row_id: directory_url,
    }
}

impl Binding<'_> {
    fn associated_data(&self) -> Vec<u8> {
        // Lengths first, so ("ab", "c") and ("a", "bc") never bind alike.
        let mut aad = Vec::new();
        for part in [self.table, self.column, self.row_id] {
            aad.extend_from_slice(&(part.len() as u32).to_be_bytes());
            aad.extend_from_slice(part.as_bytes());
        }
        aad
    }
}

struct Key {
    id: String,
    cipher: Aes256Gcm,
}

impl Key {
    fn new(bytes: &[u8; 32]) -> Self {
        let digest = Sha256::digest(bytes);
        Self {
            id: hex::encode(&digest[..4]),
            cipher: Aes256Gcm::new(bytes.into()),
        }
    }
}

/// The current key, which seals, and previous keys, which only open.
pub struct Keyring {
    current: Key,
    previous: Vec<Key>,
    mac_key: [u8; 32],
}

impl Keyring {
    pub fn new(current: &[u8; 32], previous: &[[u8; 32]]) -> Self {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(current).expect("any key length");
        mac.update(b"berth keyed hash v1");
        Self {
            current: Key::new(current),
            previous: previous.iter().map(Key::new).collect(),
            mac_key: mac.finalize().into_bytes().into(),
        }
    }

    /// From `BERTH_MASTER_KEY` and `BERTH_MASTER_KEY_PREVIOUS`.
    pub fn from_config(current: &MasterKey, previous: &[MasterKey]) -> Self {
        let previous: Vec<[u8; 32]> = previous.iter().map(|k| *k.bytes()).collect();
        Self::new(current.bytes(), &previous)
    }

    /// The id of the sealing key, as it appears in sealed text.
    pub fn current_key_id(&self) -> &str {
        &self.current.id
    }

    /// `v1.<key id>.<base64url(nonce ‖ ciphertext ‖ tag)>`, with a fresh random nonce.
    pub fn seal(&self, plaintext: &[u8], binding: Binding<'_>) -> String {
        let nonce_bytes: [u8; NONCE_LEN] = rand_nonce();
        let aad = binding.associated_data();
        let ciphertext = self
            .current
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce_bytes),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut body = nonce_bytes.to_vec();
        body.extend_from_slice(&ciphertext);
        format!(
            "{VERSION}.{}.{}",
            self.current.id,
            URL_SAFE_NO_PAD.encode(body)
        )
    }

    pub fn open(&self, sealed: &str, binding: Binding<'_>) -> Result<Vec<u8>, SecretError> {
        let mut parts = sealed.splitn(3, '.');
        let (Some(VERSION), Some(key_id), Some(body)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(SecretError::Malformed);
        };
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == key_id)
            .ok_or_else(|| SecretError::UnknownKey(key_id.to_owned()))?;
        let body = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| SecretError::Malformed)?;
        if body.len() < NONCE_LEN + 16 {
            return Err(SecretError::Malformed);
        }
        let (nonce, ciphertext) = body.split_at(NONCE_LEN);
        let aad = binding.associated_data();
        key.cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| SecretError::Rejected)
    }

    pub fn open_string(&self, sealed: &str, binding: Binding<'_>) -> Result<String, SecretError> {
        String::from_utf8(self.open(sealed, binding)?).map_err(|_| SecretError::Rejected)
    }

    /// True when `sealed` was made with a key other than the current one.
    pub fn needs_reseal(&self, sealed: &str) -> bool {
        sealed.split('.').nth(1) != Some(self.current.id.as_str())
    }

    /// HMAC-SHA256 of `value` under a key derived from the master key, separated
    /// by `purpose`: for low-entropy codes (6 digits) that a plain hash would not
    /// protect if the database leaked. Hex encoded.
    pub fn mac(&self, purpose: &str, value: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.mac_key).expect("any key length");
        mac.update(&(purpose.len() as u32).to_be_bytes());
        mac.update(purpose.as_bytes());
        mac.update(value);
        hex::encode(mac.finalize().into_bytes())
    }
}

fn rand_nonce() -> [u8; NONCE_LEN] {
    use aes_gcm::aead::OsRng;
    use aes_gcm::aead::rand_core::RngCore;
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    nonce
}

/// SHA-256, hex encoded: for high-entropy tokens (refresh, API, reset tokens),
/// where a keyed hash adds nothing and would tie them to the master key.
pub fn sha256_hex(value: &[u8]) -> String {
    hex::encode(Sha256::digest(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROW: Binding<'static> = Binding {
        table: "users",
        column: "totp_secret",
        row_id: "42",
    };

    #[test]
    fn seals_and_opens_bound_to_its_row() {
        let ring = Keyring::new(&[7; 32], &[]);
        let sealed = ring.seal(b"hunter2", ROW);
        assert!(!sealed.contains("hunter2"));
        assert_eq!(ring.open(&sealed, ROW).unwrap(), b"hunter2");
        assert_ne!(ring.seal(b"hunter2", ROW), sealed, "nonces are fresh");
        for other in [
            Binding {
                row_id: "43",
                ..ROW
            },
            Binding {
                column: "password",
                ..ROW
            },
            Binding {
                table: "servers",
                ..ROW
            },
        ] {
            assert_eq!(ring.open(&sealed, other), Err(SecretError::Rejected));
        }
        let mut altered = sealed.clone();
        altered.pop();
        altered.push(if sealed.ends_with('A') { 'B' } else { 'A' });
        assert!(ring.open(&altered, ROW).is_err());
        assert_eq!(ring.open("plain text", ROW), Err(SecretError::Malformed));
    }

    #[test]
    fn rotation_keeps_old_secrets_readable() {
        let old = Keyring::new(&[1; 32], &[]);
        let sealed = old.seal(b"key material", ROW);
        let rotated = Keyring::new(&[2; 32], &[[1; 32]]);
        assert_eq!(rotated.open(&sealed, ROW).unwrap(), b"key material");
        assert!(rotated.needs_reseal(&sealed));
        assert!(!rotated.needs_reseal(&rotated.seal(b"x", ROW)));
        let without_old = Keyring::new(&[2; 32], &[]);
        assert!(matches!(
            without_old.open(&sealed, ROW),
            Err(SecretError::UnknownKey(_))
        ));
    }

    #[test]
    fn keyed_hash_depends_on_key_and_purpose() {
        let a = Keyring::new(&[1; 32], &[]);
        let b = Keyring::new(&[2; 32], &[]);
        assert_eq!(a.mac("otp", b"123456"), a.mac("otp", b"123456"));
        assert_ne!(a.mac("otp", b"123456"), b.mac("otp", b"123456"));
        assert_ne!(a.mac("otp", b"123456"), a.mac("reset", b"123456"));
    }
}
