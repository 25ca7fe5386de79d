//! Passwords: argon2id at OWASP's minimum or stronger, rehash on parameter change, the policy.

use keel_credentials::password::{
    Argon2Params, PasswordHasher, PasswordPolicy, PolicyViolation, Verified, is_common,
};

#[test]
fn a_hash_verifies_its_password_only_and_is_salted() {
    let hasher = PasswordHasher::default();
    let stored = hasher.hash("correct horse battery staple");
    assert!(
        stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{stored}"
    );
    assert_eq!(
        hasher.verify("correct horse battery staple", &stored),
        Verified::Yes { rehash: false }
    );
    assert_eq!(
        hasher.verify("correct horse battery stapler", &stored),
        Verified::No
    );
    assert_eq!(hasher.verify("", &stored), Verified::No);
    assert_ne!(
        hasher.hash("correct horse battery staple"),
        stored,
        "a fresh salt each time"
    );
    assert_eq!(hasher.verify("anything", "not a phc string"), Verified::No);
}

#[test]
fn parameters_below_owasps_minimum_are_refused() {
    assert!(Argon2Params::new(19 * 1024, 2, 1).is_ok());
    assert!(Argon2Params::new(64 * 1024, 3, 4).is_ok());
    for (m, t, p) in [(19 * 1024 - 1, 2, 1), (19 * 1024, 1, 1), (19 * 1024, 2, 0)] {
        let err = Argon2Params::new(m, t, p).unwrap_err();
        assert!(err.to_string().contains("below the minimum"), "{err}");
    }
}

#[test]
fn a_hash_made_with_other_parameters_verifies_and_asks_for_a_rehash() {
    let old = PasswordHasher::default().hash("a long enough passphrase");
    let stronger = PasswordHasher::new(Argon2Params::new(24 * 1024, 3, 1).unwrap());
    let verified = stronger.verify("a long enough passphrase", &old);
    assert_eq!(verified, Verified::Yes { rehash: true });
    assert!(verified.is_match());
    let new = stronger.hash("a long enough passphrase");
    assert!(new.contains("$m=24576,t=3,p=1$"), "{new}");
    assert_eq!(
        stronger.verify("a long enough passphrase", &new),
        Verified::Yes { rehash: false }
    );
}

#[test]
fn the_policy_refuses_short_long_common_and_personal_passwords() {
    let policy = PasswordPolicy::default();
    let personal = ["ada.lovelace@example.com", "ada.lovelace", "Ada Lovelace"];
    assert_eq!(policy.check("tiger lily 77 on ice", &personal), Ok(()));
    assert_eq!(
        policy.check("short1", &personal),
        Err(PolicyViolation::TooShort { min: 12 })
    );
    assert_eq!(
        policy.check(&"x".repeat(129), &personal),
        Err(PolicyViolation::TooLong { max: 128 })
    );
    // Counted in characters, not bytes: twelve accented letters pass.
    assert_eq!(policy.check("éééééééééééé", &[]), Ok(()));
    assert_eq!(
        policy.check("QWERTYUIOP123", &[]),
        Err(PolicyViolation::Common),
        "the list is matched without regard to case"
    );
    assert_eq!(
        policy.check("my name is ada.lovelace!", &personal),
        Err(PolicyViolation::Personal)
    );
    assert!(policy.check("password1234", &[]).is_err());
    let lax = PasswordPolicy {
        refuse_common: false,
        ..PasswordPolicy::default()
    };
    assert_eq!(lax.check("qwertyuiop123", &[]), Ok(()));
}

#[test]
fn the_shipped_common_password_list_is_loaded() {
    for common in ["123456", "password", "qwerty", "iloveyou", "qwertyuiop123"] {
        assert!(is_common(common), "{common}");
    }
    assert!(!is_common("tiger lily 77 on ice"));
}
