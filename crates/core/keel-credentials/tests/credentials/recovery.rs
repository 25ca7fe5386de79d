//! Recovery codes: ten per set, stored hashed, each redeemable once.

use keel_credentials::recovery::{self, CODES_PER_SET, RecoveryCodes};

#[test]
fn each_code_signs_in_once_and_only_its_hash_is_kept() {
    let set = RecoveryCodes::generate();
    assert_eq!(set.shown.len(), CODES_PER_SET);
    let mut stored = set.hashes.clone();
    for code in &set.shown {
        assert_eq!(code.len(), 11, "{code}");
        assert!(!stored.iter().any(|h| h.contains(code.as_str())));
    }
    let unique: std::collections::HashSet<_> = set.shown.iter().collect();
    assert_eq!(unique.len(), CODES_PER_SET);

    let first = &set.shown[0];
    // Typed without the dash and in capitals, it is the same code.
    assert!(recovery::redeem(
        &first.replace('-', "").to_uppercase(),
        &mut stored
    ));
    assert_eq!(stored.len(), CODES_PER_SET - 1);
    assert!(!recovery::redeem(first, &mut stored), "used once already");
    assert!(!recovery::redeem("aaaaa-aaaaa", &mut stored));
    for code in &set.shown[1..] {
        assert!(recovery::redeem(code, &mut stored));
    }
    assert!(stored.is_empty());
}
