//! Access JWTs (HS256 with `JWT_SECRET`; algorithm allowlist, `exp`, token type
//! checked) and the random opaque tokens: refresh, API, reset, challenge ids.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use berth_config::ExposeSecret;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ApiError;

const ACCESS_TYPE: &str = "access";
/// API tokens are told apart from JWTs by this prefix.
pub const API_TOKEN_PREFIX: &str = "berth_pat_";

#[derive(Debug, Serialize, Deserialize)]
pub struct AccessClaims {
    pub sub: Uuid,
    pub sid: Uuid,
    pub iat: i64,
    pub exp: i64,
    pub typ: String,
}

pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

impl JwtKeys {
    pub fn new(secret: &berth_config::SecretString, ttl: Duration) -> Self {
        let bytes = secret.expose_secret().as_bytes();
        // Only HS256: a token naming another algorithm (`none`, RS256 with our
        // secret as a "public key") is refused before its signature is looked at.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "iat", "sub"]);
        validation.leeway = 5;
        Self {
            encoding: EncodingKey::from_secret(bytes),
            decoding: DecodingKey::from_secret(bytes),
            validation,
            ttl,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn issue(&self, user_id: Uuid, session_id: Uuid) -> Result<String, ApiError> {
        let now = chrono::Utc::now().timestamp();
        let claims = AccessClaims {
            sub: user_id,
            sid: session_id,
            iat: now,
            exp: now + self.ttl.as_secs() as i64,
            typ: ACCESS_TYPE.to_owned(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| ApiError::Internal(e.into()))
    }

    /// The claims of a valid, unexpired access token; `None` for anything else.
    pub fn verify(&self, token: &str) -> Option<AccessClaims> {
        let data =
            jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &self.validation).ok()?;
        (data.claims.typ == ACCESS_TYPE).then_some(data.claims)
    }
}

/// 32 random bytes, base64url: refresh tokens, reset tokens, challenge ids.
pub fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn new_api_token() -> String {
    format!("{API_TOKEN_PREFIX}{}", random_token())
}

/// A uniformly random 6-digit code.
pub fn six_digit_code() -> String {
    format!("{:06}", rand::random_range(0..1_000_000u32))
}

/// How stored tokens are looked up: high-entropy values need no salt or key.
pub fn token_hash(token: &str) -> String {
    berth_secrets::sha256_hex(token.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> JwtKeys {
        JwtKeys::new(
            &"0123456789abcdef0123456789abcdef".to_owned().into(),
            Duration::from_secs(900),
        )
    }

    #[test]
    fn round_trip_and_refusals() {
        let keys = keys();
        let (user, session) = (Uuid::new_v4(), Uuid::new_v4());
        let token = keys.issue(user, session).unwrap();
        let claims = keys.verify(&token).unwrap();
        assert_eq!((claims.sub, claims.sid), (user, session));
        assert_eq!(claims.exp - claims.iat, 900);

        // Signed with another secret.
        let other = JwtKeys::new(
            &"another-secret-another-secret-000".to_owned().into(),
            Duration::from_secs(900),
        );
        assert!(keys.verify(&other.issue(user, session).unwrap()).is_none());

        let now = chrono::Utc::now().timestamp();
        let forge = |header: Header, typ: &str, exp: i64| {
            let claims = AccessClaims {
                sub: user,
                sid: session,
                iat: now,
                exp,
                typ: typ.into(),
            };
            jsonwebtoken::encode(&header, &claims, &keys.encoding).unwrap()
        };
        assert!(
            keys.verify(&forge(Header::new(Algorithm::HS256), "access", now - 60))
                .is_none(),
            "expired"
        );
        assert!(
            keys.verify(&forge(Header::new(Algorithm::HS256), "refresh", now + 60))
                .is_none(),
            "wrong type"
        );
        assert!(
            keys.verify(&forge(Header::new(Algorithm::HS512), "access", now + 60))
                .is_none(),
            "algorithm"
        );
        // alg: none, hand-made.
        let unsigned = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(
                serde_json::json!({"sub": user, "sid": session, "iat": now, "exp": now + 60, "typ": "access"})
                    .to_string()
            )
        );
        assert!(keys.verify(&unsigned).is_none());
    }

    #[test]
    fn codes_are_six_digits() {
        for _ in 0..1000 {
            let code = six_digit_code();
            assert_eq!(code.len(), 6);
            assert!(code.bytes().all(|b| b.is_ascii_digit()));
        }
        assert!(new_api_token().starts_with(API_TOKEN_PREFIX));
        assert_ne!(random_token(), random_token());
    }
}
