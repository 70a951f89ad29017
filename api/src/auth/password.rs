//! Password rules (NIST SP 800-63B as OWASP summarises it: 8–128 characters,
//! Unicode allowed, never truncated, no composition rules, not a common
//! password) and argon2id hashing off the async runtime.

use std::collections::HashSet;
use std::sync::LazyLock;

use argon2::password_hash::{
    PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng,
};
use tokio::sync::Semaphore;

use crate::error::{ApiError, FieldError};

pub const PASSWORD_MIN_CHARS: usize = 8;
pub const PASSWORD_MAX_CHARS: usize = 128;

/// The 10,000 most common passwords (zxcvbn's ranked list, lower case).
static COMMON_PASSWORDS: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    include_str!("../../data/common-passwords.txt")
        .lines()
        .filter(|l| !l.is_empty())
        .collect()
});

/// Why `password` is not acceptable as a new password, if it is not.
pub fn password_problem(password: &str) -> Option<String> {
    let chars = password.chars().count();
    if chars < PASSWORD_MIN_CHARS {
        return Some(format!("must be at least {PASSWORD_MIN_CHARS} characters"));
    }
    if chars > PASSWORD_MAX_CHARS {
        return Some(format!("must be at most {PASSWORD_MAX_CHARS} characters"));
    }
    if COMMON_PASSWORDS.contains(password.to_lowercase().as_str()) {
        return Some("is one of the most common passwords; choose another".to_owned());
    }
    None
}

/// Checks a new password; `field` names it in the error.
pub fn check_new_password(field: &str, password: &str) -> Result<(), ApiError> {
    match password_problem(password) {
        None => Ok(()),
        Some(problem) => Err(ApiError::validation(vec![FieldError::new(field, problem)])),
    }
}

/// argon2 takes ~19 MiB per hash: bound how many run at once so a burst of
/// sign-ins queues instead of exhausting memory or every blocking thread.
static HASHING: LazyLock<Semaphore> = LazyLock::new(|| {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    Semaphore::new(cores * 2)
});

/// argon2id with OWASP's recommended parameters (19 MiB, 2 passes, 1 lane), which
/// are the argon2 crate's defaults.
pub fn hash_password_blocking(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    let hash = argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("password hashing failed: {e}"))?;
    Ok(hash.to_string())
}

pub async fn hash_password(password: &str) -> Result<String, ApiError> {
    let _permit = HASHING
        .acquire()
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || hash_password_blocking(&password))
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
        .map_err(ApiError::Internal)
}

/// A hash of a random password, verified against when an account does not exist
/// (or has no password) so the answer takes as long as for a real account.
static DUMMY_HASH: LazyLock<String> = LazyLock::new(|| {
    let random: [u8; 16] = rand::random();
    hash_password_blocking(&hex::encode(random)).expect("hashing a random password")
});

/// Verifies `password` against `hash`, or against a dummy hash when there is
/// none; false in the latter case whatever the password.
pub async fn verify_password(password: &str, hash: Option<&str>) -> Result<bool, ApiError> {
    let _permit = HASHING
        .acquire()
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    let real = hash.is_some();
    let hash = hash.map(str::to_owned);
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || {
        let hash = hash.unwrap_or_else(|| DUMMY_HASH.clone());
        let parsed = PasswordHash::new(&hash)
            .map_err(|e| anyhow::anyhow!("stored password hash is malformed: {e}"))?;
        let ok = argon2::Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        Ok(ok && real)
    })
    .await
    .map_err(|e| ApiError::Internal(e.into()))?
    .map_err(ApiError::Internal)
}

/// Computes the dummy hash now, so the first sign-in of an unknown account is
/// not slower than the rest (which would tell it apart).
pub fn warm_up() {
    LazyLock::force(&DUMMY_HASH);
    LazyLock::force(&COMMON_PASSWORDS);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        assert!(password_problem("short").unwrap().contains("at least 8"));
        assert!(
            password_problem(&"x".repeat(129))
                .unwrap()
                .contains("at most 128")
        );
        assert_eq!(
            password_problem(&"é".repeat(128)),
            None,
            "counted in characters"
        );
        assert_eq!(password_problem("correct horse battery staple"), None);
        for common in ["password", "PassWord", "12345678", "iloveyou", "baseball1"] {
            assert!(
                password_problem(common).unwrap().contains("common"),
                "{common}"
            );
        }
        assert_eq!(COMMON_PASSWORDS.len(), 10_000);
    }

    #[tokio::test]
    async fn hashes_and_verifies() {
        let hash = hash_password("correct horse battery staple").await.unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(
            verify_password("correct horse battery staple", Some(&hash))
                .await
                .unwrap()
        );
        assert!(
            !verify_password("correct horse battery stapler", Some(&hash))
                .await
                .unwrap()
        );
        assert!(!verify_password("anything", None).await.unwrap());
    }
}
