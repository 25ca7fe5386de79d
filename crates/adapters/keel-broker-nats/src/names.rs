//! How keel's names become JetStream names: group and pattern tokens, stream and subject names,
//! and the key → partition hash. Every process sharing a namespace must compute the same names,
//! so nothing here may depend on the build (no `std` hasher, whose algorithm may change): the
//! hash is the domain's FNV-1a ([`keel_domain::messaging::queue::fnv1a`]), shared with the RabbitMQ broker.

use keel_domain::messaging::queue::{fnv1a, partition_of};

/// Longest token kept readable; longer ones are cut and suffixed with a hash of the whole name, so
/// stream names stay well below file-name limits (the server stores a stream in a directory of
/// that name).
const MAX_TOKEN: usize = 64;

/// A name (group or binding pattern) as one subject token that is also legal in a stream name:
/// `[A-Za-z0-9-]` stay; `_`, `.`, `*`, `#` become `_5F`, `_2E`, `_2A`, `_23` (so `a.b` and `a_b`
/// stay distinct: `_` only ever starts an escape). Past [`MAX_TOKEN`] characters the token is
/// its first 40 characters, `_h` and the 64-bit FNV-1a hash of the name in hex; `_h` never occurs
/// in an escaped name, so a hashed token cannot equal a plain one.
pub(crate) fn token(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            'A'..='Z' | 'a'..='z' | '0'..='9' | '-' => out.push(c),
            other => {
                // Only the checked name characters reach here; anything else is escaped by its
                // UTF-8 bytes all the same, so the mapping stays injective.
                let mut buf = [0u8; 4];
                for b in other.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("_{b:02X}"));
                }
            }
        }
    }
    if out.len() <= MAX_TOKEN {
        return out;
    }
    // The token is ASCII; cutting through an escape is harmless, the hash decides.
    format!("{}_h{:016x}", &out[..40], fnv1a(name.as_bytes()))
}

/// Which of a group's consumers a message goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Slot {
    /// Keyed messages: partition `hash(key) mod K`, consumed one at a time.
    Partition(u16),
    /// Messages without a key: consumed in parallel.
    Unkeyed,
}

impl Slot {
    pub(crate) fn of(key: Option<&str>, partitions: u16) -> Slot {
        match key {
            Some(key) => Slot::Partition(partition_of(key, partitions)),
            None => Slot::Unkeyed,
        }
    }

    /// The subject's last token and the durable consumer's name.
    pub(crate) fn name(self) -> String {
        match self {
            Slot::Partition(i) => format!("p{i}"),
            Slot::Unkeyed => "u".to_owned(),
        }
    }
}

/// The names of one group's stream.
#[derive(Debug, Clone)]
pub(crate) struct GroupNames {
    /// `<ns>_q_<token>`.
    pub(crate) stream: String,
    /// `<ns>.q.<token>`; the stream holds `<prefix>.*`, one subject per slot.
    pub(crate) subject_prefix: String,
    /// The group's name as one subject token.
    pub(crate) token: String,
}

impl GroupNames {
    pub(crate) fn new(namespace: &str, group: &str) -> Self {
        let token = token(group);
        Self {
            stream: format!("{namespace}_q_{token}"),
            subject_prefix: format!("{namespace}.q.{token}"),
            token,
        }
    }

    pub(crate) fn subject(&self, slot: Slot) -> String {
        format!("{}.{}", self.subject_prefix, slot.name())
    }
}

/// The stream that holds the bindings of a namespace: `<ns>_bindings`.
pub(crate) fn bindings_stream(namespace: &str) -> String {
    format!("{namespace}_bindings")
}

/// All binding subjects of a namespace: `<ns>.bindings.>`.
pub(crate) fn bindings_filter(namespace: &str) -> String {
    format!("{namespace}.bindings.>")
}

/// The subject of one binding: `<ns>.bindings.<group token>.<pattern token>`; one message per
/// subject is kept, so binding twice leaves one copy.
pub(crate) fn binding_subject(namespace: &str, group: &str, pattern: &str) -> String {
    format!("{namespace}.bindings.{}.{}", token(group), token(pattern))
}

/// The stream of partition ownership records (see `own`).
pub(crate) fn owners_stream(namespace: &str) -> String {
    format!("{namespace}_owners")
}

pub(crate) fn owners_filter(namespace: &str) -> String {
    format!("{namespace}.own.>")
}

/// The subject of one partition's ownership record.
pub(crate) fn owner_subject(namespace: &str, group: &GroupNames, partition: u16) -> String {
    format!("{namespace}.own.{}.p{partition}", group.token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_legal_and_distinct() {
        assert_eq!(token("audit"), "audit");
        assert_eq!(token("a.b"), "a_2Eb");
        assert_eq!(token("a_b"), "a_5Fb");
        assert_eq!(token("user.#"), "user_2E_23");
        assert_eq!(token("*.x"), "_2A_2Ex");
        let long = "g".repeat(200);
        let t = token(&long);
        assert!(t.len() <= MAX_TOKEN, "{t}");
        assert_ne!(t, token(&"g".repeat(199)));
        for t in [token("a.b-c_d"), t] {
            assert!(
                t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            );
        }
    }

    #[test]
    fn the_partition_of_a_key_never_changes() {
        // Fixed values: processes built at different times must agree.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(Slot::of(Some("a"), 16), Slot::Partition(0xc));
        assert_eq!(Slot::of(None, 16), Slot::Unkeyed);
        let spread: std::collections::HashSet<_> = (0..100)
            .map(|n| Slot::of(Some(&format!("user-{n}")), 8))
            .collect();
        assert_eq!(spread.len(), 8, "keys spread over every partition");
    }

    #[test]
    fn group_names() {
        let names = GroupNames::new("ns", "fan.audit");
        assert_eq!(names.stream, "ns_q_fan_2Eaudit");
        assert_eq!(names.subject(Slot::Partition(3)), "ns.q.fan_2Eaudit.p3");
        assert_eq!(names.subject(Slot::Unkeyed), "ns.q.fan_2Eaudit.u");
        assert_eq!(
            binding_subject("ns", "g", "user.*"),
            "ns.bindings.g.user_2E_2A"
        );
    }
}
