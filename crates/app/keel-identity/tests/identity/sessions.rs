//! Refresh-token rotation with reuse detection, and brute-force slow-down.

use keel_identity::lockout::{Failures, LockoutPolicy};
use keel_identity::refresh::{Redeemed, RefreshError, RefreshTokens};

const NOW: i64 = 1_800_000_000;

fn rotate(
    tokens: &RefreshTokens,
    family: &keel_identity::refresh::Family,
    token: &str,
    now: i64,
) -> (keel_identity::refresh::Family, String) {
    match tokens.redeem(family, token, "app", now) {
        Redeemed::Rotated { family, token } => (family, token),
        other => panic!("expected a rotation, got {other:?}"),
    }
}

#[test]
fn each_refresh_rotates_and_a_reused_token_revokes_the_family() {
    let tokens = RefreshTokens::new(&[7; 32]);
    let (family, first) = tokens.start("user-1", "app", "", NOW, 86_400);
    assert_eq!(tokens.family_of(&first).unwrap(), (family.id.as_str(), 0));

    let (family, second) = rotate(&tokens, &family, &first, NOW + 10);
    assert_eq!(family.generation, 1);
    let (family, third) = rotate(&tokens, &family, &second, NOW + 20);
    assert_eq!(family.generation, 2);

    // The thief replays the first token: the family is revoked, and the owner's current token
    // stops working too.
    let revoked = match tokens.redeem(&family, &first, "app", NOW + 30) {
        Redeemed::Reused { family } => family,
        other => panic!("{other:?}"),
    };
    assert!(revoked.revoked);
    assert_eq!(
        tokens.redeem(&revoked, &third, "app", NOW + 31),
        Redeemed::Refused(RefreshError::Revoked)
    );
}

#[test]
fn forged_foreign_expired_and_future_tokens_are_refused_without_revoking() {
    let tokens = RefreshTokens::new(&[7; 32]);
    let other_server = RefreshTokens::new(&[8; 32]);
    let (family, token) = tokens.start("user-1", "app", "", NOW, 3600);

    let (_, foreign) = other_server.start("user-1", "app", "", NOW, 3600);
    for bad in [
        String::new(),
        "garbage".into(),
        format!("{token}.x"),
        token.replace(".0.", ".1."),
        format!("{}.0.{}", family.id, "A".repeat(43)),
        foreign,
    ] {
        assert_eq!(
            tokens.redeem(&family, &bad, "app", NOW),
            Redeemed::Refused(RefreshError::Invalid),
            "{bad}"
        );
    }
    assert_eq!(
        tokens.redeem(&family, &token, "another-client", NOW),
        Redeemed::Refused(RefreshError::Invalid),
        "a family is bound to its client"
    );
    assert_eq!(
        tokens.redeem(&family, &token, "app", NOW + 3600),
        Redeemed::Refused(RefreshError::Expired)
    );
    // A genuine token of a generation the store never reached (a restored backup) is refused,
    // and the family is left alone.
    let (later, newer) = rotate(&tokens, &family, &token, NOW);
    assert_eq!(
        tokens.redeem(&family, &newer, "app", NOW),
        Redeemed::Refused(RefreshError::Invalid)
    );
    assert!(!later.revoked);
}

#[test]
fn failures_slow_down_doubling_to_a_cap_and_a_success_resets() {
    let policy = LockoutPolicy::default();
    let mut record = Failures::default();
    let mut now = NOW;
    for _ in 0..policy.free_failures {
        policy.check(&record, now).unwrap();
        policy.fail(&mut record, now);
    }
    policy.check(&record, now).unwrap();
    policy.fail(&mut record, now);
    let locked = policy.check(&record, now).unwrap_err();
    assert_eq!(locked.retry_after_secs, 30);
    assert!(policy.check(&record, now + 29).is_err());
    now += 30;
    policy.check(&record, now).unwrap();
    policy.fail(&mut record, now);
    assert_eq!(policy.check(&record, now).unwrap_err().retry_after_secs, 60);

    // Never more than the cap, however long the attack goes on.
    for _ in 0..100 {
        now = record.wait_until;
        policy.fail(&mut record, now);
        assert!(record.wait_until - now <= policy.max_wait_secs);
    }
    assert_eq!(record.wait_until - now, policy.max_wait_secs);

    now = record.wait_until;
    policy.succeed(&mut record);
    assert_eq!(record, Failures::default());
    policy.check(&record, now).unwrap();
}
