//! Image references normalised as Docker does: `busybox` → `docker.io/library/busybox:latest`,
//! `shoal.test/busybox:1` unchanged, `name@sha256:<hex>` kept with its digest. Pure.

use std::fmt;

/// Longest reference accepted (Docker's limit on the name is 255; tag and digest come on top).
pub const MAX_REFERENCE_LEN: usize = 512;
const MAX_NAME_LEN: usize = 255;
const DEFAULT_DOMAIN: &str = "docker.io";

/// A parsed, normalised reference.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Reference {
    /// `domain/path`, e.g. `docker.io/library/busybox`.
    pub name: String,
    pub tag: Option<String>,
    /// `sha256:<64 hex>`.
    pub digest: Option<String>,
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl Reference {
    /// The reference without its digest (what the store's index is keyed by).
    pub fn named(&self) -> String {
        match &self.tag {
            Some(t) => format!("{}:{t}", self.name),
            None => self.name.clone(),
        }
    }

    /// The store index's key for this reference: [`Reference::named`] for a tag, the whole
    /// reference for a digest (an alias to the platform manifest it was pulled as).
    pub fn index_key(&self) -> String {
        match &self.digest {
            Some(_) => self.to_string(),
            None => self.named(),
        }
    }
}

/// Parses and normalises `s`. The tag defaults to `latest` unless a digest is given.
pub fn parse(s: &str) -> Result<Reference, String> {
    if s.is_empty() {
        return Err("empty image reference".into());
    }
    if s.len() > MAX_REFERENCE_LEN {
        return Err(format!(
            "image reference longer than {MAX_REFERENCE_LEN} bytes"
        ));
    }
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => {
            let hex = d
                .strip_prefix("sha256:")
                .ok_or_else(|| format!("{s:?}: only sha256 digests are supported"))?;
            if !is_sha256_hex(hex) {
                return Err(format!("{s:?}: the digest is not 64 lower-case hex digits"));
            }
            (r, Some(d.to_string()))
        }
        None => (s, None),
    };
    // A ':' after the last '/' separates the tag (a ':' before it is a registry port).
    let last_slash = rest.rfind('/');
    let (name, tag) = match rest.rfind(':') {
        Some(i) if last_slash.is_none_or(|sl| i > sl) => (&rest[..i], Some(&rest[i + 1..])),
        _ => (rest, None),
    };
    if let Some(t) = tag {
        if !valid_tag(t) {
            return Err(format!("{s:?}: invalid tag {t:?}"));
        }
    }
    let (domain, path) = match name.split_once('/') {
        Some((first, remainder))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first, remainder.to_string())
        }
        _ => (DEFAULT_DOMAIN, name.to_string()),
    };
    let domain = if domain == "index.docker.io" {
        DEFAULT_DOMAIN
    } else {
        domain
    };
    if !valid_domain(domain) {
        return Err(format!("{s:?}: invalid registry {domain:?}"));
    }
    let path = if domain == DEFAULT_DOMAIN && !path.contains('/') {
        format!("library/{path}")
    } else {
        path
    };
    if path.is_empty() || !path.split('/').all(valid_path_component) {
        return Err(format!(
            "{s:?}: invalid repository name (lower-case letters, digits and separators . _ -)"
        ));
    }
    let full = format!("{domain}/{path}");
    if full.len() > MAX_NAME_LEN {
        return Err(format!("{s:?}: repository name longer than {MAX_NAME_LEN}"));
    }
    let tag = match (tag, &digest) {
        (Some(t), _) => Some(t.to_string()),
        (None, None) => Some("latest".to_string()),
        (None, Some(_)) => None,
    };
    Ok(Reference {
        name: full,
        tag,
        digest,
    })
}

/// Normalises `s` to its full string form.
pub fn normalize(s: &str) -> Result<String, String> {
    parse(s).map(|r| r.to_string())
}

pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn valid_domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|c| c.is_ascii_digit()) {
            return false;
        }
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-".
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_short_names_get_library_and_latest() {
        assert_eq!(
            normalize("busybox").unwrap(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            normalize("busybox:1.36").unwrap(),
            "docker.io/library/busybox:1.36"
        );
        assert_eq!(
            normalize("someone/app").unwrap(),
            "docker.io/someone/app:latest"
        );
        assert_eq!(
            normalize("index.docker.io/library/busybox").unwrap(),
            "docker.io/library/busybox:latest"
        );
    }

    #[test]
    fn registries_ports_and_digests() {
        assert_eq!(
            normalize("shoal.test/busybox:1").unwrap(),
            "shoal.test/busybox:1"
        );
        assert_eq!(
            normalize("localhost:5000/a/b").unwrap(),
            "localhost:5000/a/b:latest"
        );
        assert_eq!(normalize("localhost/x").unwrap(), "localhost/x:latest");
        let d = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(
            normalize(&format!("busybox@{d}")).unwrap(),
            format!("docker.io/library/busybox@{d}")
        );
        let r = parse(&format!("shoal.test/busybox:1@{d}")).unwrap();
        assert_eq!(r.tag.as_deref(), Some("1"));
        assert_eq!(r.digest.as_deref(), Some(d.as_str()));
        assert_eq!(r.named(), "shoal.test/busybox:1");
    }

    #[test]
    fn invalid_references_are_refused() {
        for bad in [
            "",
            "Busybox",
            "busybox:",
            "busybox:-x",
            "a//b",
            "busybox@sha256:abc",
            "busybox@md5:00",
            "/busybox",
            "busybox/",
            "a..b",
            "shoal.test:port/x",
            &"a".repeat(600),
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
