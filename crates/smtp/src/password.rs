//! Argon2 password hashes for SMTP AUTH users.

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};

/// Why a password could not be hashed, or a stored hash is unusable.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// Hashing failed (no randomness for the salt, or bad parameters).
    #[error("cannot hash password: {0}")]
    Hash(String),
    /// The stored value is not an argon2 PHC string.
    #[error("not an argon2 PHC string: {0}")]
    InvalidHash(String),
}

/// Hashes a password with Argon2id (default parameters, random salt) into a PHC string, for
/// `postrider passwd` and the `users` setting.
pub fn hash_password(plain: &str) -> Result<String, PasswordError> {
    Argon2::default()
        .hash_password(plain.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

/// Checks that `hash` is a usable argon2 PHC string (at start-up, not at first login).
pub fn validate_password_hash(hash: &str) -> Result<(), PasswordError> {
    let parsed = PasswordHash::new(hash).map_err(|e| PasswordError::InvalidHash(e.to_string()))?;
    if !parsed.algorithm.as_str().starts_with("argon2") {
        return Err(PasswordError::InvalidHash(format!(
            "algorithm {} is not argon2",
            parsed.algorithm
        )));
    }
    if parsed.salt.is_none() || parsed.hash.is_none() {
        return Err(PasswordError::InvalidHash(
            "salt or hash missing".to_owned(),
        ));
    }
    Ok(())
}

/// Whether `plain` matches the PHC string `hash`. CPU- and memory-heavy: call it from a
/// blocking thread.
pub(crate) fn verify_password(hash: &str, plain: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(plain.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_validate() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(validate_password_hash(&hash).is_ok());
        assert!(verify_password(&hash, "correct horse"));
        assert!(!verify_password(&hash, "wrong horse"));
        assert!(!verify_password("not a hash", "correct horse"));
        assert!(validate_password_hash("plain text").is_err());
        assert_ne!(
            hash,
            hash_password("correct horse").unwrap(),
            "salts differ"
        );
    }
}
