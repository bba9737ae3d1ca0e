//! The node-local, content-addressed image store: blobs by sha256 (verified on write),
//! unpacked layers, and a reference → manifest index; imports OCI layout and `docker save`
//! archives.
//!
//! Layout under `dir` (`<data>/images`):
//!
//! ```text
//! lock                    flock held by every writer (import, remove)
//! index.json              {"version":1,"images":{"<normalised reference>":"sha256:<manifest>"}}
//! blobs/sha256/<hex>      manifests, configs and layer blobs, content-addressed
//! layers/<diff id hex>/   one unpacked layer each (read-only by convention), overlay-style:
//!                         whiteouts are char devices 0:0, opaque dirs have
//!                         trusted.overlay.opaque=y
//! tmp/                    uploads (`upload_dir`), import staging, half-unpacked layers
//! ```
//!
//! An import reads the whole archive into `tmp/` first (checking every digest), unpacks the
//! layers the store lacks into temporary dirs (checking diff ids), and only then moves blobs and
//! layers into place and updates `index.json` atomically: a refused archive leaves nothing.

mod archive;
pub mod hosts;
pub mod pull;
mod registry;
pub mod tls;
pub use crate::model::reference;
#[cfg(test)]
mod tests;
mod unpack;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use oci_spec::image::{ImageConfiguration, ImageManifest};
use serde::{Deserialize, Serialize};

pub use crate::model::image::ImageSummary;
pub use unpack::get_xattr;

use archive::{BlobReader, BlobSource, FoundImage};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("invalid image reference: {0}")]
    InvalidReference(String),
    #[error("image {0} is not in this node's store (load it with `shoal image import`)")]
    NotFound(String),
    #[error("invalid image archive: {0}")]
    InvalidArchive(String),
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("unsafe layer refused: {0}")]
    UnsafeLayer(String),
    #[error("too large: {0}")]
    TooLarge(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("the image store is damaged: {0}")]
    Corrupt(String),
    #[error("image {0} is in use by a container on this node")]
    InUse(String),
}

impl ImageError {
    pub fn io(path: &Path, source: io::Error) -> Self {
        ImageError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Whether the fault lies with what the caller sent (an HTTP 4xx), not with this node.
    pub fn is_caller_error(&self) -> bool {
        !matches!(self, ImageError::Io { .. } | ImageError::Corrupt(_))
    }
}

/// The parts of an image's config a container starts from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `NAME=VALUE`.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

/// An image ready to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedImage {
    /// The normalised reference it was resolved by.
    pub reference: String,
    /// `sha256:<hex>` of the manifest.
    pub digest: String,
    pub config: ImageConfig,
    /// Unpacked layer dirs, bottom first (overlayfs' `lowerdir=` wants them reversed). They
    /// hold overlay-style whiteouts; never write into them.
    pub layers: Vec<PathBuf>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct IndexFile {
    version: u32,
    /// Normalised reference (without digest) → `sha256:<manifest hex>`.
    images: BTreeMap<String, String>,
}

const INDEX_VERSION: u32 = 1;

static UNIQUE: AtomicU64 = AtomicU64::new(0);

fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{}-{nanos}-{}",
        std::process::id(),
        UNIQUE.fetch_add(1, Ordering::Relaxed)
    )
}

/// Removes a path (file or dir) when dropped, unless disarmed.
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = match std::fs::symlink_metadata(p) {
                Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
                Ok(_) => std::fs::remove_file(p),
                Err(_) => Ok(()),
            };
        }
    }
}

/// One node's image store. Cheap to open; several instances (and processes) may share a
/// directory: writers serialise on a file lock, readers see `index.json` replaced atomically.
#[derive(Clone, Debug)]
pub struct ImageStore {
    dir: PathBuf,
}

impl ImageStore {
    /// Opens (creating if needed) the store in `dir`; removes what interrupted imports left.
    pub fn open(dir: &Path) -> Result<ImageStore, ImageError> {
        let store = ImageStore {
            dir: dir.to_path_buf(),
        };
        for d in [
            store.dir.clone(),
            store.dir.join("blobs/sha256"),
            store.dir.join("layers"),
            store.upload_dir(),
        ] {
            std::fs::create_dir_all(&d).map_err(|e| ImageError::io(&d, e))?;
        }
        let lock = store.lock_file()?;
        if lock.try_lock().is_ok() {
            store.remove_leftovers();
        }
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where uploads are written before `import` (same filesystem as the store).
    pub fn upload_dir(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    fn lock_file(&self) -> Result<std::fs::File, ImageError> {
        let p = self.dir.join("lock");
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(|e| ImageError::io(&p, e))
    }

    fn lock(&self) -> Result<std::fs::File, ImageError> {
        let f = self.lock_file()?;
        f.lock()
            .map_err(|e| ImageError::io(&self.dir.join("lock"), e))?;
        Ok(f)
    }

    fn remove_leftovers(&self) {
        let stale = |dir: PathBuf, prefix: &str| {
            if let Ok(rd) = std::fs::read_dir(&dir) {
                for e in rd.flatten() {
                    if e.file_name().to_string_lossy().starts_with(prefix) {
                        drop(Cleanup(vec![e.path()]));
                    }
                }
            }
        };
        stale(self.upload_dir(), "stage-");
        stale(self.upload_dir(), "dl-");
        stale(self.dir.join("layers"), ".tmp-");
    }

    fn blob_path(&self, hex: &str) -> PathBuf {
        self.dir.join("blobs/sha256").join(hex)
    }

    fn layer_path(&self, diff_hex: &str) -> PathBuf {
        self.dir.join("layers").join(diff_hex)
    }

    /// Whether the store holds blob `sha256:<hex>` (complete and verified: blobs only land
    /// by rename after their digest was checked).
    pub fn has_blob(&self, hex: &str) -> bool {
        reference::is_sha256_hex(hex) && self.blob_path(hex).is_file()
    }

    /// The file of blob `sha256:<hex>` if the store holds it.
    pub fn blob_file(&self, hex: &str) -> Option<PathBuf> {
        self.has_blob(hex).then(|| self.blob_path(hex))
    }

    /// A fresh path in `tmp/` (same file system as the blobs) for a download.
    pub(crate) fn download_path(&self, hex: &str) -> PathBuf {
        self.upload_dir().join(format!("dl-{hex}-{}", unique()))
    }

    /// Moves a downloaded file whose sha256 the caller verified to be `hex` into the store.
    pub(crate) fn commit_blob(&self, hex: &str, file: &Path) -> Result<(), ImageError> {
        if !reference::is_sha256_hex(hex) {
            return Err(ImageError::InvalidReference(format!(
                "bad digest sha256:{hex}"
            )));
        }
        let dst = self.blob_path(hex);
        std::fs::rename(file, &dst).map_err(|e| ImageError::io(&dst, e))
    }

    /// Reads blob `hex` (bounded: manifests, indexes and configs).
    pub(crate) fn read_small_blob(&self, hex: &str) -> Result<Vec<u8>, ImageError> {
        let p = self.blob_path(hex);
        let f = std::fs::File::open(&p).map_err(|e| ImageError::io(&p, e))?;
        let mut buf = Vec::new();
        f.take(archive::MAX_JSON_BYTES + 1)
            .read_to_end(&mut buf)
            .map_err(|e| ImageError::io(&p, e))?;
        if buf.len() as u64 > archive::MAX_JSON_BYTES {
            return Err(ImageError::TooLarge(format!(
                "blob sha256:{hex} is over {} bytes",
                archive::MAX_JSON_BYTES
            )));
        }
        Ok(buf)
    }

    /// Unpacks layer blob `blob_hex` (which must be present) as diff id `diff_hex`, unless that
    /// layer is unpacked already. Safe to race with another unpack of the same layer.
    pub fn ensure_layer(&self, blob_hex: &str, diff_hex: &str) -> Result<(), ImageError> {
        if !reference::is_sha256_hex(diff_hex) {
            return Err(ImageError::Corrupt(format!(
                "bad diff id sha256:{diff_hex}"
            )));
        }
        let dst = self.layer_path(diff_hex);
        if dst.is_dir() {
            return Ok(());
        }
        let src = self.blob_file(blob_hex).ok_or_else(|| {
            ImageError::Corrupt(format!("layer blob sha256:{blob_hex} is missing"))
        })?;
        let tmp = self
            .dir
            .join("layers")
            .join(format!(".tmp-{diff_hex}-{}", unique()));
        let _cleanup = Cleanup(vec![tmp.clone()]);
        unpack::unpack_layer(&src, &tmp, diff_hex)?;
        match std::fs::rename(&tmp, &dst) {
            Ok(()) => Ok(()),
            // Another pull unpacked it first.
            Err(_) if dst.is_dir() => Ok(()),
            Err(e) => Err(ImageError::io(&dst, e)),
        }
    }

    /// Names manifest `sha256:<manifest_hex>` (whose config and layers must be present and
    /// unpacked) as `reference`: a tag reference maps its name, a digest reference
    /// (`name@sha256:<index or manifest>`) gets an alias to the platform manifest.
    pub fn tag(&self, reference: &str, manifest_hex: &str) -> Result<ImageSummary, ImageError> {
        let r = reference::parse(reference).map_err(ImageError::InvalidReference)?;
        let _lock = self.lock()?;
        let manifest: ImageManifest = self.read_json(manifest_hex)?;
        let config_hex = manifest
            .config()
            .as_digest_sha256()
            .ok_or_else(|| ImageError::Corrupt("config digest is not sha256".into()))?;
        let config: ImageConfiguration = self.read_json(config_hex)?;
        for d in config.rootfs().diff_ids() {
            let hex = d.trim_start_matches("sha256:");
            if !reference::is_sha256_hex(hex) || !self.layer_path(hex).is_dir() {
                return Err(ImageError::Corrupt(format!(
                    "{r}: layer {d} is not unpacked"
                )));
            }
        }
        let key = r.index_key();
        let mut idx = self.read_index()?;
        idx.version = INDEX_VERSION;
        let digest = format!("sha256:{manifest_hex}");
        idx.images.insert(key.clone(), digest.clone());
        self.write_index(&idx)?;
        self.touch(manifest_hex);
        Ok(ImageSummary {
            reference: key,
            digest,
            size: manifest.layers().iter().map(|l| l.size()).sum(),
        })
    }

    /// Marks an image as used now (its manifest blob's mtime): garbage collection removes the
    /// least recently used images first.
    pub fn touch(&self, manifest_hex: &str) {
        if let Ok(f) = std::fs::File::options()
            .write(true)
            .open(self.blob_path(manifest_hex))
        {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
    }

    /// The manifest digest `reference` names in the index (`None`: not present).
    pub fn lookup(&self, reference: &str) -> Option<String> {
        let r = reference::parse(reference).ok()?;
        let idx = self.read_index().ok()?;
        let key = r.index_key();
        idx.images.get(&key).cloned()
    }

    fn read_index(&self) -> Result<IndexFile, ImageError> {
        let p = self.dir.join("index.json");
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| ImageError::Corrupt(format!("{}: {e}", p.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(IndexFile {
                version: INDEX_VERSION,
                images: BTreeMap::new(),
            }),
            Err(e) => Err(ImageError::io(&p, e)),
        }
    }

    fn write_index(&self, idx: &IndexFile) -> Result<(), ImageError> {
        let p = self.dir.join("index.json");
        let bytes =
            serde_json::to_vec_pretty(idx).map_err(|e| ImageError::Corrupt(e.to_string()))?;
        crate::state::write_atomic(&p, &bytes, 0o644).map_err(|e| ImageError::io(&p, e))
    }

    fn read_json<T: serde::de::DeserializeOwned>(&self, hex: &str) -> Result<T, ImageError> {
        let p = self.blob_path(hex);
        let f = std::fs::File::open(&p).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ImageError::Corrupt(format!("blob sha256:{hex} is missing")),
            _ => ImageError::io(&p, e),
        })?;
        let mut buf = Vec::new();
        f.take(archive::MAX_JSON_BYTES + 1)
            .read_to_end(&mut buf)
            .map_err(|e| ImageError::io(&p, e))?;
        serde_json::from_slice(&buf)
            .map_err(|e| ImageError::Corrupt(format!("blob sha256:{hex}: {e}")))
    }

    /// Finds an image by reference (normalised like Docker; `name@sha256:...` by digest).
    pub fn resolve(&self, reference: &str) -> Result<ResolvedImage, ImageError> {
        let r = reference::parse(reference).map_err(ImageError::InvalidReference)?;
        let manifest_hex = match &r.digest {
            // A pulled digest reference may name an index: its alias names the manifest.
            Some(d) => match self.read_index()?.images.get(&r.to_string()) {
                Some(m) => m.trim_start_matches("sha256:").to_string(),
                None => {
                    let hex = d.trim_start_matches("sha256:").to_string();
                    if !self.has_blob(&hex) {
                        return Err(ImageError::NotFound(r.to_string()));
                    }
                    hex
                }
            },
            None => {
                let idx = self.read_index()?;
                let d = idx
                    .images
                    .get(&r.named())
                    .ok_or_else(|| ImageError::NotFound(r.to_string()))?;
                d.trim_start_matches("sha256:").to_string()
            }
        };
        let manifest: ImageManifest = self.read_json(&manifest_hex)?;
        let config_hex = manifest
            .config()
            .as_digest_sha256()
            .ok_or_else(|| ImageError::Corrupt("config digest is not sha256".into()))?;
        let config: ImageConfiguration = self.read_json(config_hex)?;
        let mut layers = Vec::new();
        for d in config.rootfs().diff_ids() {
            let hex = d.trim_start_matches("sha256:");
            let p = self.layer_path(hex);
            if !reference::is_sha256_hex(hex) || !p.is_dir() {
                return Err(ImageError::Corrupt(format!(
                    "{r}: layer {d} is not unpacked (import the image again)"
                )));
            }
            layers.push(p);
        }
        Ok(ResolvedImage {
            reference: r.to_string(),
            digest: format!("sha256:{manifest_hex}"),
            config: image_config(&config),
            layers,
        })
    }

    /// Loads every image of an archive (OCI image layout tar or `docker save` tar, possibly
    /// gzipped). Idempotent: what the store has is not unpacked again.
    pub fn import(&self, archive_path: &Path) -> Result<Vec<ImageSummary>, ImageError> {
        let _lock = self.lock()?;
        let stage = self.upload_dir().join(format!("stage-{}", unique()));
        std::fs::create_dir(&stage).map_err(|e| ImageError::io(&stage, e))?;
        let _stage_cleanup = Cleanup(vec![stage.clone()]);
        let have = |hex: &str| self.has_blob(hex);
        let arch = archive::read(archive_path, &stage, &have)?;
        let store_blob = |hex: &str| self.blob_path(hex);
        let reader = BlobReader {
            archive: &arch,
            store_blob: &store_blob,
        };
        let images = if arch.metadata.contains_key("manifest.json") {
            archive::docker_images(&reader)?
        } else if arch.metadata.contains_key("index.json") {
            archive::oci_images(&reader)?
        } else {
            return Err(ImageError::InvalidArchive(
                "neither an OCI image layout (no index.json) nor a `docker save` archive (no manifest.json)".into(),
            ));
        };
        if images.is_empty() {
            return Err(ImageError::InvalidArchive(
                "the archive holds no image".into(),
            ));
        }

        // Unpack the layers the store lacks, each into a temporary dir.
        let mut new_layers: BTreeMap<String, PathBuf> = BTreeMap::new();
        let mut layer_cleanup = Cleanup(Vec::new());
        for img in &images {
            for (desc, diff) in img
                .manifest
                .layers()
                .iter()
                .zip(img.config.rootfs().diff_ids())
            {
                let diff_hex = diff.trim_start_matches("sha256:").to_string();
                if new_layers.contains_key(&diff_hex) || self.layer_path(&diff_hex).is_dir() {
                    continue;
                }
                let blob_hex = desc.as_digest_sha256().unwrap_or_default();
                let src = match img.blobs.get(blob_hex) {
                    Some(BlobSource::Staged(p)) => p.clone(),
                    Some(BlobSource::Store) => self.blob_path(blob_hex),
                    _ => {
                        return Err(ImageError::InvalidArchive(format!(
                            "layer sha256:{blob_hex} has no content"
                        )))
                    }
                };
                let tmp = self
                    .dir
                    .join("layers")
                    .join(format!(".tmp-{diff_hex}-{}", unique()));
                layer_cleanup.0.push(tmp.clone());
                unpack::unpack_layer(&src, &tmp, &diff_hex)?;
                new_layers.insert(diff_hex, tmp);
            }
        }

        // Commit: blobs, then layers, then the index.
        for img in &images {
            for (hex, src) in &img.blobs {
                if self.has_blob(hex) {
                    continue;
                }
                let dst = self.blob_path(hex);
                match src {
                    BlobSource::Staged(p) => {
                        std::fs::rename(p, &dst).map_err(|e| ImageError::io(&dst, e))?
                    }
                    BlobSource::Memory(b) => crate::state::write_atomic(&dst, b, 0o644)
                        .map_err(|e| ImageError::io(&dst, e))?,
                    BlobSource::Store => {
                        return Err(ImageError::Corrupt(format!(
                            "blob sha256:{hex} vanished during the import"
                        )))
                    }
                }
            }
        }
        sync_dir(&self.dir.join("blobs/sha256"))?;
        for (diff_hex, tmp) in &new_layers {
            let dst = self.layer_path(diff_hex);
            std::fs::rename(tmp, &dst).map_err(|e| ImageError::io(&dst, e))?;
        }
        sync_dir(&self.dir.join("layers"))?;
        let mut idx = self.read_index()?;
        idx.version = INDEX_VERSION;
        let mut out = Vec::new();
        for img in &images {
            for r in &img.references {
                let named = reference::parse(r)
                    .map_err(ImageError::InvalidReference)?
                    .named();
                idx.images
                    .insert(named.clone(), format!("sha256:{}", img.manifest_hex));
                out.push(summary(named, img));
            }
        }
        self.write_index(&idx)?;
        Ok(out)
    }

    /// Every named image in the store.
    pub fn list(&self) -> Vec<ImageSummary> {
        let idx = match self.read_index() {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(%e, "reading the image index");
                return Vec::new();
            }
        };
        idx.images
            .iter()
            .map(|(r, d)| {
                let hex = d.trim_start_matches("sha256:");
                let size = self
                    .read_json::<ImageManifest>(hex)
                    .map(|m| m.layers().iter().map(|l| l.size()).sum())
                    .unwrap_or(0);
                ImageSummary {
                    reference: r.clone(),
                    digest: d.clone(),
                    size,
                }
            })
            .collect()
    }

    /// Drops a reference (or, given `name@sha256:...`, every reference to that manifest) and
    /// deletes the blobs and layers no remaining image uses. The caller makes sure no container
    /// runs from the image.
    pub fn remove(&self, reference: &str) -> Result<(), ImageError> {
        self.remove_protecting(reference, &BTreeSet::new())
    }

    /// [`ImageStore::remove`], keeping the unpacked layers named in `protect` (diff id hex:
    /// layers containers use) even if no image names them any more.
    pub fn remove_protecting(
        &self,
        reference: &str,
        protect: &BTreeSet<String>,
    ) -> Result<(), ImageError> {
        let r = reference::parse(reference).map_err(ImageError::InvalidReference)?;
        let _lock = self.lock()?;
        let mut idx = self.read_index()?;
        let before = idx.images.len();
        match &r.digest {
            Some(d) => idx.images.retain(|k, v| v != d && k != &r.to_string()),
            None => {
                idx.images.remove(&r.named());
            }
        }
        if idx.images.len() == before {
            return Err(ImageError::NotFound(r.to_string()));
        }
        self.write_index(&idx)?;
        self.sweep_locked(&idx, protect);
        Ok(())
    }

    /// Deletes the blobs and layers no image in the index reaches (what seeds fetched for
    /// peers, what removed images left), keeping the layers named in `protect`.
    pub fn sweep(&self, protect: &BTreeSet<String>) -> Result<(), ImageError> {
        let _lock = self.lock()?;
        let idx = self.read_index()?;
        self.sweep_locked(&idx, protect);
        Ok(())
    }

    fn sweep_locked(&self, idx: &IndexFile, protect: &BTreeSet<String>) {
        let mut blobs = BTreeSet::new();
        let mut layers = protect.clone();
        for d in idx.images.values() {
            let hex = d.trim_start_matches("sha256:").to_string();
            let Ok(m) = self.read_json::<ImageManifest>(&hex) else {
                continue;
            };
            blobs.insert(hex);
            let chex = m
                .config()
                .as_digest_sha256()
                .unwrap_or_default()
                .to_string();
            if let Ok(c) = self.read_json::<ImageConfiguration>(&chex) {
                for id in c.rootfs().diff_ids() {
                    layers.insert(id.trim_start_matches("sha256:").to_string());
                }
            }
            blobs.insert(chex);
            for l in m.layers() {
                blobs.insert(l.as_digest_sha256().unwrap_or_default().to_string());
            }
        }
        let sweep = |dir: PathBuf, keep: &BTreeSet<String>| {
            if let Ok(rd) = std::fs::read_dir(&dir) {
                for e in rd.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if reference::is_sha256_hex(&name) && !keep.contains(&name) {
                        drop(Cleanup(vec![e.path()]));
                    }
                }
            }
        };
        sweep(self.dir.join("blobs/sha256"), &blobs);
        sweep(self.dir.join("layers"), &layers);
    }

    /// Every blob (hex) with its modification time.
    pub fn blobs(&self) -> Vec<(String, std::time::SystemTime)> {
        let dir = self.dir.join("blobs/sha256");
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                if !reference::is_sha256_hex(&name) {
                    return None;
                }
                let m = e.metadata().ok()?.modified().ok()?;
                Some((name, m))
            })
            .collect()
    }

    /// The diff ids (hex) of the layers of image `reference`.
    pub fn layer_ids(&self, reference: &str) -> Result<Vec<String>, ImageError> {
        let img = self.resolve(reference)?;
        Ok(img
            .layers
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }

    /// Named images, least recently used (pulled, imported or started) first.
    pub fn least_recently_used(&self) -> Vec<(String, std::time::SystemTime)> {
        let Ok(idx) = self.read_index() else {
            return Vec::new();
        };
        let mut out: Vec<(String, std::time::SystemTime)> = idx
            .images
            .iter()
            .map(|(r, d)| {
                let t = std::fs::metadata(self.blob_path(d.trim_start_matches("sha256:")))
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH);
                (r.clone(), t)
            })
            .collect();
        out.sort_by_key(|(_, t)| *t);
        out
    }

    /// Bytes the store takes on disk: blobs plus unpacked layers (walked; call it seldom).
    pub fn disk_bytes(&self) -> u64 {
        fn walk(p: &Path) -> u64 {
            let Ok(m) = std::fs::symlink_metadata(p) else {
                return 0;
            };
            if !m.is_dir() {
                return m.len();
            }
            std::fs::read_dir(p)
                .map(|rd| rd.flatten().map(|e| walk(&e.path())).sum())
                .unwrap_or(0)
        }
        walk(&self.dir.join("blobs")) + walk(&self.dir.join("layers"))
    }
}

fn summary(reference: String, img: &FoundImage) -> ImageSummary {
    ImageSummary {
        reference,
        digest: format!("sha256:{}", img.manifest_hex),
        size: img.manifest.layers().iter().map(|l| l.size()).sum(),
    }
}

fn image_config(c: &ImageConfiguration) -> ImageConfig {
    let Some(cfg) = c.config() else {
        return ImageConfig::default();
    };
    ImageConfig {
        entrypoint: cfg.entrypoint().clone().unwrap_or_default(),
        cmd: cfg.cmd().clone().unwrap_or_default(),
        env: cfg.env().clone().unwrap_or_default(),
        working_dir: cfg.working_dir().clone().filter(|w| !w.is_empty()),
        user: cfg.user().clone().filter(|u| !u.is_empty()),
    }
}

fn sync_dir(p: &Path) -> Result<(), ImageError> {
    std::fs::File::open(p)
        .and_then(|f| f.sync_all())
        .map_err(|e| ImageError::io(p, e))
}
