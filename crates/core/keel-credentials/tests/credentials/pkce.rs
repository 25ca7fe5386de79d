//! PKCE (RFC 7636): the `S256` challenge of the RFC's example, and every other method or shape
//! refused.

use keel_credentials::pkce::{self, PkceError};

#[test]
fn pkce_s256_matches_rfc_7636s_example_and_refuses_the_rest() {
    // RFC 7636 Appendix B.
    let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
    assert_eq!(pkce::challenge_of(verifier), challenge);
    assert_eq!(pkce::check_challenge(challenge, "S256"), Ok(()));
    assert_eq!(pkce::verify(verifier, challenge), Ok(()));

    assert_eq!(
        pkce::check_challenge(challenge, "plain"),
        Err(PkceError::Method)
    );
    assert_eq!(
        pkce::check_challenge("short", "S256"),
        Err(PkceError::Challenge)
    );
    let other = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXK";
    assert_eq!(pkce::verify(other, challenge), Err(PkceError::Mismatch));
    for bad in [
        "too-short",
        &"a".repeat(129),
        &format!("{}!", &verifier[..43]),
    ] {
        assert_eq!(pkce::verify(bad, challenge), Err(PkceError::Verifier));
    }
}
