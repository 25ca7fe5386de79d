//! Envelope encryption: sealed values open only in their place, keys rotate without touching the
//! data, and bad keys or altered values are refused.

use keel_credentials::envelope::{EnvelopeError, Keyring};

fn entry(id: &str, byte: u8) -> String {
    use base64::Engine as _;
    format!(
        "{id}:{}",
        base64::engine::general_purpose::STANDARD.encode([byte; 32])
    )
}

#[test]
fn a_sealed_value_opens_only_in_its_place_and_hides_its_plaintext() {
    let keyring = Keyring::parse([entry("k1", 1).as_str()]).unwrap();
    let sealed = keyring.seal(b"ada@example.com", "users/1/email");
    assert!(sealed.starts_with("k1.k1."), "{sealed}");
    assert!(!sealed.contains("ada"));
    assert_eq!(
        keyring.open(&sealed, "users/1/email").unwrap(),
        b"ada@example.com"
    );
    assert_eq!(
        keyring.open(&sealed, "users/2/email"),
        Err(EnvelopeError::Forged),
        "copied to another row"
    );
    assert_ne!(
        keyring.seal(b"ada@example.com", "users/1/email"),
        sealed,
        "a fresh data key and nonce every time"
    );
}

#[test]
fn altered_and_malformed_values_are_refused() {
    let keyring = Keyring::parse([entry("k1", 1).as_str()]).unwrap();
    let sealed = keyring.seal(b"secret", "place");
    let mut parts: Vec<String> = sealed.split('.').map(str::to_owned).collect();
    // A character in the middle: all six of its bits are data (the last one's are partly
    // padding, which strict base64 refuses as malformed instead).
    let mut body: Vec<char> = parts[3].chars().collect();
    body[10] = if body[10] == 'A' { 'B' } else { 'A' };
    parts[3] = body.into_iter().collect();
    assert_eq!(
        keyring.open(&parts.join("."), "place"),
        Err(EnvelopeError::Forged)
    );
    for bad in [
        "",
        "k1",
        "k1.k1.x.y",
        "k2.k1.AAAA.AAAA",
        &format!("{sealed}.more"),
    ] {
        assert_eq!(
            keyring.open(bad, "place"),
            Err(EnvelopeError::Malformed),
            "{bad}"
        );
    }
    let other = sealed.replacen("k1.k1.", "k1.k9.", 1);
    assert_eq!(
        keyring.open(&other, "place"),
        Err(EnvelopeError::UnknownKey("k9".into()))
    );
}

#[test]
fn a_new_primary_key_seals_and_old_values_rewrap_without_reencrypting_the_data() {
    let old = Keyring::parse([entry("k1", 1).as_str()]).unwrap();
    let sealed = old.seal(b"personal data", "users/7/name");

    let rotated = Keyring::parse([entry("k2", 2).as_str(), entry("k1", 1).as_str()]).unwrap();
    assert_eq!(
        rotated.open(&sealed, "users/7/name").unwrap(),
        b"personal data"
    );
    assert!(rotated.needs_rewrap(&sealed));
    let rewrapped = rotated.rewrap(&sealed, "users/7/name").unwrap();
    assert!(!rotated.needs_rewrap(&rewrapped));
    assert_eq!(
        rewrapped.rsplit('.').next(),
        sealed.rsplit('.').next(),
        "the data's ciphertext is untouched"
    );
    assert!(rotated.seal(b"new", "x").starts_with("k1.k2."));

    // Once k1 is gone, only rewrapped values open.
    let k2_only = Keyring::parse([entry("k2", 2).as_str()]).unwrap();
    assert_eq!(
        k2_only.open(&rewrapped, "users/7/name").unwrap(),
        b"personal data"
    );
    assert_eq!(
        k2_only.open(&sealed, "users/7/name"),
        Err(EnvelopeError::UnknownKey("k1".into()))
    );
    assert!(
        rotated.rewrap(&sealed, "users/8/name").is_err(),
        "rewrap checks the place"
    );
}

#[test]
fn bad_key_entries_are_refused_without_echoing_the_key() {
    assert_eq!(
        Keyring::parse(Vec::<&str>::new()).unwrap_err(),
        EnvelopeError::NoKeys
    );
    let short = "k1:c2hvcnQ=";
    let err = Keyring::parse([short]).unwrap_err();
    assert!(matches!(err, EnvelopeError::BadKey(_)));
    assert!(!err.to_string().contains("c2hvcnQ"), "{err}");
    assert!(Keyring::parse(["no-id-here"]).is_err());
    assert!(Keyring::parse(["bad id:AAAA"]).is_err());
    assert_eq!(
        Keyring::parse([entry("k1", 1).as_str(), entry("k1", 2).as_str()]).unwrap_err(),
        EnvelopeError::DuplicateId("k1".into())
    );
    let generated = Keyring::generate_entry("k3");
    assert!(Keyring::parse([generated.as_str()]).is_ok());
    assert_eq!(
        format!("{:?}", Keyring::parse([generated.as_str()]).unwrap()),
        "Keyring { ids: [\"k3\"] }"
    );
}
