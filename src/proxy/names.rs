//! Chain and set names: stable (a hash of the Service port's identity, so the same port keeps
//! its chains across restarts and nodes), safe (only characters nft's scanner takes in a bare
//! name) and short (a readable tail, capped).

use core::net::Ipv4Addr;

use sha2::{Digest, Sha256};

/// Longest readable tail kept after the hash.
const MAX_TAIL: usize = 48;

/// 8 characters of base32 (40 bits) of SHA-256 of `id`.
fn hash(id: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = Sha256::digest(id.as_bytes());
    let bits = digest[..5]
        .iter()
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    (0..8)
        .map(|i| ALPHABET[((bits >> (35 - 5 * i)) & 31) as usize] as char)
        .collect()
}

/// `id` reduced to `[a-z0-9./-]` (anything else becomes `_`), at most [`MAX_TAIL`] characters.
fn tail(id: &str) -> String {
    id.chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '.' | '/' | '-' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '_',
        })
        .take(MAX_TAIL)
        .collect()
}

/// The chain of a Service port (`svc-HASH-ns/name/proto/port`); `kind` is `svc` (all
/// endpoints), `svl` (local endpoints) or `ext` (the NodePort entry).
pub fn service_chain(kind: &str, port_id: &str) -> String {
    format!("{kind}-{}-{}", hash(port_id), tail(port_id))
}

/// The chain of one endpoint of a Service port (`ep-HASH-ip/port`).
pub fn endpoint_chain(port_id: &str, ip: Ipv4Addr, port: u16) -> String {
    format!("ep-{}-{ip}/{port}", hash(&format!("{port_id}@{ip}:{port}")))
}

/// The session-affinity set of one endpoint (`aff-HASH`). The timeout is part of the hash: a
/// set's timeout cannot be altered, so a new timeout means new sets (and rewritten chains).
pub fn affinity_set(port_id: &str, ip: Ipv4Addr, port: u16, timeout: u32) -> String {
    format!("aff-{}", hash(&format!("{port_id}@{ip}:{port}/{timeout}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_and_safe() {
        // Golden: a change here renames every chain on every node (harmless, but it should be
        // deliberate).
        assert_eq!(
            service_chain("svc", "default/web/tcp/http"),
            "svc-SUSTUHLJ-default/web/tcp/http"
        );
        let ep = endpoint_chain("default/web/tcp/http", Ipv4Addr::new(10, 244, 1, 5), 8080);
        assert!(
            ep.starts_with("ep-") && ep.ends_with("-10.244.1.5/8080"),
            "{ep}"
        );
        let weird = service_chain("svc", "Ns/na me\"; flush ruleset/tcp/x");
        assert!(
            weird
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "./-_".contains(c)),
            "{weird}"
        );
        let long = service_chain("svc", &"a".repeat(300));
        assert!(long.len() <= 4 + 9 + MAX_TAIL, "{}", long.len());
        assert_ne!(
            service_chain("svc", "a/b/tcp/x"),
            service_chain("svc", "a/b/udp/x")
        );
    }
}
