//! Passwords: argon2id hashes in PHC strings, and the policy a new password must meet.
//!
//! The hash parameters default to OWASP's current minimum for argon2id (19 MiB of memory, 2
//! passes, 1 lane) and can be raised, never lowered: [`Argon2Params::new`] refuses weaker ones.
//! A stored hash made with other parameters still verifies and says it needs a rehash, so raising
//! them upgrades each account at its next login.

use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Params, Version};

/// argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Params {
    memory_kib: u32,
    iterations: u32,
    parallelism: u32,
}

impl Argon2Params {
    /// OWASP's Password Storage Cheat Sheet, argon2id: m = 19 MiB, t = 2, p = 1 (the weakest of
    /// its equivalent settings: less memory is only allowed with more passes, which keel does not
    /// offer, to keep one rule).
    pub const OWASP_MINIMUM: Self = Self {
        memory_kib: 19 * 1024,
        iterations: 2,
        parallelism: 1,
    };

    /// Parameters at least as strong as [`Self::OWASP_MINIMUM`] in every dimension but
    /// parallelism (more lanes spread the same work, they do not weaken it).
    pub fn new(memory_kib: u32, iterations: u32, parallelism: u32) -> Result<Self, WeakParams> {
        let min = Self::OWASP_MINIMUM;
        if memory_kib < min.memory_kib || iterations < min.iterations || parallelism == 0 {
            return Err(WeakParams {
                memory_kib,
                iterations,
                parallelism,
            });
        }
        // argon2's own bounds (memory of at least 8 KiB per lane, at most 2^24 - 1 lanes).
        Params::new(memory_kib, iterations, parallelism, None).map_err(|_| WeakParams {
            memory_kib,
            iterations,
            parallelism,
        })?;
        Ok(Self {
            memory_kib,
            iterations,
            parallelism,
        })
    }

    pub fn memory_kib(&self) -> u32 {
        self.memory_kib
    }

    pub fn iterations(&self) -> u32 {
        self.iterations
    }

    pub fn parallelism(&self) -> u32 {
        self.parallelism
    }

    /// The parameter segment of a PHC string made with these parameters.
    fn phc_segment(&self) -> String {
        format!(
            "m={},t={},p={}",
            self.memory_kib, self.iterations, self.parallelism
        )
    }
}

impl Default for Argon2Params {
    fn default() -> Self {
        Self::OWASP_MINIMUM
    }
}

/// Parameters below OWASP's minimum, or outside argon2's bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "argon2id parameters m={memory_kib} KiB, t={iterations}, p={parallelism} are below the minimum \
     of m=19456 KiB, t=2, p=1 or outside argon2's bounds"
)]
pub struct WeakParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

/// The outcome of checking a password against a stored hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    /// The password does not match (or the stored hash is not one keel can read).
    No,
    /// It matches; `rehash` says the stored hash was made with other parameters or another
    /// algorithm and should be replaced by [`PasswordHasher::hash`] of the same password.
    Yes { rehash: bool },
}

impl Verified {
    pub fn is_match(self) -> bool {
        matches!(self, Self::Yes { .. })
    }
}

/// Hashes and verifies passwords with argon2id.
#[derive(Debug, Clone, Default)]
pub struct PasswordHasher {
    params: Argon2Params,
}

impl PasswordHasher {
    pub fn new(params: Argon2Params) -> Self {
        Self { params }
    }

    pub fn params(&self) -> Argon2Params {
        self.params
    }

    fn argon2(&self) -> Argon2<'static> {
        let p = self.params;
        let params = Params::new(p.memory_kib, p.iterations, p.parallelism, None)
            .expect("checked by Argon2Params::new");
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
    }

    /// A PHC string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`) of `password` with a fresh
    /// 16-byte salt.
    pub fn hash(&self, password: &str) -> String {
        let mut salt = [0u8; 16];
        crate::random_bytes(&mut salt);
        self.argon2()
            .hash_password_with_salt(password.as_bytes(), &salt)
            .expect("argon2id with checked parameters and a 16-byte salt")
            .to_string()
    }

    /// Checks `password` against a stored PHC string, in time that does not depend on where
    /// the two differ (argon2's output is compared in constant time).
    pub fn verify(&self, password: &str, stored: &str) -> Verified {
        // Parameters come from the stored string, so older hashes still verify.
        let matched = Argon2::default()
            .verify_password(password.as_bytes(), stored)
            .is_ok();
        if !matched {
            return Verified::No;
        }
        let mut parts = stored.split('$');
        let current = parts.nth(1) == Some("argon2id")
            && parts.next() == Some("v=19")
            && parts.next() == Some(self.params.phc_segment().as_str());
        Verified::Yes { rehash: !current }
    }

    /// Spends the time of one verification without an account to verify against: called when a
    /// login names no known account, so that the answer takes as long as for a wrong password
    /// and timing does not tell which accounts exist.
    pub fn verify_nothing(&self, password: &str) {
        let mut out = [0u8; 32];
        let _ = self.argon2().hash_password_into(
            password.as_bytes(),
            b"keel-no-account-salt",
            &mut out,
        );
    }
}

/// What a new password must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordPolicy {
    /// Fewest characters (Unicode scalar values). NIST SP 800-63B asks for at least 8, and 15 for
    /// a password that is the only factor; keel's default, 12, is between them.
    pub min_chars: usize,
    /// Most characters: argon2 hashes any length, but a megabyte password is a denial of service.
    pub max_chars: usize,
    /// Refuse the passwords of the shipped list of common passwords.
    pub refuse_common: bool,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self {
            min_chars: 12,
            max_chars: 128,
            refuse_common: true,
        }
    }
}

/// Why a password was refused; the message is meant for the person choosing it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyViolation {
    #[error("the password must have at least {min} characters")]
    TooShort { min: usize },
    #[error("the password must have at most {max} characters")]
    TooLong { max: usize },
    #[error("the password is one of the most common passwords")]
    Common,
    #[error("the password must not contain your email address or name")]
    Personal,
}

impl PasswordPolicy {
    /// Checks a new `password`; `personal` are the account's own words (its email address, the
    /// part before the `@`, its name), which the password must not contain.
    pub fn check(&self, password: &str, personal: &[&str]) -> Result<(), PolicyViolation> {
        let chars = password.chars().count();
        if chars < self.min_chars {
            return Err(PolicyViolation::TooShort {
                min: self.min_chars,
            });
        }
        if chars > self.max_chars {
            return Err(PolicyViolation::TooLong {
                max: self.max_chars,
            });
        }
        let lower = password.to_lowercase();
        if self.refuse_common && is_common(&lower) {
            return Err(PolicyViolation::Common);
        }
        for word in personal {
            let word = word.trim().to_lowercase();
            // Words this short are found by chance in long passwords.
            if word.chars().count() >= 4 && lower.contains(&word) {
                return Err(PolicyViolation::Personal);
            }
        }
        Ok(())
    }
}

/// The 19,640 most common passwords (Royce Williams' list, as shipped by Django, BSD-licensed;
/// see `data/README.md`), lowercase, one per line, sorted by frequency.
const COMMON: &str = include_str!("../data/common-passwords.txt");

fn common() -> &'static std::collections::HashSet<&'static str> {
    static SET: std::sync::OnceLock<std::collections::HashSet<&'static str>> =
        std::sync::OnceLock::new();
    SET.get_or_init(|| COMMON.lines().map(str::trim).collect())
}

/// Whether `lowercase` is on the list of common passwords.
pub fn is_common(lowercase: &str) -> bool {
    common().contains(lowercase)
}
