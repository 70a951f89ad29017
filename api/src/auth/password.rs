//! Password rules (NIST SP 800-63B as OWASP summarises it: 8–128 characters,
//! Unicode allowed, never truncated, no composition rules, not a common
//! password) and argon2id hashing off the async runtime.

use std::collections::HashSet;
use std::sync::{LazyLock, Mutex};

use argon2::password_hash::{Output, PasswordHash, SaltString, rand_core::OsRng};
use argon2::{Algorithm, Argon2, Params, Version};
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
/// sign-ins queues instead of exhausting memory or every blocking thread. The
/// work is CPU-bound, so more slots than cores would add memory, not speed.
static HASHING: LazyLock<Semaphore> = LazyLock::new(|| Semaphore::new(hashing_slots()));

fn hashing_slots() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// One argon2 memory area per hashing slot, reused. Freed 19 MiB blocks from
/// many blocking threads were kept by the allocator's per-thread arenas (the
/// api grew from 35 to 207 MB after ten sign-ins); reusing them bounds argon2's
/// share of the heap at slots × 19 MiB whatever the load.
static BLOCKS: Mutex<Vec<Vec<argon2::Block>>> = Mutex::new(Vec::new());

/// Runs `work` with a memory area of at least `blocks` blocks from the pool.
fn with_blocks<T>(blocks: usize, work: impl FnOnce(&mut [argon2::Block]) -> T) -> T {
    let pooled = BLOCKS.lock().ok().and_then(|mut pool| pool.pop());
    let mut area = match pooled {
        Some(area) if area.len() >= blocks => area,
        _ => vec![argon2::Block::default(); blocks],
    };
    let result = work(&mut area[..blocks]);
    // Only areas of the standard size go back: a stored hash with a larger
    // cost must not grow the pool for good.
    if area.len() == Params::DEFAULT.block_count()
        && let Ok(mut pool) = BLOCKS.lock()
        && pool.len() < hashing_slots()
    {
        pool.push(area);
    }
    result
}

/// Argon2id of `password` with `salt` under `params`, into `output`.
fn argon2_into(
    algorithm: Algorithm,
    version: Version,
    params: Params,
    password: &[u8],
    salt: &[u8],
    output: &mut [u8],
) -> anyhow::Result<()> {
    let blocks = params.block_count();
    let hasher = Argon2::new(algorithm, version, params);
    with_blocks(blocks, |area| {
        hasher.hash_password_into_with_memory(password, salt, output, area)
    })
    .map_err(|e| anyhow::anyhow!("password hashing failed: {e}"))
}

/// argon2id with OWASP's recommended parameters (19 MiB, 2 passes, 1 lane), which
/// are the argon2 crate's defaults, as a PHC string.
pub fn hash_password_blocking(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt
        .decode_b64(&mut salt_buf)
        .map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    let params = Params::DEFAULT;
    let mut output = [0u8; Params::DEFAULT_OUTPUT_LEN];
    argon2_into(
        Algorithm::Argon2id,
        Version::V0x13,
        params.clone(),
        password.as_bytes(),
        salt_bytes,
        &mut output,
    )?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: (&params)
            .try_into()
            .map_err(|e| anyhow::anyhow!("params: {e}"))?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&output).map_err(|e| anyhow::anyhow!("output: {e}"))?),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches the PHC string `hash` (compared in constant
/// time by `Output`'s equality).
fn verify_blocking(password: &str, hash: &str) -> anyhow::Result<bool> {
    let parsed =
        PasswordHash::new(hash).map_err(|e| anyhow::anyhow!("stored hash is malformed: {e}"))?;
    let malformed = |what: &str| anyhow::anyhow!("stored hash is malformed: {what}");
    let algorithm = Algorithm::try_from(parsed.algorithm).map_err(|_| malformed("algorithm"))?;
    let version = parsed
        .version
        .map(Version::try_from)
        .transpose()
        .map_err(|_| malformed("version"))?
        .unwrap_or_default();
    let params = Params::try_from(&parsed).map_err(|_| malformed("params"))?;
    let expected = parsed.hash.ok_or_else(|| malformed("no hash"))?;
    let salt = parsed.salt.ok_or_else(|| malformed("no salt"))?;
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt
        .decode_b64(&mut salt_buf)
        .map_err(|_| malformed("salt"))?;
    let mut output = vec![0u8; expected.len()];
    argon2_into(
        algorithm,
        version,
        params,
        password.as_bytes(),
        salt_bytes,
        &mut output,
    )?;
    Ok(Output::new(&output).map_err(|_| malformed("length"))? == expected)
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
        Ok(verify_blocking(&password, &hash)? && real)
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

        // Hashes made by the argon2 crate's own hasher (every stored hash
        // before the block pool) still verify, with other costs too.
        use argon2::password_hash::PasswordHasher;
        for params in [Params::DEFAULT, Params::new(8192, 1, 1, None).unwrap()] {
            let salt = SaltString::generate(&mut OsRng);
            let theirs = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
                .hash_password(b"old password", &salt)
                .unwrap()
                .to_string();
            assert!(verify_blocking("old password", &theirs).unwrap());
            assert!(!verify_blocking("old passwore", &theirs).unwrap());
        }
        assert!(BLOCKS.lock().unwrap().len() <= hashing_slots());
    }
}
