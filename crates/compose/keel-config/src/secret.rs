//! Secrets in configuration: held as [`secrecy::SecretString`], printed only redacted.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A configuration value that may carry a password (database and Redis URLs). `Debug` and
/// `Serialize` show it with any password replaced by `***`, so `keel config` and logs never leak it.
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(SecretString::from(value.into()))
    }

    /// The real value, for handing to a driver. Never log what this returns.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// The value with the password of a `scheme://user:password@host` URL masked.
    pub fn redacted(&self) -> String {
        redact_url(self.expose())
    }
}

/// Masks the password part of a URL's userinfo, leaving everything else readable.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
        None => url.to_owned(),
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_masked_and_the_rest_kept() {
        assert_eq!(
            redact_url("postgres://u:hunter2@db:5432/app"),
            "postgres://u:***@db:5432/app"
        );
        assert_eq!(redact_url("redis://:pw@cache/0"), "redis://:***@cache/0");
        assert_eq!(
            redact_url("mysql://root@127.0.0.1/test"),
            "mysql://root@127.0.0.1/test"
        );
        assert_eq!(
            redact_url("sqlite://keel-data/keel.db"),
            "sqlite://keel-data/keel.db"
        );
        let secret = Secret::new("postgres://u:p@a@h/db");
        assert!(!format!("{secret:?}").contains("p@a"));
    }
}
