//! Image references normalised as Docker does: `busybox` → `docker.io/library/busybox:latest`,
//! `shoal.test/busybox:1` unchanged, `name@sha256:<hex>` kept with its digest; parsed by
//! `oci_client::Reference`, with shoal's own limits on top. Pure.

use std::fmt;

/// Longest reference accepted (Docker's limit on the name is 255; tag and digest come on top).
pub const MAX_REFERENCE_LEN: usize = 512;
const MAX_NAME_LEN: usize = 255;

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

    /// The same reference as `oci_client` takes it (built from the parts, not parsed again).
    pub fn oci(&self) -> oci_client::Reference {
        let (registry, repository) = self.name.split_once('/').unwrap_or(("", &self.name));
        let (registry, repository) = (registry.to_string(), repository.to_string());
        match (&self.tag, &self.digest) {
            (Some(t), Some(d)) => oci_client::Reference::with_tag_and_digest(
                registry,
                repository,
                t.clone(),
                d.clone(),
            ),
            (None, Some(d)) => oci_client::Reference::with_digest(registry, repository, d.clone()),
            (Some(t), None) => oci_client::Reference::with_tag(registry, repository, t.clone()),
            (None, None) => oci_client::Reference::with_tag(registry, repository, "latest".into()),
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

/// Parses and normalises `s` with the distribution grammar of `oci_client::Reference`
/// (oci-spec's: Docker Hub's `library/` and `docker.io`, `index.docker.io` folded in). The tag
/// defaults to `latest` unless a digest is given. On top of it shoal asks for: a bounded length,
/// sha256 digests in lower-case hex only, ASCII tags.
pub fn parse(s: &str) -> Result<Reference, String> {
    if s.is_empty() {
        return Err("empty image reference".into());
    }
    if s.len() > MAX_REFERENCE_LEN {
        return Err(format!(
            "image reference longer than {MAX_REFERENCE_LEN} bytes"
        ));
    }
    let r: oci_client::Reference = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    if let Some(d) = r.digest() {
        let hex = d
            .strip_prefix("sha256:")
            .ok_or_else(|| format!("{s:?}: only sha256 digests are supported"))?;
        if !is_sha256_hex(hex) {
            return Err(format!("{s:?}: the digest is not 64 lower-case hex digits"));
        }
    }
    if let Some(t) = r.tag().filter(|t| !valid_tag(t)) {
        return Err(format!("{s:?}: invalid tag {t:?}"));
    }
    let name = format!("{}/{}", r.registry(), r.repository());
    if name.len() > MAX_NAME_LEN {
        return Err(format!("{s:?}: repository name longer than {MAX_NAME_LEN}"));
    }
    Ok(Reference {
        name,
        tag: r.tag().map(str::to_string),
        digest: r.digest().map(str::to_string),
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
        // The oci_client form is the same reference, registry and repository split.
        let oci = r.oci();
        assert_eq!(
            (oci.registry(), oci.repository()),
            ("shoal.test", "busybox")
        );
        assert_eq!(oci.to_string(), r.to_string());
        let hub = parse("busybox").unwrap().oci();
        assert_eq!(hub.to_string(), "docker.io/library/busybox:latest");
        assert_eq!(hub.resolve_registry(), "index.docker.io");
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
            "busybox:ü",
            &format!("busybox@sha256:{}", "AB".repeat(32)),
            &format!("busybox@sha512:{}", "ab".repeat(64)),
            &"a".repeat(600),
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
