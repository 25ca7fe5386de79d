//! Access tokens: the signed round trip, key rotation and storage, and the attack list — each
//! forged or unfit token refused for its own reason.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use keel_credentials::token::{Claims, Expect, KeySet, KeyState, TokenError, Verifier};
use serde_json::{Value, json};

const NOW: i64 = 1_800_000_000;
const OVERLAP: i64 = 3600;

fn claims() -> Claims {
    let mut extra = serde_json::Map::new();
    extra.insert("scope".into(), json!("openid profile"));
    Claims {
        iss: "http://127.0.0.1:8080".into(),
        sub: "user-1".into(),
        aud: vec!["keel-api".into()],
        exp: NOW + 300,
        nbf: NOW,
        iat: NOW,
        jti: "token-1".into(),
        extra,
    }
}

fn expect() -> Expect {
    Expect {
        issuer: "http://127.0.0.1:8080".into(),
        audience: "keel-api".into(),
        leeway_secs: 0,
    }
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

fn parts(token: &str) -> Vec<String> {
    token.split('.').map(str::to_owned).collect()
}

fn kid_of(set: &KeySet) -> String {
    set.keys()
        .iter()
        .find(|k| k.state == KeyState::Active)
        .unwrap()
        .kid
        .clone()
}

#[test]
fn a_signed_token_verifies_with_its_claims() {
    let set = KeySet::generate(OVERLAP);
    let token = set.sign(&claims());
    let header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts(&token)[0]).unwrap()).unwrap();
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(header["typ"], "JWT");
    assert_eq!(header["kid"], kid_of(&set));
    let payload: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts(&token)[1]).unwrap()).unwrap();
    assert_eq!(payload["aud"], "keel-api", "one audience is a string");
    assert_eq!(
        set.verifier(NOW).verify(&token, &expect(), NOW),
        Ok(claims())
    );

    let mut many = claims();
    many.aud = vec!["other".into(), "keel-api".into()];
    let token = set.sign(&many);
    assert_eq!(
        set.verifier(NOW)
            .verify(&token, &expect(), NOW)
            .unwrap()
            .aud,
        many.aud
    );
}

#[test]
fn alg_none_is_refused() {
    let set = KeySet::generate(OVERLAP);
    let payload = b64(&serde_json::to_value(claims()).unwrap());
    let signed = set.sign(&claims());
    for header in [
        json!({"alg": "none", "typ": "JWT"}),
        json!({"alg": "none", "kid": kid_of(&set)}),
        json!({"alg": "None", "kid": kid_of(&set)}),
    ] {
        for signature in ["", parts(&signed)[2].as_str()] {
            let token = format!("{}.{payload}.{signature}", b64(&header));
            assert!(
                matches!(
                    set.verifier(NOW).verify(&token, &expect(), NOW),
                    Err(TokenError::Algorithm(_))
                ),
                "{header} with signature {signature:?}"
            );
        }
    }
}

#[test]
fn an_hmac_token_keyed_with_the_public_key_is_refused() {
    // The classic confusion: a verifier that takes `alg` from the token would check this HMAC
    // with the public key as the secret, and the attacker knows the public key.
    let set = KeySet::generate(OVERLAP);
    let jwks = set.jwks();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid_of(&set))
        .unwrap()
        .clone();
    let public = URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap();
    let mut forged = claims();
    forged.sub = "admin".into();
    let payload = b64(&serde_json::to_value(&forged).unwrap());
    for (alg, key) in [
        ("HS256", public.clone()),
        ("HS256", serde_json::to_vec(&jwk).unwrap()),
        ("HS512", public.clone()),
    ] {
        let header = b64(&json!({"alg": alg, "kid": kid_of(&set), "typ": "JWT"}));
        let signed = format!("{header}.{payload}");
        let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&key).unwrap();
        mac.update(signed.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        assert_eq!(
            set.verifier(NOW)
                .verify(&format!("{signed}.{signature}"), &expect(), NOW),
            Err(TokenError::Algorithm(alg.into()))
        );
    }
    // RS256 and ES256 headers are refused the same way, whatever the signature.
    for alg in ["RS256", "ES256", "PS256", "EdDSA "] {
        let header = b64(&json!({"alg": alg, "kid": kid_of(&set)}));
        let token = format!("{header}.{payload}.{}", parts(&set.sign(&forged))[2]);
        assert_eq!(
            set.verifier(NOW).verify(&token, &expect(), NOW),
            Err(TokenError::Algorithm(alg.into()))
        );
    }
}

#[test]
fn an_unknown_or_missing_kid_and_another_keys_signature_are_refused() {
    let set = KeySet::generate(OVERLAP);
    let stranger = KeySet::generate(OVERLAP);
    assert_eq!(
        set.verifier(NOW)
            .verify(&stranger.sign(&claims()), &expect(), NOW),
        Err(TokenError::UnknownKey)
    );
    let token = set.sign(&claims());
    let p = parts(&token);
    let no_kid = format!("{}.{}.{}", b64(&json!({"alg": "EdDSA"})), p[1], p[2]);
    assert_eq!(
        set.verifier(NOW).verify(&no_kid, &expect(), NOW),
        Err(TokenError::UnknownKey)
    );
    // A stranger's signature under our key's id.
    let header = b64(&json!({"alg": "EdDSA", "kid": kid_of(&set), "typ": "JWT"}));
    let theirs = parts(&stranger.sign(&claims()));
    let relabelled = format!("{header}.{}.{}", theirs[1], theirs[2]);
    assert_eq!(
        set.verifier(NOW).verify(&relabelled, &expect(), NOW),
        Err(TokenError::Signature)
    );
}

#[test]
fn expired_and_not_yet_valid_tokens_are_refused_with_the_leeway_applied() {
    let set = KeySet::generate(OVERLAP);
    let verifier = set.verifier(NOW);
    let token = set.sign(&claims());
    let exp = claims().exp;
    assert!(verifier.verify(&token, &expect(), exp - 1).is_ok());
    assert_eq!(
        verifier.verify(&token, &expect(), exp),
        Err(TokenError::Expired)
    );
    let lenient = Expect {
        leeway_secs: 30,
        ..expect()
    };
    assert!(verifier.verify(&token, &lenient, exp + 29).is_ok());
    assert_eq!(
        verifier.verify(&token, &lenient, exp + 30),
        Err(TokenError::Expired)
    );

    let mut later = claims();
    later.nbf = NOW + 60;
    let token = set.sign(&later);
    assert_eq!(
        verifier.verify(&token, &expect(), NOW),
        Err(TokenError::NotYetValid)
    );
    assert!(verifier.verify(&token, &expect(), NOW + 60).is_ok());
    assert!(verifier.verify(&token, &lenient, NOW + 30).is_ok());
}

#[test]
fn a_wrong_issuer_or_audience_is_refused() {
    let set = KeySet::generate(OVERLAP);
    let token = set.sign(&claims());
    let verifier = set.verifier(NOW);
    let other_issuer = Expect {
        issuer: "http://127.0.0.1:9090".into(),
        ..expect()
    };
    assert_eq!(
        verifier.verify(&token, &other_issuer, NOW),
        Err(TokenError::Issuer)
    );
    let other_audience = Expect {
        audience: "billing".into(),
        ..expect()
    };
    assert_eq!(
        verifier.verify(&token, &other_audience, NOW),
        Err(TokenError::Audience)
    );
}

#[test]
fn a_tampered_payload_or_signature_and_malformed_tokens_are_refused() {
    let set = KeySet::generate(OVERLAP);
    let verifier = set.verifier(NOW);
    let token = set.sign(&claims());
    let p = parts(&token);

    let mut forged = claims();
    forged.sub = "admin".into();
    let tampered = format!(
        "{}.{}.{}",
        p[0],
        b64(&serde_json::to_value(&forged).unwrap()),
        p[2]
    );
    assert_eq!(
        verifier.verify(&tampered, &expect(), NOW),
        Err(TokenError::Signature)
    );

    let mut signature = URL_SAFE_NO_PAD.decode(&p[2]).unwrap();
    signature[10] ^= 1;
    let flipped = format!("{}.{}.{}", p[0], p[1], URL_SAFE_NO_PAD.encode(&signature));
    assert_eq!(
        verifier.verify(&flipped, &expect(), NOW),
        Err(TokenError::Signature)
    );

    // A payload that is not JSON fails its signature first (the signature covers its bytes).
    assert_eq!(
        verifier.verify(&format!("{}.not-json.{}", p[0], p[2]), &expect(), NOW),
        Err(TokenError::Signature)
    );

    let crit = format!(
        "{}.{}.{}",
        b64(&json!({"alg": "EdDSA", "kid": kid_of(&set), "crit": ["exp"]})),
        p[1],
        p[2]
    );
    for malformed in [
        String::new(),
        "garbage".into(),
        format!("{}.{}", p[0], p[1]),
        format!("{token}.extra"),
        format!("{token}=="),
        format!("{}.{}.{}", p[0], p[1], &p[2][..20]),
        format!("a{token}"),
        "x".repeat(9000),
        crit,
    ] {
        let outcome = verifier.verify(&malformed, &expect(), NOW);
        assert_eq!(outcome, Err(TokenError::Malformed), "{malformed:.40}");
    }
}

#[test]
fn keys_rotate_with_the_next_key_published_first_and_the_old_one_accepted_for_the_overlap() {
    let mut set = KeySet::generate(OVERLAP);
    let before = set.sign(&claims());
    let next = set
        .keys()
        .iter()
        .find(|k| k.state == KeyState::Next)
        .unwrap()
        .kid
        .clone();
    assert!(set.jwks().to_string().contains(&next), "published ahead");

    set.rotate(NOW);
    assert_eq!(kid_of(&set), next, "the published next key signs now");
    let after = set.sign(&claims());
    let verifier = set.verifier(NOW + OVERLAP - 1);
    assert!(verifier.verify(&before, &expect(), NOW).is_ok());
    assert!(verifier.verify(&after, &expect(), NOW).is_ok());

    // Past the overlap, the retired key is gone from the JWKS and its tokens are refused.
    set.prune(NOW + OVERLAP);
    assert_eq!(set.keys().len(), 2);
    assert_eq!(
        set.verifier(NOW + OVERLAP).verify(&before, &expect(), NOW),
        Err(TokenError::UnknownKey)
    );
    assert!(
        Verifier::from_jwks(&set.jwks())
            .unwrap()
            .verify(&after, &expect(), NOW)
            .is_ok()
    );
}

#[test]
fn a_stored_key_set_loads_and_keeps_verifying_its_tokens() {
    let mut set = KeySet::generate(OVERLAP);
    set.rotate(NOW);
    let token = set.sign(&claims());
    let stored = set.store();
    let text = serde_json::to_string(&stored).unwrap();
    let loaded = KeySet::load(&serde_json::from_str::<Vec<_>>(&text).unwrap(), OVERLAP).unwrap();
    assert!(loaded.verifier(NOW).verify(&token, &expect(), NOW).is_ok());
    assert_eq!(kid_of(&loaded), kid_of(&set));
    assert!(
        !format!("{:?}", set.keys()).contains(&stored[0].secret),
        "Debug shows no secret"
    );

    let no_active: Vec<_> = stored
        .iter()
        .filter(|k| k.state != KeyState::Active)
        .cloned()
        .collect();
    assert!(KeySet::load(&no_active, OVERLAP).is_err());
    let mut broken = stored.clone();
    broken[0].secret = "not base64!".into();
    assert!(KeySet::load(&broken, OVERLAP).is_err());
}

#[test]
fn a_jwks_keeps_its_ed25519_signing_keys_and_skips_the_others() {
    let set = KeySet::generate(OVERLAP);
    let mut jwks = set.jwks();
    jwks["keys"].as_array_mut().unwrap().extend([
        json!({"kty": "RSA", "kid": "rsa-1", "n": "AQAB", "e": "AQAB"}),
        json!({"kty": "OKP", "crv": "X25519", "kid": "x-1", "x": "AAAA"}),
        json!({"kty": "OKP", "crv": "Ed25519", "kid": "enc-1", "use": "enc", "x": "AAAA"}),
    ]);
    let verifier = Verifier::from_jwks(&jwks).unwrap();
    assert!(
        verifier
            .verify(&set.sign(&claims()), &expect(), NOW)
            .is_ok()
    );
    let bad = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k", "x": "short"}]});
    assert_eq!(
        Verifier::from_jwks(&bad).unwrap_err(),
        TokenError::Malformed
    );
    assert_eq!(
        Verifier::from_jwks(&json!({"nokeys": []})).unwrap_err(),
        TokenError::Malformed
    );
}

/// RS256, as external providers sign ID tokens: an RSA key from a JWKS verifies its tokens,
/// and the key fixes the algorithm (no RS256 under an Ed25519 key, no EdDSA under an RSA key).
mod rs256 {
    use rsa::signature::{SignatureEncoding as _, Signer as _};
    use rsa::traits::PublicKeyParts as _;

    use super::*;

    fn rsa_key(bits: usize) -> rsa::PrivateKey {
        rsa::PrivateKey::new(&mut getrandom::SysRng, bits).unwrap()
    }

    fn jwk(key: &rsa::PrivateKey, kid: &str) -> Value {
        let public = key.to_public_key();
        json!({
            "kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
            "n": URL_SAFE_NO_PAD.encode(public.n_bytes()),
            "e": URL_SAFE_NO_PAD.encode(public.e_bytes()),
        })
    }

    fn signed(key: &rsa::PrivateKey, header: &Value, claims: &Value) -> String {
        let signer = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(key.clone());
        let input = format!("{}.{}", b64(header), b64(claims));
        let signature = signer.sign(input.as_bytes()).to_vec();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    #[test]
    fn rsa_keys_verify_their_tokens_and_fix_the_algorithm() {
        let key = rsa_key(2048);
        let set = KeySet::generate(OVERLAP);
        let ed_kid = kid_of(&set);
        let mut jwks = set.jwks();
        jwks["keys"]
            .as_array_mut()
            .unwrap()
            .push(jwk(&key, "rsa-1"));
        let verifier = Verifier::from_jwks(&jwks).unwrap();
        let claims = serde_json::to_value(super::claims()).unwrap();
        let header = json!({"alg": "RS256", "typ": "JWT", "kid": "rsa-1"});

        let token = signed(&key, &header, &claims);
        let verified = verifier.verify(&token, &expect(), NOW).unwrap();
        assert_eq!(verified.sub, "user-1");

        // Tampered payload.
        let mut forged = super::claims();
        forged.sub = "admin".into();
        let p = parts(&token);
        let tampered = format!(
            "{}.{}.{}",
            p[0],
            b64(&serde_json::to_value(forged).unwrap()),
            p[2]
        );
        assert_eq!(
            verifier.verify(&tampered, &expect(), NOW).unwrap_err(),
            TokenError::Signature
        );

        // The header cannot pick another algorithm than its key's.
        let as_eddsa = json!({"alg": "EdDSA", "kid": "rsa-1"});
        assert!(matches!(
            verifier.verify(&signed(&key, &as_eddsa, &claims), &expect(), NOW),
            Err(TokenError::Algorithm(_))
        ));
        let under_ed_kid = json!({"alg": "RS256", "kid": ed_kid});
        assert!(matches!(
            verifier.verify(&signed(&key, &under_ed_kid, &claims), &expect(), NOW),
            Err(TokenError::Algorithm(_))
        ));
        // Another RSA key's signature under this kid.
        let other = rsa_key(2048);
        assert_eq!(
            verifier
                .verify(&signed(&other, &header, &claims), &expect(), NOW)
                .unwrap_err(),
            TokenError::Signature
        );
        // keel's own access tokens (Ed25519) still verify beside it.
        let own = set.sign(&super::claims());
        assert!(verifier.verify(&own, &expect(), NOW).is_ok());
    }

    #[test]
    fn short_rsa_keys_and_keys_for_other_uses_verify_nothing() {
        let weak = rsa_key(1024);
        let verifier = Verifier::from_jwks(&json!({"keys": [jwk(&weak, "weak")]})).unwrap();
        let header = json!({"alg": "RS256", "kid": "weak"});
        let claims = serde_json::to_value(super::claims()).unwrap();
        assert_eq!(
            verifier
                .verify(&signed(&weak, &header, &claims), &expect(), NOW)
                .unwrap_err(),
            TokenError::UnknownKey,
            "a 1024-bit key is skipped"
        );
        // Keys for encryption, or of other algorithms, are skipped too.
        let strong = rsa_key(2048);
        let mut enc = jwk(&strong, "enc");
        enc["use"] = json!("enc");
        let mut ps = jwk(&strong, "ps");
        ps["alg"] = json!("PS256");
        let verifier = Verifier::from_jwks(&json!({"keys": [enc, ps]})).unwrap();
        let header = json!({"alg": "RS256", "kid": "enc"});
        assert_eq!(
            verifier
                .verify(&signed(&strong, &header, &claims), &expect(), NOW)
                .unwrap_err(),
            TokenError::UnknownKey
        );
    }
}

/// ES256, as several large providers sign ID tokens: a P-256 key from a JWKS verifies its
/// tokens (the JWS `r || s` signature), and the key fixes the algorithm.
mod es256 {
    use p256::ecdsa::signature::Signer as _;

    use super::*;

    fn ec_key(seed: u8) -> p256::ecdsa::SigningKey {
        p256::ecdsa::SigningKey::from_slice(&[seed; 32]).unwrap()
    }

    fn jwk(key: &p256::ecdsa::SigningKey, kid: &str) -> Value {
        let point = key.verifying_key().to_sec1_point(false);
        let bytes = point.as_bytes();
        json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
            "x": URL_SAFE_NO_PAD.encode(&bytes[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&bytes[33..65]),
        })
    }

    fn signed(key: &p256::ecdsa::SigningKey, header: &Value, claims: &Value) -> String {
        let input = format!("{}.{}", b64(header), b64(claims));
        let signature: p256::ecdsa::Signature = key.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
    }

    #[test]
    fn p256_keys_verify_their_es256_tokens_and_fix_the_algorithm() {
        let key = ec_key(7);
        let set = KeySet::generate(OVERLAP);
        let ed_kid = kid_of(&set);
        let mut jwks = set.jwks();
        jwks["keys"].as_array_mut().unwrap().push(jwk(&key, "ec-1"));
        let verifier = Verifier::from_jwks(&jwks).unwrap();
        let claims = serde_json::to_value(super::claims()).unwrap();
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": "ec-1"});

        let token = signed(&key, &header, &claims);
        assert_eq!(
            verifier.verify(&token, &expect(), NOW).unwrap().sub,
            "user-1"
        );

        let mut forged = super::claims();
        forged.sub = "admin".into();
        let p = parts(&token);
        let tampered = format!(
            "{}.{}.{}",
            p[0],
            b64(&serde_json::to_value(forged).unwrap()),
            p[2]
        );
        assert_eq!(
            verifier.verify(&tampered, &expect(), NOW).unwrap_err(),
            TokenError::Signature
        );
        // Another P-256 key's signature under this kid.
        assert_eq!(
            verifier
                .verify(&signed(&ec_key(9), &header, &claims), &expect(), NOW)
                .unwrap_err(),
            TokenError::Signature
        );
        // The header cannot pick another algorithm than its key's.
        for (alg, kid) in [
            ("EdDSA", "ec-1"),
            ("RS256", "ec-1"),
            ("ES256", ed_kid.as_str()),
        ] {
            let header = json!({"alg": alg, "kid": kid});
            assert!(matches!(
                verifier.verify(&signed(&key, &header, &claims), &expect(), NOW),
                Err(TokenError::Algorithm(_))
            ));
        }
        // A point off the curve or of the wrong length is a malformed JWKS.
        let mut off = jwk(&key, "off");
        off["y"] = json!(URL_SAFE_NO_PAD.encode([1u8; 32]));
        assert_eq!(
            Verifier::from_jwks(&json!({"keys": [off]})).unwrap_err(),
            TokenError::Malformed
        );
        let mut short = jwk(&key, "short");
        short["x"] = json!("AAAA");
        assert_eq!(
            Verifier::from_jwks(&json!({"keys": [short]})).unwrap_err(),
            TokenError::Malformed
        );
    }
}
