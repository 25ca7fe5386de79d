//! gzip compression of buffered responses for clients that accept it.
//!
//! Only text-like types are worth compressing; images, archives and already-encoded bodies are
//! compressed already. The fast level is used because this runs on the request path, where
//! latency matters more than the last few percent of size.

use std::io::Write;

use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use http::HeaderMap;
use http::header::{
    ACCEPT_ENCODING, ACCEPT_RANGES, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE,
    CONTENT_TYPE, ETAG, HeaderValue, VARY,
};

/// Whether the request's Accept-Encoding admits gzip.
///
/// An explicit `gzip` (or legacy `x-gzip`) entry decides; otherwise `*` does. `q=0` means "not
/// acceptable". A missing header formally means any coding is fine, but clients that can decode
/// gzip say so, and guessing wrong corrupts the body, so no header means no.
pub fn accepts_gzip(request_headers: &HeaderMap) -> bool {
    let mut wildcard = None;
    for value in request_headers.get_all(ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for entry in value.split(',') {
            let mut parts = entry.split(';');
            let coding = parts.next().unwrap_or_default().trim();
            // An entry with an unreadable q-value is skipped rather than guessed at.
            let Some(q) = quality(parts) else { continue };
            if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                return q > 0.0;
            }
            if coding == "*" {
                wildcard = Some(q > 0.0);
            }
        }
    }
    wildcard.unwrap_or(false)
}

/// The q parameter of one Accept-Encoding entry (1 when absent), or None when malformed.
fn quality<'a>(params: impl Iterator<Item = &'a str>) -> Option<f32> {
    for param in params {
        let (name, value) = param.split_once('=')?;
        if name.trim().eq_ignore_ascii_case("q") {
            return value
                .trim()
                .parse::<f32>()
                .ok()
                .filter(|q| (0.0..=1.0).contains(q));
        }
    }
    Some(1.0)
}

/// Whether the response is of a type gzip shrinks and may be re-encoded by us.
///
/// Not when it already has a Content-Encoding, when Cache-Control forbids transformation, or when
/// it is a range (Content-Range offsets refer to the unencoded bytes). Event streams are text but
/// are excluded: compressing them would hold events back in the compressor's buffer.
pub fn compressible(response_headers: &HeaderMap) -> bool {
    if response_headers
        .get(CONTENT_ENCODING)
        .is_some_and(|encoding| {
            !encoding
                .as_bytes()
                .trim_ascii()
                .eq_ignore_ascii_case(b"identity")
        })
    {
        return false;
    }
    if response_headers.contains_key(CONTENT_RANGE) {
        return false;
    }
    let no_transform = response_headers
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|directive| directive.trim().eq_ignore_ascii_case("no-transform"));
    if no_transform {
        return false;
    }
    let Some(content_type) = response_headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
    else {
        return false;
    };
    let media_type = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let Some((kind, subtype)) = media_type.split_once('/') else {
        return false;
    };
    match kind {
        "text" => subtype != "event-stream",
        "application" => {
            matches!(subtype, "json" | "javascript" | "xml")
                || subtype.ends_with("+json")
                || subtype.ends_with("+xml")
        }
        "image" => subtype == "svg+xml",
        _ => false,
    }
}

/// gzip at the fast level.
pub fn gzip(body: &[u8]) -> Bytes {
    let mut encoder = GzEncoder::new(Vec::with_capacity(body.len() / 4 + 64), Compression::fast());
    // Writing into a Vec cannot fail, so neither can the encoder.
    encoder
        .write_all(body)
        .expect("gzip into a Vec cannot fail");
    let compressed = encoder.finish().expect("gzip into a Vec cannot fail");
    Bytes::from(compressed)
}

/// Compresses a buffered response body when the client accepts gzip and it pays, fixing the
/// headers to match; returns the body to send.
///
/// `Vary: Accept-Encoding` is added to every compressible response of at least `min_bytes`,
/// compressed or not, because a cache must not replay the plain copy to a gzip client or the
/// gzip copy to a plain one. Smaller bodies are never compressed, so they do not vary.
pub fn compress_response(
    request_headers: &HeaderMap,
    response_headers: &mut HeaderMap,
    body: Bytes,
    min_bytes: usize,
) -> Bytes {
    if body.len() < min_bytes || body.is_empty() || !compressible(response_headers) {
        return body;
    }
    add_vary(response_headers, "accept-encoding");
    if !accepts_gzip(request_headers) {
        return body;
    }
    let compressed = gzip(&body);
    if compressed.len() >= body.len() {
        return body;
    }
    response_headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    response_headers.insert(CONTENT_LENGTH, HeaderValue::from(compressed.len()));
    // Byte ranges of the gzip stream would not be stable across compressions.
    response_headers.remove(ACCEPT_RANGES);
    // A strong ETag promises byte-identical bodies; these bytes are new, so it can only be weak.
    if let Some(etag) = response_headers.get(ETAG)
        && etag.as_bytes().starts_with(b"\"")
    {
        let mut weak = b"W/".to_vec();
        weak.extend_from_slice(etag.as_bytes());
        if let Ok(weak) = HeaderValue::from_bytes(&weak) {
            response_headers.insert(ETAG, weak);
        }
    }
    compressed
}

/// Adds `name` to the response's Vary unless it (or `*`) is already listed.
///
/// Shared with CORS, which varies on Origin.
pub fn add_vary(response_headers: &mut HeaderMap, name: &'static str) {
    let listed = response_headers
        .get_all(VARY)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .any(|listed| listed == "*" || listed.eq_ignore_ascii_case(name));
    if !listed {
        response_headers.append(VARY, HeaderValue::from_static(name));
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use flate2::read::GzDecoder;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn gunzip(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        GzDecoder::new(data).read_to_end(&mut out).unwrap();
        out
    }

    fn text_body() -> Bytes {
        Bytes::from("keel gateway says hello. ".repeat(200))
    }

    fn vary(map: &HeaderMap) -> Vec<&str> {
        map.get_all(VARY)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    #[test]
    fn gzip_round_trips_to_the_original() {
        for body in [
            Vec::new(),
            b"x".to_vec(),
            text_body().to_vec(),
            (0..=255u8).collect(),
        ] {
            assert_eq!(gunzip(&gzip(&body)), body);
        }
    }

    #[test]
    fn accept_encoding_is_read_with_q_values() {
        let cases: &[(&[&'static str], bool)] = &[
            (&[], false),
            (&["gzip"], true),
            (&["GZIP"], true),
            (&["x-gzip"], true),
            (&["deflate, gzip;q=1.0, br"], true),
            (&["br", "gzip"], true),
            (&["gzip;q=0"], false),
            (&["gzip; q=0.000"], false),
            (&["gzip;Q=0"], false),
            (&["gzip;q=0.001"], true),
            (&["*"], true),
            (&["*;q=0"], false),
            (&["*;q=0, gzip"], true),
            (&["gzip;q=0, *"], false),
            (&["*, gzip;q=0"], false),
            (&["br, deflate"], false),
            (&["identity"], false),
            (&["gzip;q=nonsense"], false),
            (&["gzip;q=2"], false),
            (&["gzipped"], false),
        ];
        for (values, expected) in cases {
            let mut map = HeaderMap::new();
            for value in *values {
                map.append(ACCEPT_ENCODING, HeaderValue::from_static(value));
            }
            assert_eq!(accepts_gzip(&map), *expected, "{values:?}");
        }
    }

    #[test]
    fn text_like_types_are_compressible() {
        for content_type in [
            "text/html",
            "text/plain; charset=utf-8",
            "TEXT/CSS",
            "application/json",
            "application/javascript",
            "application/xml",
            "image/svg+xml",
            "application/problem+json",
            "application/atom+xml",
            "application/vnd.api+json ; charset=utf-8",
        ] {
            let map = headers(&[("content-type", content_type)]);
            assert!(compressible(&map), "{content_type}");
        }
    }

    #[test]
    fn other_types_are_not_compressible() {
        for content_type in [
            "image/png",
            "application/octet-stream",
            "application/zip",
            "video/mp4",
            "text/event-stream",
            "application/jsonx",
            "nonsense",
        ] {
            let map = headers(&[("content-type", content_type)]);
            assert!(!compressible(&map), "{content_type}");
        }
        assert!(!compressible(&HeaderMap::new()));
    }

    #[test]
    fn encoded_ranged_or_no_transform_responses_are_left_alone() {
        let json = ("content-type", "application/json");
        assert!(!compressible(&headers(&[json, ("content-encoding", "br")])));
        assert!(!compressible(&headers(&[
            json,
            ("content-encoding", "gzip")
        ])));
        assert!(compressible(&headers(&[
            json,
            ("content-encoding", "identity")
        ])));
        assert!(!compressible(&headers(&[
            json,
            ("content-range", "bytes 0-9/100")
        ])));
        assert!(!compressible(&headers(&[
            json,
            ("cache-control", "public, No-Transform")
        ])));
        assert!(!compressible(&headers(&[
            json,
            ("cache-control", "max-age=60"),
            ("cache-control", "no-transform")
        ])));
        assert!(compressible(&headers(&[
            json,
            ("cache-control", "no-cache")
        ])));
    }

    #[test]
    fn a_large_compressible_response_is_gzipped_with_headers_fixed() {
        let request = headers(&[("accept-encoding", "gzip, br")]);
        let body = text_body();
        let mut response = headers(&[
            ("content-type", "text/plain"),
            ("content-length", "5000"),
            ("etag", "\"v1\""),
            ("accept-ranges", "bytes"),
        ]);
        let sent = compress_response(&request, &mut response, body.clone(), 1024);
        assert!(sent.len() < body.len());
        assert_eq!(gunzip(&sent), body);
        assert_eq!(response[CONTENT_ENCODING], "gzip");
        assert_eq!(response[CONTENT_LENGTH], sent.len().to_string().as_str());
        assert_eq!(response[ETAG], "W/\"v1\"");
        assert_eq!(vary(&response), ["accept-encoding"]);
        assert!(!response.contains_key(ACCEPT_RANGES));
    }

    #[test]
    fn weak_etags_stay_as_they_are() {
        let request = headers(&[("accept-encoding", "gzip")]);
        let mut response = headers(&[("content-type", "text/plain"), ("etag", "W/\"v1\"")]);
        compress_response(&request, &mut response, text_body(), 0);
        assert_eq!(response[CONTENT_ENCODING], "gzip");
        assert_eq!(response[ETAG], "W/\"v1\"");
    }

    #[test]
    fn refusing_clients_get_the_plain_body_but_still_vary() {
        let body = text_body();
        for request in [
            headers(&[("accept-encoding", "gzip;q=0")]),
            headers(&[("accept-encoding", "br")]),
            HeaderMap::new(),
        ] {
            let mut response = headers(&[("content-type", "text/plain"), ("etag", "\"v1\"")]);
            let sent = compress_response(&request, &mut response, body.clone(), 1024);
            assert_eq!(sent, body);
            assert!(!response.contains_key(CONTENT_ENCODING));
            assert_eq!(response[ETAG], "\"v1\"");
            assert_eq!(vary(&response), ["accept-encoding"]);
        }
    }

    #[test]
    fn small_bodies_are_left_alone() {
        let request = headers(&[("accept-encoding", "gzip")]);
        let mut response = headers(&[("content-type", "text/plain")]);
        let body = Bytes::from_static(b"short");
        let sent = compress_response(&request, &mut response, body.clone(), 1024);
        assert_eq!(sent, body);
        assert_eq!(response, headers(&[("content-type", "text/plain")]));
    }

    #[test]
    fn empty_bodies_are_left_alone_even_without_a_minimum() {
        let request = headers(&[("accept-encoding", "gzip")]);
        let mut response = headers(&[("content-type", "text/plain")]);
        let sent = compress_response(&request, &mut response, Bytes::new(), 0);
        assert!(sent.is_empty());
        assert!(!response.contains_key(CONTENT_ENCODING));
    }

    #[test]
    fn already_encoded_bodies_are_left_alone() {
        let request = headers(&[("accept-encoding", "gzip")]);
        let body = gzip(&text_body());
        let mut response = headers(&[("content-type", "text/plain"), ("content-encoding", "gzip")]);
        let sent = compress_response(&request, &mut response, body.clone(), 0);
        assert_eq!(sent, body);
        assert_eq!(response.get_all(CONTENT_ENCODING).iter().count(), 1);
        assert!(vary(&response).is_empty());
    }

    #[test]
    fn incompressible_types_are_left_alone_without_vary() {
        let request = headers(&[("accept-encoding", "gzip")]);
        let mut response = headers(&[("content-type", "image/png")]);
        let body = text_body();
        let sent = compress_response(&request, &mut response, body.clone(), 0);
        assert_eq!(sent, body);
        assert_eq!(response, headers(&[("content-type", "image/png")]));
    }

    #[test]
    fn bodies_that_would_grow_are_sent_plain() {
        let request = headers(&[("accept-encoding", "gzip")]);
        let mut response = headers(&[("content-type", "application/json")]);
        let body: Bytes = (0..64).map(|_| fastrand::u8(..)).collect::<Vec<_>>().into();
        let sent = compress_response(&request, &mut response, body.clone(), 0);
        assert_eq!(sent, body);
        assert!(!response.contains_key(CONTENT_ENCODING));
        assert_eq!(vary(&response), ["accept-encoding"]);
    }

    #[test]
    fn vary_is_appended_once_and_respects_existing_values() {
        let mut map = headers(&[("vary", "Origin")]);
        add_vary(&mut map, "accept-encoding");
        add_vary(&mut map, "accept-encoding");
        assert_eq!(vary(&map), ["Origin", "accept-encoding"]);
        let mut listed = headers(&[("vary", "Origin, Accept-Encoding")]);
        add_vary(&mut listed, "accept-encoding");
        assert_eq!(vary(&listed), ["Origin, Accept-Encoding"]);
        let mut star = headers(&[("vary", "*")]);
        add_vary(&mut star, "accept-encoding");
        assert_eq!(vary(&star), ["*"]);
    }
}
