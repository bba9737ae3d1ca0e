//! Reads an image archive (OCI image layout tar, or `docker save` tar; either may be gzipped)
//! into a staging directory: every file is hashed while it is copied, blobs named by digest are
//! checked against their name, and the images it names are worked out without touching the store.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::reference;
use super::unpack::{safe_relative, sniff, Compression, HashReader};
use super::ImageError;

/// Entries in an import archive.
pub const MAX_ARCHIVE_ENTRIES: u64 = 100_000;
/// Bytes of an import archive (uncompressed).
pub const MAX_ARCHIVE_BYTES: u64 = 64 << 30;
/// Bytes of a JSON document (index, manifest, config).
pub const MAX_JSON_BYTES: u64 = 4 << 20;
/// Images in one archive.
pub const MAX_IMAGES: usize = 256;
/// Layers of one image.
pub const MAX_LAYERS: usize = 256;

/// Files whose content is read into memory rather than staged.
const METADATA: &[&str] = &["oci-layout", "index.json", "manifest.json", "repositories"];

/// A file of the archive, copied into the staging dir.
#[derive(Clone, Debug)]
pub struct Staged {
    pub file: PathBuf,
    pub hex: String,
    pub size: u64,
}

/// What the archive holds, once read.
#[derive(Default)]
pub struct Archive {
    /// Archive path → staged copy.
    pub files: BTreeMap<String, Staged>,
    /// Archive path → symlink target (normalised archive path).
    pub links: BTreeMap<String, String>,
    /// Small metadata files by name.
    pub metadata: BTreeMap<String, Vec<u8>>,
    /// `blobs/sha256/<hex>` entries skipped because the store already has them.
    pub present: BTreeMap<String, ()>,
}

impl Archive {
    /// The archive path `p` after following symlinks inside the archive, if it ends at a staged
    /// file or at a blob skipped because the store has it.
    fn resolve(&self, p: &str) -> Option<String> {
        let mut p = normalise(p)?;
        for _ in 0..16 {
            if self.files.contains_key(&p) || self.present_blob(&p).is_some() {
                return Some(p);
            }
            p = self.links.get(&p)?.clone();
        }
        None
    }

    fn present_blob<'a>(&self, p: &'a str) -> Option<&'a str> {
        p.strip_prefix("blobs/sha256/")
            .filter(|h| self.present.contains_key(*h))
    }
}

/// Lexically normalised archive path (no `.`, `..` resolved, relative); `None` if it escapes.
fn normalise(p: &str) -> Option<String> {
    let mut out: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            c => out.push(c),
        }
    }
    Some(out.join("/"))
}

/// Reads `path` into `stage` (an empty dir). `have_blob(hex)` says whether the store already
/// holds a blob, so that `blobs/sha256/<hex>` entries it has are not copied again.
pub fn read(
    path: &Path,
    stage: &Path,
    have_blob: &dyn Fn(&str) -> bool,
) -> Result<Archive, ImageError> {
    let f = std::fs::File::open(path).map_err(|e| ImageError::io(path, e))?;
    let mut r = BufReader::with_capacity(256 * 1024, f);
    let head = r.fill_buf().map_err(|e| ImageError::io(path, e))?.to_vec();
    if head.is_empty() {
        return Err(ImageError::InvalidArchive("the archive is empty".into()));
    }
    let inner: Box<dyn Read> = match sniff(&head) {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
        Compression::Zstd => {
            return Err(ImageError::Unsupported(
                "zstd-compressed archives are not supported".into(),
            ))
        }
        Compression::None => Box::new(r),
    };
    let mut counted = HashReader::new(inner, MAX_ARCHIVE_BYTES);
    let mut tar = tar::Archive::new(&mut counted);
    let not_tar = |e: io::Error| {
        ImageError::InvalidArchive(format!(
            "not a tar archive (an OCI image layout or `docker save` tar): {e}"
        ))
    };
    let mut out = Archive::default();
    let mut count = 0u64;
    for entry in tar.entries().map_err(not_tar)? {
        let mut entry = entry.map_err(not_tar)?;
        count += 1;
        if count > MAX_ARCHIVE_ENTRIES {
            return Err(ImageError::TooLarge(format!(
                "the archive has more than {MAX_ARCHIVE_ENTRIES} entries"
            )));
        }
        let raw = entry.path().map_err(not_tar)?.into_owned();
        let rel = safe_relative(&raw).map_err(ImageError::InvalidArchive)?;
        let Some(name) = rel.to_str().map(str::to_string) else {
            continue;
        };
        let kind = entry.header().entry_type();
        if kind.is_symlink() {
            let target = entry.link_name().ok().flatten();
            let parent = name.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
            if let Some(t) = target.as_ref().and_then(|t| t.to_str()) {
                if let Some(n) = normalise(&format!("{parent}/{t}")) {
                    out.links.insert(name, n);
                }
            }
            continue;
        }
        if kind.is_hard_link() {
            if let Some(t) = entry.link_name().ok().flatten() {
                if let Some(n) = t.to_str().and_then(normalise) {
                    out.links.insert(name, n);
                }
            }
            continue;
        }
        if !kind.is_file() {
            continue;
        }
        if METADATA.contains(&name.as_str()) {
            out.metadata
                .insert(name.clone(), read_bounded(&mut entry, &name)?);
            continue;
        }
        let named_hex = name
            .strip_prefix("blobs/sha256/")
            .filter(|h| reference::is_sha256_hex(h))
            .map(str::to_string);
        if let Some(hex) = &named_hex {
            if have_blob(hex) {
                out.present.insert(hex.clone(), ());
                continue;
            }
        }
        let file = stage.join(format!("f{count}"));
        let mut w = std::fs::File::create(&file).map_err(|e| ImageError::io(&file, e))?;
        let mut hr = HashReader::new(&mut entry, u64::MAX);
        io::copy(&mut hr, &mut w)
            .map_err(|e| ImageError::InvalidArchive(format!("{name}: reading the archive: {e}")))?;
        w.flush().map_err(|e| ImageError::io(&file, e))?;
        w.sync_all().map_err(|e| ImageError::io(&file, e))?;
        let hex = hr.hex();
        let size = hr.count;
        if let Some(expected) = named_hex {
            if expected != hex {
                return Err(ImageError::DigestMismatch {
                    what: name,
                    expected: format!("sha256:{expected}"),
                    actual: format!("sha256:{hex}"),
                });
            }
        }
        out.files.insert(name, Staged { file, hex, size });
    }
    Ok(out)
}

fn read_bounded(r: &mut impl Read, what: &str) -> Result<Vec<u8>, ImageError> {
    let mut buf = Vec::new();
    r.take(MAX_JSON_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| ImageError::InvalidArchive(format!("{what}: {e}")))?;
    if buf.len() as u64 > MAX_JSON_BYTES {
        return Err(ImageError::TooLarge(format!(
            "{what} is larger than {MAX_JSON_BYTES} bytes"
        )));
    }
    Ok(buf)
}

/// Where the bytes of a blob are: staged from this archive, already in the store, or made here
/// (the manifest synthesised for a `docker save` image).
#[derive(Clone, Debug)]
pub enum BlobSource {
    Staged(PathBuf),
    Store,
    Memory(Vec<u8>),
}

/// One image the archive names, with every blob it needs.
#[derive(Clone, Debug)]
pub struct FoundImage {
    /// Normalised references.
    pub references: Vec<String>,
    pub manifest_hex: String,
    pub manifest: ImageManifest,
    pub config: oci_spec::image::ImageConfiguration,
    /// hex → where its bytes are; covers manifest, config and layers.
    pub blobs: BTreeMap<String, BlobSource>,
}

/// Reads blob `hex` from the archive or the store (bounded), checking `size` if given.
pub struct BlobReader<'a> {
    pub archive: &'a Archive,
    pub store_blob: &'a dyn Fn(&str) -> PathBuf,
}

impl BlobReader<'_> {
    fn source(&self, hex: &str) -> Option<(BlobSource, u64)> {
        let path = format!("blobs/sha256/{hex}");
        if let Some(s) = self.archive.files.get(&path) {
            return Some((BlobSource::Staged(s.file.clone()), s.size));
        }
        // docker save (old format): blobs are not named by digest.
        if let Some(s) = self.archive.files.values().find(|s| s.hex == hex) {
            return Some((BlobSource::Staged(s.file.clone()), s.size));
        }
        let p = (self.store_blob)(hex);
        let size = std::fs::metadata(&p).ok()?.len();
        Some((BlobSource::Store, size))
    }

    /// The file an archive path names (staged, or the store's copy of a skipped blob).
    fn by_path(&self, p: &str) -> Option<Staged> {
        let p = self.archive.resolve(p)?;
        if let Some(s) = self.archive.files.get(&p) {
            return Some(s.clone());
        }
        let hex = self.archive.present_blob(&p)?;
        let file = (self.store_blob)(hex);
        let size = std::fs::metadata(&file).ok()?.len();
        Some(Staged {
            file,
            hex: hex.to_string(),
            size,
        })
    }

    fn path(&self, src: &BlobSource, hex: &str) -> PathBuf {
        match src {
            BlobSource::Staged(p) => p.clone(),
            _ => (self.store_blob)(hex),
        }
    }

    fn need(&self, d: &Descriptor, what: &str) -> Result<(String, BlobSource), ImageError> {
        let hex = d.as_digest_sha256().map(str::to_string).ok_or_else(|| {
            ImageError::Unsupported(format!("{what}: digest {} is not sha256", d.digest()))
        })?;
        let (src, size) = self.source(&hex).ok_or_else(|| {
            ImageError::InvalidArchive(format!(
                "{what} sha256:{hex} is neither in the archive nor in the store"
            ))
        })?;
        if size != d.size() {
            return Err(ImageError::InvalidArchive(format!(
                "{what} sha256:{hex}: {size} bytes, the descriptor says {}",
                d.size()
            )));
        }
        Ok((hex, src))
    }

    fn json(&self, src: &BlobSource, hex: &str, what: &str) -> Result<Vec<u8>, ImageError> {
        let p = self.path(src, hex);
        let f = std::fs::File::open(&p).map_err(|e| ImageError::io(&p, e))?;
        read_bounded(&mut f.take(MAX_JSON_BYTES + 1), what)
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, ImageError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ImageError::InvalidArchive(format!("{what} is not valid: {e}")))
}

/// The images of an OCI image layout (`index.json`).
pub fn oci_images(r: &BlobReader<'_>) -> Result<Vec<FoundImage>, ImageError> {
    let index_bytes = r
        .archive
        .metadata
        .get("index.json")
        .ok_or_else(|| ImageError::InvalidArchive("no index.json".into()))?;
    let index: ImageIndex = parse_json(index_bytes, "index.json")?;
    if index.manifests().len() > MAX_IMAGES {
        return Err(ImageError::TooLarge(format!(
            "index.json lists more than {MAX_IMAGES} manifests"
        )));
    }
    let mut out = Vec::new();
    for d in index.manifests() {
        let ann = d.annotations().clone().unwrap_or_default();
        let name = ann
            .get("io.containerd.image.name")
            .or_else(|| ann.get("org.opencontainers.image.ref.name"))
            .cloned();
        let Some(name) = name else {
            return Err(ImageError::InvalidArchive(format!(
                "index.json: manifest {} has no name (annotation org.opencontainers.image.ref.name)",
                d.digest()
            )));
        };
        if !name.contains(['/', ':', '@']) {
            // A bare tag ("1", "latest") names no repository.
            return Err(ImageError::InvalidArchive(format!(
                "index.json: manifest {} is named only by the tag {name:?}; give it a full reference (org.opencontainers.image.ref.name: registry/repo:tag)",
                d.digest()
            )));
        }
        let reference = reference::normalize(&name).map_err(ImageError::InvalidReference)?;
        let mut blobs = BTreeMap::new();
        let (mut hex, mut src) = r.need(d, "manifest")?;
        let mut bytes = r.json(&src, &hex, "manifest")?;
        // A multi-platform index: take the manifest for this host.
        let is_index = d.media_type() == &MediaType::ImageIndex
            || serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .is_some_and(|v| v.get("manifests").is_some());
        if is_index {
            let nested: ImageIndex = parse_json(&bytes, "image index")?;
            let pick = nested
                .manifests()
                .iter()
                .find(|m| {
                    m.platform().as_ref().is_some_and(|p| {
                        p.os().to_string() == "linux" && p.architecture().to_string() == host_arch()
                    })
                })
                .ok_or_else(|| {
                    ImageError::InvalidArchive(format!(
                        "{reference}: the image index has no linux/{} manifest",
                        host_arch()
                    ))
                })?;
            (hex, src) = r.need(pick, "manifest")?;
            bytes = r.json(&src, &hex, "manifest")?;
        }
        let manifest: ImageManifest = parse_json(&bytes, "manifest")?;
        blobs.insert(hex.clone(), src);
        let found = finish(r, reference, hex, manifest, blobs)?;
        merge(&mut out, found);
    }
    Ok(out)
}

/// Shared tail: config and layers of a manifest.
fn finish(
    r: &BlobReader<'_>,
    reference: String,
    manifest_hex: String,
    manifest: ImageManifest,
    mut blobs: BTreeMap<String, BlobSource>,
) -> Result<FoundImage, ImageError> {
    if manifest.layers().len() > MAX_LAYERS {
        return Err(ImageError::TooLarge(format!(
            "{reference}: more than {MAX_LAYERS} layers"
        )));
    }
    let (chex, csrc) = r.need(manifest.config(), "config")?;
    let cbytes = r.json(&csrc, &chex, "config")?;
    let config: oci_spec::image::ImageConfiguration = parse_json(&cbytes, "image config")?;
    blobs.insert(chex, csrc);
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(ImageError::InvalidArchive(format!(
            "{reference}: {} layers but {} diff ids in the config",
            manifest.layers().len(),
            diff_ids.len()
        )));
    }
    for d in diff_ids {
        let ok = d
            .strip_prefix("sha256:")
            .is_some_and(reference::is_sha256_hex);
        if !ok {
            return Err(ImageError::InvalidArchive(format!(
                "{reference}: diff id {d:?} is not a sha256 digest"
            )));
        }
    }
    for l in manifest.layers() {
        let (lhex, lsrc) = r.need(l, "layer")?;
        blobs.insert(lhex, lsrc);
    }
    Ok(FoundImage {
        references: vec![reference],
        manifest_hex,
        manifest,
        config,
        blobs,
    })
}

fn merge(out: &mut Vec<FoundImage>, found: FoundImage) {
    match out
        .iter_mut()
        .find(|f| f.manifest_hex == found.manifest_hex)
    {
        Some(f) => {
            for r in found.references {
                if !f.references.contains(&r) {
                    f.references.push(r);
                }
            }
        }
        None => out.push(found),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// The images of a `docker save` archive (`manifest.json`). Each gets an OCI manifest made
/// here (deterministically, so a re-import yields the same digest).
pub fn docker_images(r: &BlobReader<'_>) -> Result<Vec<FoundImage>, ImageError> {
    let bytes = r
        .archive
        .metadata
        .get("manifest.json")
        .ok_or_else(|| ImageError::InvalidArchive("no manifest.json".into()))?;
    let entries: Vec<DockerEntry> = parse_json(bytes, "manifest.json")?;
    if entries.len() > MAX_IMAGES {
        return Err(ImageError::TooLarge(format!(
            "manifest.json lists more than {MAX_IMAGES} images"
        )));
    }
    let mut out = Vec::new();
    for e in entries {
        let tags = e.repo_tags.unwrap_or_default();
        if tags.is_empty() {
            return Err(ImageError::InvalidArchive(format!(
                "manifest.json: image {} has no RepoTags (save it by name: docker save NAME:TAG)",
                e.config
            )));
        }
        let staged = |p: &str, what: &str| {
            r.by_path(p).ok_or_else(|| {
                ImageError::InvalidArchive(format!(
                    "manifest.json names {what} {p:?}, which is not in the archive"
                ))
            })
        };
        let config = staged(&e.config, "the config")?;
        if e.layers.len() > MAX_LAYERS {
            return Err(ImageError::TooLarge(format!(
                "{}: more than {MAX_LAYERS} layers",
                tags[0]
            )));
        }
        let mut layer_descs = Vec::new();
        for l in &e.layers {
            let s = staged(l, "the layer")?;
            let mut head = [0u8; 4];
            let n = std::fs::File::open(&s.file)
                .and_then(|mut f| f.read(&mut head))
                .map_err(|err| ImageError::io(&s.file, err))?;
            let media = match sniff(&head[..n]) {
                Compression::Gzip => MediaType::ImageLayerGzip,
                Compression::Zstd => MediaType::ImageLayerZstd,
                Compression::None => MediaType::ImageLayer,
            };
            layer_descs.push(descriptor(media, s.size, &s.hex)?);
        }
        let manifest = oci_spec::image::ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(descriptor(
                MediaType::ImageConfig,
                config.size,
                &config.hex,
            )?)
            .layers(layer_descs)
            .build()
            .map_err(|err| ImageError::InvalidArchive(err.to_string()))?;
        let mbytes = serde_json::to_vec(&manifest)
            .map_err(|err| ImageError::InvalidArchive(err.to_string()))?;
        let mhex = hex::encode(Sha256::digest(&mbytes));
        let mut blobs = BTreeMap::new();
        blobs.insert(mhex.clone(), BlobSource::Memory(mbytes));
        let mut found: Option<FoundImage> = None;
        for t in &tags {
            let reference = reference::normalize(t).map_err(ImageError::InvalidReference)?;
            match &mut found {
                Some(f) => f.references.push(reference),
                None => {
                    found = Some(finish(
                        r,
                        reference,
                        mhex.clone(),
                        manifest.clone(),
                        blobs.clone(),
                    )?)
                }
            }
        }
        if let Some(f) = found {
            merge(&mut out, f);
        }
    }
    Ok(out)
}

fn descriptor(media: MediaType, size: u64, hex: &str) -> Result<Descriptor, ImageError> {
    let digest: oci_spec::image::Digest = format!("sha256:{hex}")
        .parse()
        .map_err(|e: oci_spec::OciSpecError| ImageError::InvalidArchive(e.to_string()))?;
    Ok(Descriptor::new(media, size, digest))
}

/// The host's architecture in OCI/Go spelling.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}
