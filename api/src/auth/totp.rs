//! TOTP (RFC 6238: SHA-1, 6 digits, 30 s steps, ±1 step of clock skew) and
//! recovery codes. The secret is sealed in `users.totp_secret`, bound to the
//! user's row. A code is accepted only for a time step later than the last one
//! accepted (one conditional UPDATE), so no code works twice.

use base64::Engine;
use berth_secrets::{Binding, Keyring};
use sqlx::PgConnection;
use totp_rs::{Builder, Secret, Totp};
use uuid::Uuid;

use crate::error::ApiError;

const STEP_SECS: u64 = 30;
const ISSUER: &str = "Berth";
pub const RECOVERY_CODE_COUNT: usize = 10;

pub fn binding<'a>(user_id: &'a str, column: &'a str) -> Binding<'a> {
    Binding {
        table: "users",
        column,
        row_id: user_id,
    }
}

/// SHA-1, 6 digits, 30 s steps, ±1 step: the RFC's values and Builder's defaults.
fn totp(secret: Vec<u8>, account: &str) -> Result<Totp, ApiError> {
    Builder::new()
        .with_step_duration(STEP_SECS)
        .with_secret(Secret::new(secret.into_boxed_slice()))
        .with_issuer(Some(ISSUER))
        .with_account_name(account)
        .build()
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("TOTP set-up failed: {e}")))
}

pub struct NewSecret {
    /// Base32, for typing into an authenticator app.
    pub base32: String,
    pub otpauth_uri: String,
    pub raw: Vec<u8>,
}

pub fn generate(account: &str) -> Result<NewSecret, ApiError> {
    let raw: [u8; 20] = rand::random();
    let totp = totp(raw.to_vec(), account)?;
    Ok(NewSecret {
        base32: totp.secret().to_base32(),
        otpauth_uri: totp
            .to_url()
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("otpauth URI: {e}")))?,
        raw: raw.to_vec(),
    })
}

pub fn seal(keys: &Keyring, user_id: Uuid, column: &'static str, raw: &[u8]) -> String {
    let id = user_id.to_string();
    keys.seal(
        base64::engine::general_purpose::STANDARD
            .encode(raw)
            .as_bytes(),
        binding(&id, column),
    )
}

pub fn open(
    keys: &Keyring,
    user_id: Uuid,
    column: &'static str,
    sealed: &str,
) -> Result<Vec<u8>, ApiError> {
    let id = user_id.to_string();
    let encoded = keys
        .open(sealed, binding(&id, column))
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("TOTP secret does not open: {e}")))?;
    base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("TOTP secret is malformed: {e}")))
}

/// The time step `code` is valid for (now ±1 step), if any.
pub fn matching_step(raw: &[u8], code: &str) -> Result<Option<i64>, ApiError> {
    let code = code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    let totp = totp(raw.to_vec(), "check")?;
    let now = chrono::Utc::now().timestamp() as u64;
    Ok(totp.check(code, now).map(|step| step as i64))
}

/// Accepts `step` for the user only if it is later than the last accepted one.
pub async fn claim_step(
    conn: &mut PgConnection,
    user_id: Uuid,
    step: i64,
) -> Result<bool, sqlx::Error> {
    let claimed = sqlx::query(
        "UPDATE users SET totp_last_step = $2 \
         WHERE id = $1 AND (totp_last_step IS NULL OR totp_last_step < $2)",
    )
    .bind(user_id)
    .bind(step)
    .execute(conn)
    .await?;
    Ok(claimed.rows_affected() == 1)
}

/// Checks a TOTP code against the user's enabled secret and claims its step.
pub async fn verify_enabled(
    conn: &mut PgConnection,
    keys: &Keyring,
    user_id: Uuid,
    code: &str,
) -> Result<bool, ApiError> {
    let sealed: Option<String> =
        sqlx::query_scalar("SELECT totp_secret FROM users WHERE id = $1 AND totp_enabled")
            .bind(user_id)
            .fetch_optional(&mut *conn)
            .await?
            .flatten();
    let Some(sealed) = sealed else {
        return Ok(false);
    };
    let raw = open(keys, user_id, "totp_secret", &sealed)?;
    match matching_step(&raw, code)? {
        Some(step) => Ok(claim_step(conn, user_id, step).await?),
        None => Ok(false),
    }
}

/// Which second factor a code was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecondFactor {
    Totp,
    RecoveryCode,
}

impl SecondFactor {
    pub fn name(self) -> &'static str {
        match self {
            SecondFactor::Totp => "totp",
            SecondFactor::RecoveryCode => "recovery_code",
        }
    }
}

/// Checks a second-factor code: six digits are a TOTP code (claiming its
/// step), anything else a recovery code (using it up). Returns what it was and
/// whether it was accepted.
pub async fn check_second_factor(
    conn: &mut PgConnection,
    keys: &Keyring,
    user_id: Uuid,
    code: &str,
) -> Result<(SecondFactor, bool), ApiError> {
    let code = code.trim();
    if code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()) {
        let accepted = verify_enabled(conn, keys, user_id, code).await?;
        Ok((SecondFactor::Totp, accepted))
    } else {
        let accepted = use_recovery_code(conn, user_id, code).await?;
        Ok((SecondFactor::RecoveryCode, accepted))
    }
}

/// `xxxx-xxxx-xxxx-xxxx` from an unambiguous alphabet: 80 bits each.
pub fn new_recovery_codes() -> Vec<String> {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    (0..RECOVERY_CODE_COUNT)
        .map(|_| {
            let chars: Vec<char> = (0..16)
                .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
                .collect();
            chars
                .chunks(4)
                .map(|c| c.iter().collect::<String>())
                .collect::<Vec<_>>()
                .join("-")
        })
        .collect()
}

/// Recovery codes are compared without dashes, spaces or case.
pub fn recovery_code_hash(code: &str) -> String {
    let normalized: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    berth_secrets::sha256_hex(normalized.as_bytes())
}

pub async fn use_recovery_code(
    conn: &mut PgConnection,
    user_id: Uuid,
    code: &str,
) -> Result<bool, sqlx::Error> {
    let used = sqlx::query(
        "UPDATE recovery_codes SET used_at = now() \
         WHERE user_id = $1 AND code_hash = $2 AND used_at IS NULL",
    )
    .bind(user_id)
    .bind(recovery_code_hash(code))
    .execute(conn)
    .await?;
    Ok(used.rows_affected() == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_their_step_only() {
        let secret = generate("ada@example.test").unwrap();
        assert!(
            secret
                .otpauth_uri
                .starts_with("otpauth://totp/Berth:ada%40example.test?secret=")
        );
        assert!(secret.otpauth_uri.contains("issuer=Berth"));
        let totp = totp(secret.raw.clone(), "x").unwrap();
        let now = chrono::Utc::now().timestamp() as u64;
        let code = totp.generate(now).to_string();
        assert_eq!(
            matching_step(&secret.raw, &code).unwrap(),
            Some((now / 30) as i64)
        );
        let old = totp.generate(now - 300).to_string();
        if old != code {
            assert_eq!(matching_step(&secret.raw, &old).unwrap(), None);
        }
        assert_eq!(matching_step(&secret.raw, "12345").unwrap(), None);
        assert_eq!(matching_step(&secret.raw, "abcdef").unwrap(), None);
    }

    #[test]
    fn recovery_codes() {
        let codes = new_recovery_codes();
        assert_eq!(codes.len(), 10);
        assert!(codes.iter().all(|c| c.len() == 19));
        let upper = codes[0].to_uppercase().replace('-', " ");
        assert_eq!(recovery_code_hash(&upper), recovery_code_hash(&codes[0]));
    }
}
