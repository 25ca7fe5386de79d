//! The user resource: the seed's cached-read example made concrete.
//!
//! Inputs are parsed into newtypes once, at the edge; everything past the parse holds values that
//! are valid by construction.

pub mod repo;

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Longest accepted display name, in characters.
pub const NAME_MAX_CHARS: usize = 100;
/// Longest accepted email address (RFC 5321 path limit).
pub const EMAIL_MAX_BYTES: usize = 254;

/// A caller's input that does not describe a valid value; `field` names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub field: &'static str,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// A user id. Ids are UUIDv7, made by keel rather than the database, so that a write-back create
/// can be acknowledged before its row exists, and so that ids sort by creation time (the cursor of
/// `GET /users` relies on that).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(Uuid);

impl UserId {
    /// A fresh, time-ordered id.
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for UserId {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::try_parse(s)
            .map(Self)
            .map_err(|_| ValidationError::new("id", "must be a UUID"))
    }
}

/// A display name: trimmed, 1 to [`NAME_MAX_CHARS`] characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserName(String);

impl UserName {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let name = raw.trim();
        if name.is_empty() {
            return Err(ValidationError::new("name", "must not be empty"));
        }
        if name.chars().count() > NAME_MAX_CHARS {
            return Err(ValidationError::new(
                "name",
                format!("must be at most {NAME_MAX_CHARS} characters"),
            ));
        }
        if name.chars().any(char::is_control) {
            return Err(ValidationError::new(
                "name",
                "must not contain control characters",
            ));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A name as a store keeps it sealed (encrypted at rest): [`SEALED_NAME_MARK`] and the
    /// sealed text. `None` for anything else, so no display name can pass for one (a display
    /// name has no control character). Stores hand these out only to the layer that opens them.
    pub fn sealed(stored: &str) -> Option<Self> {
        stored
            .starts_with(SEALED_NAME_MARK)
            .then(|| Self(stored.to_owned()))
    }

    /// Whether this is a sealed name (see [`Self::sealed`]).
    pub fn is_sealed(&self) -> bool {
        self.0.starts_with(SEALED_NAME_MARK)
    }
}

/// The first character of a sealed name: a control character, which display names cannot have.
pub const SEALED_NAME_MARK: char = '\u{1}';

/// An email address in one canonical form, so that two spellings of the same mailbox are one
/// address (and one account) on every backend:
/// - the whole address in Unicode NFKC, lower-cased (and NFKC again, since lower-casing can undo
///   it): full-width `ａｄａ` is `ada`, a decomposed `e\u{301}` is `é`, the Kelvin sign is `k`;
/// - the domain through IDNA (UTS 46) and stored as Unicode labels: `ｅｘａｍｐｌｅ.com`,
///   `EXAMPLE.com` and `example.com` are one domain, and `xn--caf-dma.fr` is `café.fr`.
///
/// The domain is kept in Unicode rather than as an `xn--` A-label because the local part is
/// Unicode anyway (such an address needs SMTPUTF8, which carries U-labels), and because a person
/// reads back the address they typed. Both forms are canonical; what matters is that there is
/// one, computed from the A-label, so that every spelling maps to it.
///
/// The shape check is deliberately the practical one (one `@`, a non-empty local part, a dotted
/// domain of valid labels, no spaces), not RFC 5322's full grammar, which accepts addresses no
/// mail system delivers to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserEmail(String);

impl UserEmail {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        use unicode_normalization::UnicodeNormalization as _;

        let invalid =
            || ValidationError::new("email", "must be an email address like name@example.com");
        let too_long =
            || ValidationError::new("email", format!("must be at most {EMAIL_MAX_BYTES} bytes"));
        // Bounded before the normalisation, whose output may be longer than its input.
        if raw.len() > 4 * EMAIL_MAX_BYTES {
            return Err(too_long());
        }
        let folded: String = raw.trim().nfkc().collect::<String>().to_lowercase();
        let email: String = folded.nfkc().collect();
        if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid());
        }
        let (local, domain) = email.split_once('@').ok_or_else(invalid)?;
        if local.is_empty() || local.len() > 64 || domain.contains('@') {
            return Err(invalid());
        }
        let domain = canonical_domain(domain).ok_or_else(invalid)?;
        let email = format!("{local}@{domain}");
        if email.len() > EMAIL_MAX_BYTES {
            return Err(too_long());
        }
        Ok(Self(email))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The domain in Unicode labels, from its IDNA A-labels, which must be a dotted name of valid
/// labels; `None` when it is not one.
fn canonical_domain(domain: &str) -> Option<String> {
    use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};

    let uts46 = Uts46::new();
    let ascii = uts46
        .to_ascii(
            domain.as_bytes(),
            AsciiDenyList::STD3,
            Hyphens::CheckFirstLast,
            DnsLength::Verify,
        )
        .ok()?;
    let labels: Vec<&str> = ascii.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if labels.len() < 2 || !labels.iter().all(label_ok) {
        return None;
    }
    let (unicode, result) = uts46.to_unicode(
        ascii.as_bytes(),
        AsciiDenyList::STD3,
        Hyphens::CheckFirstLast,
    );
    result.ok()?;
    Some(unicode.into_owned())
}

/// A stored account whose address is, once normalised by [`UserEmail::parse`], the address of
/// another account (both were made before keel normalised addresses). The `holder` keeps the
/// canonical address; `other` keeps its stored spelling until an operator resolves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailCollision {
    /// The address both spellings normalise to.
    pub canonical: UserEmail,
    /// The account stored with `canonical` (the older one, when neither was canonical).
    pub holder: UserId,
    /// The account left with its stored spelling.
    pub other: UserId,
    /// `other`'s stored spelling.
    pub stored: String,
}

/// A stored user. `version` starts at 1 and grows by one on every update; caches use it to refuse
/// a value older than one they have already seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct User {
    #[schema(value_type = String, format = Uuid)]
    pub id: UserId,
    #[schema(value_type = String, max_length = 100)]
    pub name: UserName,
    #[schema(value_type = String, format = Email)]
    pub email: UserEmail,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

impl User {
    /// A new user as it is first stored: version 1, both timestamps now.
    pub fn create(new: NewUser, now: DateTime<Utc>) -> Self {
        Self {
            id: UserId::generate(),
            name: new.name,
            email: new.email,
            created_at: now,
            updated_at: now,
            version: 1,
        }
    }

    /// This user with `patch` applied, one version later.
    pub fn patched(&self, patch: &UserPatch, now: DateTime<Utc>) -> Self {
        Self {
            id: self.id,
            name: patch.name.clone().unwrap_or_else(|| self.name.clone()),
            email: patch.email.clone().unwrap_or_else(|| self.email.clone()),
            created_at: self.created_at,
            updated_at: now,
            version: self.version + 1,
        }
    }
}

/// A validated request to create a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    pub name: UserName,
    pub email: UserEmail,
}

/// A validated change to a user; absent fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserPatch {
    pub name: Option<UserName>,
    pub email: Option<UserEmail>,
}

impl UserPatch {
    pub fn is_empty(&self) -> bool {
        self.name.is_none() && self.email.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_emails_are_accepted_and_lowercased() {
        for raw in [
            "a@b.co",
            "First.Last+tag@Example.COM",
            " x_y@sub.domain.org ",
        ] {
            let email = UserEmail::parse(raw).unwrap();
            assert_eq!(email.as_str(), raw.trim().to_lowercase());
        }
    }

    #[test]
    fn spellings_of_one_mailbox_parse_to_one_address() {
        for (spelling, canonical) in [
            ("ａｄａ@example.com", "ada@example.com"),
            ("ada@ｅｘａｍｐｌｅ.com", "ada@example.com"),
            ("ａｄａ＠ｅｘａｍｐｌｅ．ｃｏｍ", "ada@example.com"),
            ("ADA@EXAMPLE.COM", "ada@example.com"),
            ("\u{212A}im@example.com", "kim@example.com"),
            ("jose\u{301}@example.com", "jos\u{e9}@example.com"),
            ("JOSE\u{301}@example.com", "jos\u{e9}@example.com"),
            ("jos\u{e9}@example.com", "jos\u{e9}@example.com"),
            ("ada@xn--caf-dma.fr", "ada@caf\u{e9}.fr"),
            ("ada@CAFE\u{301}.fr", "ada@caf\u{e9}.fr"),
            ("ada@b\u{fc}cher.DE", "ada@b\u{fc}cher.de"),
            ("\u{fb01}le@example.com", "file@example.com"),
            ("  ada@example.com\t", "ada@example.com"),
        ] {
            let parsed = UserEmail::parse(spelling).unwrap_or_else(|e| panic!("{spelling:?}: {e}"));
            assert_eq!(parsed.as_str(), canonical, "{spelling:?}");
        }
    }

    #[test]
    fn the_canonical_form_is_a_fixed_point_and_different_mailboxes_stay_apart() {
        // Stores parse what they read back: the stored form must parse to itself.
        let inputs = [
            "a@b.co",
            "First.Last+tag@Example.COM",
            "ａｄａ@ｅｘａｍｐｌｅ.com",
            "jose\u{301}@xn--caf-dma.fr",
            "\u{212A}@example.com",
            "\u{3b1}\u{3b2}@\u{43f}\u{440}\u{438}\u{43c}\u{435}\u{440}.\u{440}\u{444}",
            "x_y@sub.domain.org",
        ];
        let mut seen = std::collections::HashSet::new();
        for raw in inputs {
            let once = UserEmail::parse(raw).unwrap();
            let twice = UserEmail::parse(once.as_str()).unwrap();
            assert_eq!(once, twice, "{raw:?}");
            assert!(seen.insert(once.clone()), "{raw:?} collided");
        }
        for (a, b) in [
            ("ada@example.com", "ad\u{e1}@example.com"),
            ("jose@example.com", "jos\u{e9}@example.com"),
            ("ada@example.com", "ada@example.co"),
            ("ada@cafe.fr", "ada@caf\u{e9}.fr"),
        ] {
            assert_ne!(
                UserEmail::parse(a).unwrap(),
                UserEmail::parse(b).unwrap(),
                "{a:?} and {b:?}"
            );
        }
    }

    #[test]
    fn malformed_emails_are_rejected_with_the_field_named() {
        let too_long = format!("{}@example.com", "a".repeat(250));
        for raw in [
            "",
            "plain",
            "@example.com",
            "a@",
            "a@b",
            "a@@b.com",
            "a b@c.com",
            "a@-b.com",
            "a@b..com",
            "a@b_c.com",
            "a@exa mple.com",
            "a@exa\u{3000}mple.com",
            "a\u{ff20}b\u{ff20}c.com",
            "a@b.c\u{200b}om\u{1}",
            "a@xn--zz.com",
            too_long.as_str(),
        ] {
            let err = UserEmail::parse(raw).unwrap_err();
            assert_eq!(err.field, "email", "{raw:?} was accepted");
        }
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(UserName::parse("  Ada  ").unwrap().as_str(), "Ada");
        assert!(UserName::parse("   ").is_err());
        assert!(UserName::parse(&"é".repeat(NAME_MAX_CHARS)).is_ok());
        assert!(UserName::parse(&"é".repeat(NAME_MAX_CHARS + 1)).is_err());
        assert!(UserName::parse("a\u{0}b").is_err());
    }

    #[test]
    fn generated_ids_sort_by_creation_and_round_trip_through_text() {
        let first = UserId::generate();
        let second = UserId::generate();
        assert!(first < second);
        assert_eq!(first.to_string().parse::<UserId>().unwrap(), first);
        assert_eq!("nope".parse::<UserId>().unwrap_err().field, "id");
    }

    #[test]
    fn patching_bumps_the_version_and_keeps_absent_fields() {
        let now = Utc::now();
        let user = User::create(
            NewUser {
                name: UserName::parse("Ada").unwrap(),
                email: UserEmail::parse("ada@x.io").unwrap(),
            },
            now,
        );
        let patch = UserPatch {
            name: Some(UserName::parse("Grace").unwrap()),
            email: None,
        };
        let next = user.patched(&patch, now);
        assert_eq!(next.version, 2);
        assert_eq!(next.name.as_str(), "Grace");
        assert_eq!(next.email, user.email);
        assert_eq!(next.id, user.id);
    }
}
