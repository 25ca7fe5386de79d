//! Request ids (`x-request-id`): a caller's id is kept when sane, else one is made, so a request
//! has one id from the gateway through the API to the logs of both.

use http::{HeaderMap, HeaderName, HeaderValue};

/// The request id header.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request's `x-request-id` when the caller sent a sane one, else a new one from `ids`.
pub fn keep_or_make(ids: &RequestIds, headers: &HeaderMap) -> HeaderValue {
    if let Some(given) = headers.get(&REQUEST_ID)
        && RequestIds::sane(given.as_bytes())
    {
        return given.clone();
    }
    HeaderValue::from_bytes(&ids.next()).expect("hex is a valid header value")
}

/// Request ids (`x-request-id`): a random per-process prefix and a counter, unique without a
/// system call per request. Shared by the API and the gateway, so both keep and make ids alike.
#[derive(Debug)]
pub struct RequestIds {
    prefix: u32,
    next: std::sync::atomic::AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        Self {
            prefix: {
                let mut bytes = [0u8; 4];
                getrandom::fill(&mut bytes).expect("the operating system's random source");
                u32::from_le_bytes(bytes)
            },
            next: std::sync::atomic::AtomicU64::new(1),
        }
    }
}

impl RequestIds {
    /// Whether a caller's id may be kept: 1 to 128 letters, digits and `-_.:`.
    pub fn sane(given: &[u8]) -> bool {
        !given.is_empty()
            && given.len() <= 128
            && given
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
    }

    /// A new id: 8 hex digits of process prefix and 12 of counter, without a formatting call.
    pub fn next(&self) -> [u8; 20] {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) & 0xffff_ffff_ffff;
        let digits = (u128::from(self.prefix) << 48) | u128::from(n);
        let mut id = [0u8; 20];
        for (i, slot) in id.iter_mut().enumerate() {
            *slot = b"0123456789abcdef"[((digits >> (4 * (19 - i))) & 0xf) as usize];
        }
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sane_id_is_kept_and_any_other_replaced() {
        let ids = RequestIds::default();
        let mut headers = HeaderMap::new();
        let made = keep_or_make(&ids, &headers);
        assert_eq!(made.len(), 20);
        assert_ne!(keep_or_make(&ids, &headers), made, "each request its own");
        headers.insert(&REQUEST_ID, HeaderValue::from_static("abc-123:x.y_z"));
        assert_eq!(keep_or_make(&ids, &headers), "abc-123:x.y_z");
        headers.insert(&REQUEST_ID, HeaderValue::from_static("no spaces"));
        assert_eq!(keep_or_make(&ids, &headers).len(), 20);
    }
}
