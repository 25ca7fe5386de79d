//! The `Authorization` header's `<scheme> <credentials>` (RFC 7235 §2.1), read one way by every
//! part of keel that reads it: the API guard, `/auth/*`, the OpenID Connect token and userinfo
//! endpoints and the gateway's edge JWT check.

/// The credentials of an `Authorization` header value if its scheme is `scheme`, compared
/// case-insensitively (`Bearer`, `bearer` and `BEARER` are one scheme); `None` for another
/// scheme or no credentials. Whitespace around the credentials is not part of them.
pub fn credentials<'v>(value: &'v str, scheme: &str) -> Option<&'v str> {
    let (given, rest) = value.trim().split_once([' ', '\t'])?;
    let rest = rest.trim();
    (given.eq_ignore_ascii_case(scheme) && !rest.is_empty()).then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::credentials;

    #[test]
    fn the_scheme_is_case_insensitive_and_the_credentials_are_trimmed() {
        for value in ["Bearer abc", "bearer abc", "BEARER abc", "  bEaReR   abc  "] {
            assert_eq!(credentials(value, "Bearer"), Some("abc"), "{value}");
        }
        assert_eq!(
            credentials("Basic dXNlcjpwdw==", "basic"),
            Some("dXNlcjpwdw==")
        );
        for value in ["Bearer", "Bearer ", "Basic abc", "Bearerabc", "", "abc"] {
            assert_eq!(credentials(value, "Bearer"), None, "{value}");
        }
    }
}
