//! `Cache-Control` (and `Pragma`) as the cache reads them, from either side (RFC 9111 §5.2).

use http::HeaderMap;
use http::header::{CACHE_CONTROL, PRAGMA};

use super::MAX_DELTA_SECONDS;

/// The `Cache-Control` directives the cache acts on, from either side.
#[derive(Debug, Default)]
pub(super) struct Directives {
    pub(super) no_store: bool,
    pub(super) no_cache: bool,
    pub(super) private: bool,
    pub(super) public: bool,
    pub(super) must_revalidate: bool,
    pub(super) proxy_revalidate: bool,
    pub(super) max_age: Option<u64>,
    pub(super) s_maxage: Option<u64>,
    pub(super) min_fresh: Option<u64>,
    pub(super) stale_while_revalidate: Option<u64>,
    pub(super) stale_if_error: Option<u64>,
}

impl Directives {
    /// Names are case-insensitive; arguments may be quoted. A repeated delta-seconds directive
    /// keeps its smallest value and an invalid one counts as 0, so doubt means stale (RFC 9111
    /// §4.2.1). The field-qualified `no-cache="..."` and `private="..."` act unqualified.
    pub(super) fn parse(headers: &HeaderMap) -> Self {
        let mut cc = Directives::default();
        for value in headers.get_all(CACHE_CONTROL) {
            let text = String::from_utf8_lossy(value.as_bytes());
            for (name, arg) in split_directives(&text) {
                let seconds = || delta_seconds(arg);
                match name.to_ascii_lowercase().as_str() {
                    "no-store" => cc.no_store = true,
                    "no-cache" => cc.no_cache = true,
                    "private" => cc.private = true,
                    "public" => cc.public = true,
                    "must-revalidate" => cc.must_revalidate = true,
                    "proxy-revalidate" => cc.proxy_revalidate = true,
                    "max-age" => keep_min(&mut cc.max_age, seconds()),
                    "s-maxage" => keep_min(&mut cc.s_maxage, seconds()),
                    "min-fresh" => keep_min(&mut cc.min_fresh, seconds()),
                    "stale-while-revalidate" => {
                        keep_min(&mut cc.stale_while_revalidate, seconds());
                    }
                    "stale-if-error" => keep_min(&mut cc.stale_if_error, seconds()),
                    _ => {}
                }
            }
        }
        cc
    }

    /// Request directives; `Pragma: no-cache` counts when there is no `Cache-Control` (RFC 9111
    /// §5.4, for HTTP/1.0 clients).
    pub(super) fn from_request(headers: &HeaderMap) -> Self {
        let mut cc = Directives::parse(headers);
        if !headers.contains_key(CACHE_CONTROL) {
            cc.no_cache |= headers.get_all(PRAGMA).iter().any(|value| {
                value
                    .as_bytes()
                    .split(|&b| b == b',')
                    .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"no-cache"))
            });
        }
        cc
    }
}

pub(super) fn keep_min(slot: &mut Option<u64>, value: u64) {
    *slot = Some(slot.map_or(value, |old| old.min(value)));
}

/// Splits a `Cache-Control` value at commas outside quoted strings, into names and unquoted
/// arguments.
pub(super) fn split_directives(text: &str) -> Vec<(&str, Option<&str>)> {
    let mut items = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (at, ch) in text.char_indices() {
        match ch {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                items.push(&text[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    items.push(&text[start..]);
    items
        .into_iter()
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| match item.split_once('=') {
            Some((name, arg)) => {
                let arg = arg.trim();
                let arg = arg
                    .strip_prefix('"')
                    .and_then(|a| a.strip_suffix('"'))
                    .unwrap_or(arg);
                (name.trim(), Some(arg))
            }
            None => (item, None),
        })
        .collect()
}

/// RFC 9111 §1.2.2 delta-seconds: digits only; too large saturates at 2^31; missing or
/// malformed is 0.
pub(super) fn delta_seconds(arg: Option<&str>) -> u64 {
    let Some(arg) = arg.map(str::trim) else {
        return 0;
    };
    if arg.is_empty() || !arg.bytes().all(|b| b.is_ascii_digit()) {
        return 0;
    }
    arg.parse::<u64>()
        .map_or(MAX_DELTA_SECONDS, |n| n.min(MAX_DELTA_SECONDS))
}

#[cfg(test)]
mod tests {
    use http::header::{CACHE_CONTROL, PRAGMA};
    use http::{HeaderMap, HeaderValue};

    use super::*;

    #[test]
    fn cache_control_parsing_handles_case_quotes_duplicates_and_overflow() {
        let mut headers = HeaderMap::new();
        headers.append(
            CACHE_CONTROL,
            HeaderValue::from_static("Max-Age=\"60\", no-cache=\"set-cookie, x-a\", public"),
        );
        headers.append(
            CACHE_CONTROL,
            HeaderValue::from_static("max-age=30, s-maxage=99999999999999999999999"),
        );
        let cc = Directives::parse(&headers);
        assert_eq!(cc.max_age, Some(30));
        assert_eq!(cc.s_maxage, Some(MAX_DELTA_SECONDS));
        assert!(cc.no_cache);
        assert!(cc.public);
        assert!(!cc.private);

        let mut headers = HeaderMap::new();
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=ten"));
        assert_eq!(Directives::parse(&headers).max_age, Some(0));
    }

    #[test]
    fn pragma_is_ignored_when_cache_control_is_present() {
        let mut headers = HeaderMap::new();
        headers.insert(PRAGMA, HeaderValue::from_static("no-cache"));
        assert!(Directives::from_request(&headers).no_cache);
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=60"));
        assert!(!Directives::from_request(&headers).no_cache);
    }
}
