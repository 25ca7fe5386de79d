//! TOTP: RFC 6238's test vectors, the ±1 step window, replay refusal and the enrolment URI.

use keel_credentials::totp::{Algorithm, Totp, TotpError, TotpSecret};

fn rfc_secret(algorithm: Algorithm) -> TotpSecret {
    let ascii = "1234567890".repeat(7);
    let len = match algorithm {
        Algorithm::Sha1 => 20,
        Algorithm::Sha256 => 32,
        Algorithm::Sha512 => 64,
    };
    TotpSecret::from_bytes(&ascii.as_bytes()[..len]).unwrap()
}

#[test]
fn rfc_6238_appendix_b_vectors_pass() {
    // (time, SHA-1, SHA-256, SHA-512), 8 digits, 30-second steps.
    let vectors = [
        (59, "94287082", "46119246", "90693936"),
        (1_111_111_109, "07081804", "68084774", "25091201"),
        (1_111_111_111, "14050471", "67062674", "99943326"),
        (1_234_567_890, "89005924", "91819424", "93441116"),
        (2_000_000_000, "69279037", "90698825", "38618901"),
        (20_000_000_000, "65353130", "77737706", "47863826"),
    ];
    for (time, sha1, sha256, sha512) in vectors {
        for (algorithm, expected) in [
            (Algorithm::Sha1, sha1),
            (Algorithm::Sha256, sha256),
            (Algorithm::Sha512, sha512),
        ] {
            let totp = Totp::with(rfc_secret(algorithm), algorithm, 8, 30);
            assert_eq!(totp.code_at(time), expected, "{algorithm:?} at {time}");
        }
    }
}

#[test]
fn rfc_4226_appendix_d_hotp_values_are_the_six_digit_codes_of_counters_0_to_9() {
    let totp = Totp::new(rfc_secret(Algorithm::Sha1));
    let expected = [
        "755224", "287082", "359152", "969429", "338314", "254676", "287922", "162583", "399871",
        "520489",
    ];
    for (counter, code) in expected.iter().enumerate() {
        assert_eq!(totp.code_for_step(counter as u64), *code);
    }
}

#[test]
fn one_step_of_drift_either_side_is_accepted_and_no_more() {
    let totp = Totp::new(TotpSecret::generate());
    let now = 1_700_000_015;
    let step = totp.step_at(now);
    for (offset, accepted) in [(-2i64, false), (-1, true), (0, true), (1, true), (2, false)] {
        let code = totp.code_for_step(step.checked_add_signed(offset).unwrap());
        let outcome = totp.verify(&code, now, None);
        if accepted {
            assert_eq!(outcome, Ok(step.checked_add_signed(offset).unwrap()));
        } else {
            // A code of two steps away can collide with a valid one by chance (1 in 10^6 per
            // step); only then would it be accepted, as the valid code it equals.
            let collides = (step - 1..=step + 1).any(|s| totp.code_for_step(s) == code);
            assert!(
                collides || outcome == Err(TotpError::Wrong),
                "offset {offset}"
            );
        }
    }
}

#[test]
fn a_code_is_accepted_once_and_earlier_steps_never_after_it() {
    let totp = Totp::new(TotpSecret::generate());
    let now = 1_700_000_000;
    let code = totp.code_at(now);
    let step = totp.verify(&code, now, None).unwrap();
    assert_eq!(
        totp.verify(&code, now, Some(step)),
        Err(TotpError::Replayed)
    );
    assert_eq!(
        totp.verify(&code, now + 10, Some(step)),
        Err(TotpError::Replayed),
        "the same code later within its step"
    );
    let previous = totp.code_for_step(step - 1);
    if previous != code {
        assert_eq!(
            totp.verify(&previous, now, Some(step)),
            Err(TotpError::Replayed),
            "an older step's code after a newer one was used"
        );
    }
    let next = totp.code_at(now + 30);
    assert_eq!(totp.verify(&next, now + 30, Some(step)), Ok(step + 1));
}

#[test]
fn malformed_codes_and_weak_or_garbled_secrets_are_refused() {
    let totp = Totp::new(TotpSecret::generate());
    for code in ["", "12345", "1234567", "12a456", "１２３４５６"] {
        assert_eq!(
            totp.verify(code, 1_700_000_000, None),
            Err(TotpError::Malformed { digits: 6 }),
            "{code:?}"
        );
    }
    assert_eq!(
        TotpSecret::from_bytes(&[7; 15]).unwrap_err(),
        TotpError::WeakSecret
    );
    assert_eq!(
        TotpSecret::from_base32("NOT!BASE32").unwrap_err(),
        TotpError::MalformedSecret
    );
}

#[test]
fn the_enrolment_uri_carries_the_base32_secret_and_the_app_profile() {
    let secret = TotpSecret::generate();
    let encoded = secret.to_base32();
    assert_eq!(encoded.len(), 32, "160 bits in base32");
    let uri = Totp::new(secret.clone()).otpauth_uri("keel dev", "ada@example.com");
    assert_eq!(
        uri,
        format!(
            "otpauth://totp/keel%20dev:ada%40example.com?secret={encoded}&issuer=keel%20dev&algorithm=SHA1&digits=6&period=30"
        )
    );
    assert_eq!(TotpSecret::from_base32(&encoded).unwrap(), secret);
    assert_eq!(format!("{secret:?}"), "TotpSecret(..)");
}
