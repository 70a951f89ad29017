//! Signed double-submit CSRF tokens (OWASP CSRF cheat sheet): the token is
//! `random.HMAC(key, session id ‖ random)`, set as the `csrf_token` cookie and
//! sent back in `X-CSRF-Token`. A token minted for another session, or made up
//! by an attacker who can plant cookies on a sibling domain, does not verify.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use berth_config::ExposeSecret;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use uuid::Uuid;

pub const CSRF_COOKIE: &str = "csrf_token";
pub const CSRF_HEADER: &str = "x-csrf-token";

pub struct CsrfKey([u8; 32]);

impl CsrfKey {
    /// Derived from `JWT_SECRET`, so no extra setting is needed and rotating
    /// that secret invalidates CSRF tokens along with sessions' access tokens.
    pub fn derive(jwt_secret: &berth_config::SecretString) -> Self {
        let mut mac = Hmac::<Sha256>::new_from_slice(jwt_secret.expose_secret().as_bytes())
            .expect("any key length");
        mac.update(b"berth csrf key v1");
        Self(mac.finalize().into_bytes().into())
    }

    fn signature(&self, session: Option<Uuid>, random: &str) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("any key length");
        let bound = session.map_or_else(|| "anonymous".to_owned(), |s| s.to_string());
        mac.update(bound.as_bytes());
        mac.update(b"!");
        mac.update(random.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// A new token bound to `session` (or to no session, before sign-in).
    pub fn issue(&self, session: Option<Uuid>) -> String {
        let random = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>());
        let signature = URL_SAFE_NO_PAD.encode(self.signature(session, &random));
        format!("{random}.{signature}")
    }

    /// The header and the cookie carry the same token, and it was minted by us
    /// for this session. Both comparisons are constant-time.
    pub fn verify(&self, session: Uuid, header: &str, cookie: &str) -> bool {
        if !bool::from(header.as_bytes().ct_eq(cookie.as_bytes())) {
            return false;
        }
        let Some((random, signature)) = header.split_once('.') else {
            return false;
        };
        let Ok(signature) = URL_SAFE_NO_PAD.decode(signature) else {
            return false;
        };
        bool::from(self.signature(Some(session), random).ct_eq(&signature))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_to_the_session() {
        let key = CsrfKey::derive(&"0123456789abcdef0123456789abcdef".to_owned().into());
        let session = Uuid::new_v4();
        let token = key.issue(Some(session));
        assert!(key.verify(session, &token, &token));
        assert!(
            !key.verify(Uuid::new_v4(), &token, &token),
            "another session"
        );
        let other = key.issue(Some(session));
        assert!(
            !key.verify(session, &token, &other),
            "header and cookie differ"
        );
        let anonymous = key.issue(None);
        assert!(!key.verify(session, &anonymous, &anonymous));
        let forged = format!("{}.{}", "abc", URL_SAFE_NO_PAD.encode([0u8; 32]));
        assert!(!key.verify(session, &forged, &forged));
        assert!(!key.verify(session, "", ""));
    }
}
