//! Kubernetes name rules (RFC 1123), shared by the API's validation and node names.

/// A DNS-1123 label: 1-63 of `[a-z0-9-]`, starting and ending alphanumeric.
pub fn is_dns1123_label(part: &str) -> bool {
    let bytes = part.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// A DNS-1123 subdomain: at most 253 characters of dot-separated labels (node names, most
/// object names).
pub fn is_dns1123_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns1123_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        assert!(is_dns1123_subdomain("n1.example-1.com"));
        assert!(is_dns1123_label("a-b"));
        for bad in ["", "A", "-a", "a-", "a_b", "a..b", ".a"] {
            assert!(!is_dns1123_subdomain(bad), "{bad}");
        }
        assert!(!is_dns1123_label("a.b"));
        assert!(!is_dns1123_subdomain(&"a".repeat(254)));
    }
}
