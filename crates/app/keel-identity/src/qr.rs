//! The enrolment image: an `otpauth://` URI as a QR code that authenticator apps scan (only
//! the IdP draws it, so `qrcode` stays out of keel-credentials).

/// `uri` as a QR code in SVG (medium error correction, a quiet zone): the enrolment image
/// authenticator apps scan.
pub(crate) fn qr_svg(uri: &str) -> String {
    use qrcode::render::svg;
    match qrcode::QrCode::with_error_correction_level(uri.as_bytes(), qrcode::EcLevel::M) {
        Ok(code) => code
            .render::<svg::Color<'_>>()
            .min_dimensions(200, 200)
            .quiet_zone(true)
            .build(),
        // Only data beyond a QR code's capacity (2,331 bytes at level M) fails; an enrolment
        // URI is about 150.
        Err(e) => unreachable!("an otpauth URI fits a QR code: {e}"),
    }
}
