//! IP allow and deny lists checked against the client address before any other work.
//!
//! [`Cidr`] lives in keel-http: the API's trusted-proxy list uses it too.

use std::net::IpAddr;

pub use keel_http::Cidr;

/// Allow and deny lists of networks.
///
/// Deny wins over allow, so a broad allow can carve out exceptions; an empty allow list admits
/// everyone not denied, a non-empty one admits only its members. The lists are scanned linearly:
/// they are short in practice, and a scan of a few entries beats any tree.
#[derive(Debug, Clone, Default)]
pub struct IpAcl {
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
}

impl IpAcl {
    pub fn new(allow: &[String], deny: &[String]) -> Result<Self, String> {
        let parse_all = |list: &[String], name: &str| {
            list.iter()
                .map(|entry| Cidr::parse(entry).map_err(|err| format!("{name} entry {err}")))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Self {
            allow: parse_all(allow, "allow")?,
            deny: parse_all(deny, "deny")?,
        })
    }

    pub fn permits(&self, ip: IpAddr) -> bool {
        if self.deny.iter().any(|cidr| cidr.contains(ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|cidr| cidr.contains(ip))
    }

    /// True when the lists admit everyone, so callers can skip the check.
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn ipv4_networks_parse_and_match() {
        let cidr = Cidr::parse("10.0.0.0/8").unwrap();
        assert_eq!(cidr.network(), ip("10.0.0.0"));
        assert_eq!(cidr.prefix(), 8);
        assert!(cidr.contains(ip("10.0.0.0")));
        assert!(cidr.contains(ip("10.255.255.255")));
        assert!(!cidr.contains(ip("11.0.0.0")));
        assert!(!cidr.contains(ip("9.255.255.255")));
        let odd = Cidr::parse("192.168.4.0/22").unwrap();
        assert!(odd.contains(ip("192.168.7.255")));
        assert!(!odd.contains(ip("192.168.8.0")));
        assert!(!odd.contains(ip("192.168.3.255")));
    }

    #[test]
    fn ipv6_networks_parse_and_match() {
        let cidr = Cidr::parse("2001:db8::/32").unwrap();
        assert!(cidr.contains(ip("2001:db8::1")));
        assert!(cidr.contains(ip("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff")));
        assert!(!cidr.contains(ip("2001:db9::")));
        let host = Cidr::parse("::1/128").unwrap();
        assert!(host.contains(ip("::1")));
        assert!(!host.contains(ip("::2")));
        let odd = Cidr::parse("fe80::/10").unwrap();
        assert!(odd.contains(ip("febf::1")));
        assert!(!odd.contains(ip("fec0::1")));
    }

    #[test]
    fn bare_addresses_are_single_hosts() {
        let v4 = Cidr::parse("203.0.113.7").unwrap();
        assert_eq!(v4.prefix(), 32);
        assert!(v4.contains(ip("203.0.113.7")));
        assert!(!v4.contains(ip("203.0.113.8")));
        let v6 = Cidr::parse("2001:db8::7").unwrap();
        assert_eq!(v6.prefix(), 128);
        assert!(v6.contains(ip("2001:db8::7")));
        assert!(!v6.contains(ip("2001:db8::8")));
    }

    #[test]
    fn zero_prefixes_match_their_whole_family_only() {
        let all_v4 = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all_v4.contains(ip("1.2.3.4")));
        assert!(all_v4.contains(ip("255.255.255.255")));
        assert!(!all_v4.contains(ip("2001:db8::1")));
        let all_v6 = Cidr::parse("::/0").unwrap();
        assert!(all_v6.contains(ip("2001:db8::1")));
        assert!(!all_v6.contains(ip("1.2.3.4")));
    }

    #[test]
    fn ipv4_mapped_addresses_count_as_ipv4() {
        let cidr = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(cidr.contains(ip("::ffff:10.1.2.3")));
        assert!(!cidr.contains(ip("::ffff:11.1.2.3")));
        let mapped = Cidr::parse("::ffff:10.0.0.0/104").unwrap();
        assert_eq!(mapped, cidr);
        assert_eq!(mapped.to_string(), "10.0.0.0/8");
        assert!(mapped.contains(ip("10.9.9.9")));
        assert_eq!(
            Cidr::parse("::ffff:1.2.3.4").unwrap(),
            Cidr::parse("1.2.3.4").unwrap()
        );
    }

    #[test]
    fn host_bits_set_are_an_error_naming_the_network() {
        let err = Cidr::parse("10.0.0.1/8").unwrap_err();
        assert!(err.contains("\"10.0.0.1/8\""), "{err}");
        assert!(err.contains("10.0.0.0/8"), "{err}");
        let err = Cidr::parse("2001:db8::1/32").unwrap_err();
        assert!(err.contains("2001:db8::/32"), "{err}");
    }

    #[test]
    fn bad_entries_are_rejected_by_name() {
        for entry in [
            "",
            "/8",
            "10.0.0.0/",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/+8",
            "10.0.0.0/-1",
            "10.0.0.0/ 8",
            "10.0.0.0/8/8",
            "10.0.0.0/0008",
            "10.0.0",
            "example.com",
            "10.0.0.0/abc",
        ] {
            let err = Cidr::parse(entry).unwrap_err();
            assert!(
                err.contains(&format!("{:?}", entry.trim())),
                "{entry}: {err}"
            );
        }
        assert!(
            Cidr::parse("10.0.0.0/33")
                .unwrap_err()
                .contains("prefix length")
        );
    }

    #[test]
    fn surrounding_whitespace_is_ignored() {
        assert_eq!(
            Cidr::parse(" 10.0.0.0/8 ").unwrap().to_string(),
            "10.0.0.0/8"
        );
    }

    #[test]
    fn cidrs_display_and_parse_back() {
        for entry in [
            "10.0.0.0/8",
            "1.2.3.4/32",
            "::/0",
            "2001:db8::/32",
            "::1/128",
        ] {
            let cidr: Cidr = entry.parse().unwrap();
            assert_eq!(cidr.to_string(), entry);
        }
    }

    #[test]
    fn an_empty_acl_permits_everyone() {
        let acl = IpAcl::new(&[], &[]).unwrap();
        assert!(acl.is_empty());
        assert!(acl.permits(ip("1.2.3.4")));
        assert!(acl.permits(ip("::1")));
    }

    #[test]
    fn a_non_empty_allow_list_must_match() {
        let acl = IpAcl::new(&strings(&["10.0.0.0/8", "::1"]), &[]).unwrap();
        assert!(!acl.is_empty());
        assert!(acl.permits(ip("10.1.1.1")));
        assert!(acl.permits(ip("::1")));
        assert!(acl.permits(ip("::ffff:10.1.1.1")));
        assert!(!acl.permits(ip("192.168.1.1")));
        assert!(!acl.permits(ip("::2")));
    }

    #[test]
    fn deny_alone_blocks_only_its_members() {
        let acl = IpAcl::new(&[], &strings(&["192.0.2.0/24"])).unwrap();
        assert!(!acl.is_empty());
        assert!(!acl.permits(ip("192.0.2.9")));
        assert!(!acl.permits(ip("::ffff:192.0.2.9")));
        assert!(acl.permits(ip("192.0.3.9")));
    }

    #[test]
    fn deny_wins_over_allow() {
        let acl = IpAcl::new(&strings(&["10.0.0.0/8"]), &strings(&["10.0.0.0/16"])).unwrap();
        assert!(!acl.permits(ip("10.0.5.5")));
        assert!(acl.permits(ip("10.1.5.5")));
        let both = IpAcl::new(&strings(&["1.2.3.4"]), &strings(&["1.2.3.4"])).unwrap();
        assert!(!both.permits(ip("1.2.3.4")));
    }

    #[test]
    fn acl_errors_say_which_list_and_entry() {
        let err = IpAcl::new(&strings(&["10.0.0.0/8", "10.0.0.0/99"]), &[]).unwrap_err();
        assert!(err.starts_with("allow entry"), "{err}");
        assert!(err.contains("10.0.0.0/99"), "{err}");
        let err = IpAcl::new(&[], &strings(&["nonsense"])).unwrap_err();
        assert!(err.starts_with("deny entry"), "{err}");
        assert!(err.contains("nonsense"), "{err}");
    }
}
