//! OCI image layouts built in Rust for the registry tests: layers with exactly the entries a
//! test names (modes, owners, links, whiteouts, opaque dirs, and hostile entries written raw),
//! multi-platform indexes, sizable random images, and the testnet's busybox image.
//!
//! Tar headers are GNU headers whose names and link names are copied byte for byte (at most
//! 100 bytes each), so `../escape` or `/etc/passwd` reach the archive as written. Builds are
//! deterministic: fixed mtimes, the entries in the order given.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use rand::{RngCore, SeedableRng};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Every entry's mtime: 2024-01-01T00:00:00Z.
const MTIME: u64 = 1_704_067_200;

pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The OCI name of this machine's architecture (`amd64`, `arm64`, ...).
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => panic!("no OCI architecture name known for {other}"),
    }
}

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    fn compress(self, tar: Vec<u8>) -> Vec<u8> {
        match self {
            Compression::None => tar,
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(&tar).expect("gzip into memory");
                e.finish().expect("gzip into memory")
            }
            Compression::Zstd => zstd::encode_all(&tar[..], 3).expect("zstd into memory"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink,
    HardLink,
}

/// One tar entry of a test layer.
#[derive(Clone, Debug)]
pub struct Entry {
    path: String,
    kind: Kind,
    data: Vec<u8>,
    link: String,
    mode: u32,
    uid: u64,
    gid: u64,
}

impl Entry {
    fn new(path: &str, kind: Kind, mode: u32) -> Entry {
        Entry {
            path: path.to_string(),
            kind,
            data: Vec::new(),
            link: String::new(),
            mode,
            uid: 0,
            gid: 0,
        }
    }

    /// A directory (mode 0755, root). Written as `path/`.
    pub fn dir(path: &str) -> Entry {
        let p = if path.ends_with('/') {
            path.to_string()
        } else {
            format!("{path}/")
        };
        Entry::new(&p, Kind::Dir, 0o755)
    }

    /// A regular file (mode 0644, root).
    pub fn file(path: &str, data: &[u8]) -> Entry {
        let mut e = Entry::new(path, Kind::File, 0o644);
        e.data = data.to_vec();
        e
    }

    /// A symbolic link to `target` (any string: absolute and `../` targets are legal).
    pub fn symlink(path: &str, target: &str) -> Entry {
        let mut e = Entry::new(path, Kind::Symlink, 0o777);
        e.link = target.to_string();
        e
    }

    /// A hard link to `target` (a path inside the layer, as tar records it).
    pub fn hardlink(path: &str, target: &str) -> Entry {
        let mut e = Entry::new(path, Kind::HardLink, 0o644);
        e.link = target.to_string();
        e
    }

    /// The whiteout of `path` (`dir/.wh.name`): deletes `path` of the layers below.
    pub fn whiteout(path: &str) -> Entry {
        let (dir, name) = match path.rsplit_once('/') {
            Some((d, n)) => (format!("{d}/"), n),
            None => (String::new(), path),
        };
        Entry::file(&format!("{dir}.wh.{name}"), b"")
    }

    /// The opaque marker of `dir` (`dir/.wh..wh..opq`): hides everything below it.
    pub fn opaque(dir: &str) -> Entry {
        Entry::file(&format!("{}/.wh..wh..opq", dir.trim_end_matches('/')), b"")
    }

    /// Permission bits (including set-id and sticky bits).
    pub fn mode(mut self, mode: u32) -> Entry {
        self.mode = mode;
        self
    }

    pub fn owner(mut self, uid: u64, gid: u64) -> Entry {
        self.uid = uid;
        self.gid = gid;
        self
    }

    fn header(&self) -> tar::Header {
        assert!(
            self.path.len() <= 100 && self.link.len() <= 100,
            "test layer names are at most 100 bytes: {:?} -> {:?}",
            self.path,
            self.link
        );
        let mut h = tar::Header::new_gnu();
        {
            let g = h.as_gnu_mut().expect("a GNU header");
            g.name[..self.path.len()].copy_from_slice(self.path.as_bytes());
            g.linkname[..self.link.len()].copy_from_slice(self.link.as_bytes());
        }
        h.set_entry_type(match self.kind {
            Kind::Dir => tar::EntryType::Directory,
            Kind::File => tar::EntryType::Regular,
            Kind::Symlink => tar::EntryType::Symlink,
            Kind::HardLink => tar::EntryType::Link,
        });
        h.set_size(self.data.len() as u64);
        h.set_mode(self.mode);
        h.set_uid(self.uid);
        h.set_gid(self.gid);
        h.set_mtime(MTIME);
        h.set_cksum();
        h
    }
}

/// The entries of one layer and how its blob is compressed (gzip unless said otherwise).
#[derive(Clone, Debug)]
pub struct LayerSpec {
    pub entries: Vec<Entry>,
    pub compression: Compression,
}

impl LayerSpec {
    pub fn new(entries: Vec<Entry>) -> LayerSpec {
        LayerSpec {
            entries,
            compression: Compression::Gzip,
        }
    }

    pub fn compression(mut self, c: Compression) -> LayerSpec {
        self.compression = c;
        self
    }

    /// The uncompressed tar.
    pub fn tar(&self) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in &self.entries {
            b.append(&e.header(), &e.data[..]).expect("tar into memory");
        }
        b.into_inner().expect("tar into memory")
    }
}

/// The image config: platform and what a container starts.
#[derive(Clone, Debug)]
pub struct ConfigSpec {
    pub architecture: String,
    pub os: String,
    pub variant: Option<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
}

impl Default for ConfigSpec {
    /// This machine's platform, `sh`, a `PATH`.
    fn default() -> ConfigSpec {
        ConfigSpec {
            architecture: host_arch().to_string(),
            os: "linux".to_string(),
            variant: None,
            cmd: vec!["sh".to_string()],
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
        }
    }
}

impl ConfigSpec {
    /// The default config for another platform.
    pub fn platform(architecture: &str, variant: Option<&str>) -> ConfigSpec {
        ConfigSpec {
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
            ..ConfigSpec::default()
        }
    }

    fn platform_json(&self) -> Value {
        let mut p = json!({"architecture": self.architecture, "os": self.os});
        if let Some(v) = &self.variant {
            p["variant"] = json!(v);
        }
        p
    }
}

/// A content descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    pub size: u64,
}

impl Descriptor {
    fn json(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }
}

/// One layer as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltLayer {
    /// The blob (compressed as asked).
    pub blob: Descriptor,
    /// `sha256:<hex>` of the uncompressed tar (the config's `rootfs.diff_ids`).
    pub diff_id: String,
}

/// One image manifest as written.
#[derive(Clone, Debug)]
pub struct BuiltImage {
    pub manifest: Descriptor,
    pub config: Descriptor,
    pub layers: Vec<BuiltLayer>,
    pub platform: Value,
}

impl BuiltImage {
    /// Manifest, config and layer digests: every blob a pull of this image fetches.
    pub fn blob_digests(&self) -> Vec<String> {
        let mut d = vec![self.config.digest.clone()];
        d.extend(self.layers.iter().map(|l| l.blob.digest.clone()));
        d
    }
}

/// An OCI image layout being written: `oci-layout`, `blobs/sha256/`, and `index.json`
/// (rewritten on every [`OciLayout::tag`]).
pub struct OciLayout {
    dir: PathBuf,
    refs: Vec<Value>,
}

impl OciLayout {
    /// Creates the layout in `dir` (created if needed; an existing `index.json` is replaced).
    pub fn create(dir: &Path) -> OciLayout {
        std::fs::create_dir_all(dir.join("blobs/sha256"))
            .unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
            .unwrap_or_else(|e| panic!("write {}/oci-layout: {e}", dir.display()));
        let layout = OciLayout {
            dir: dir.to_path_buf(),
            refs: Vec::new(),
        };
        layout.write_index();
        layout
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stores `bytes` as a blob.
    pub fn write_blob(&self, media_type: &str, bytes: &[u8]) -> Descriptor {
        let digest = sha256(bytes);
        let path = self.blob_path(&digest);
        std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        Descriptor {
            media_type: media_type.to_string(),
            digest,
            size: bytes.len() as u64,
        }
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        self.dir.join("blobs/sha256").join(hex)
    }

    /// Writes the layers, the config and the manifest of one image (untagged).
    pub fn add_image(&mut self, layers: &[LayerSpec], config: &ConfigSpec) -> BuiltImage {
        let built: Vec<BuiltLayer> = layers
            .iter()
            .map(|l| {
                let tar = l.tar();
                let diff_id = sha256(&tar);
                let blob =
                    self.write_blob(l.compression.media_type(), &l.compression.compress(tar));
                BuiltLayer { blob, diff_id }
            })
            .collect();
        let mut cfg = json!({
            "created": "2024-01-01T00:00:00Z",
            "architecture": config.architecture,
            "os": config.os,
            "config": {"Env": config.env, "Cmd": config.cmd, "WorkingDir": "/"},
            "rootfs": {
                "type": "layers",
                "diff_ids": built.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
            },
        });
        if let Some(v) = &config.variant {
            cfg["variant"] = json!(v);
        }
        let config_desc = self.write_blob(CONFIG_MEDIA_TYPE, &to_bytes(&cfg));
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": config_desc.json(),
            "layers": built.iter().map(|l| l.blob.json()).collect::<Vec<_>>(),
        });
        BuiltImage {
            manifest: self.write_blob(MANIFEST_MEDIA_TYPE, &to_bytes(&manifest)),
            config: config_desc,
            layers: built,
            platform: config.platform_json(),
        }
    }

    /// Writes an image index over `images` (each with its platform); returns its descriptor.
    pub fn add_index(&mut self, images: &[&BuiltImage]) -> Descriptor {
        let manifests: Vec<Value> = images
            .iter()
            .map(|i| {
                let mut d = i.manifest.json();
                d["platform"] = i.platform.clone();
                d
            })
            .collect();
        let index = json!({
            "schemaVersion": 2,
            "mediaType": INDEX_MEDIA_TYPE,
            "manifests": manifests,
        });
        self.write_blob(INDEX_MEDIA_TYPE, &to_bytes(&index))
    }

    /// Names `desc` (a manifest or an index) `tag` in `index.json`
    /// (`org.opencontainers.image.ref.name`, what `skopeo copy oci:<dir>:<tag>` looks up).
    pub fn tag(&mut self, tag: &str, desc: &Descriptor) {
        self.refs
            .retain(|r| r["annotations"]["org.opencontainers.image.ref.name"] != tag);
        let mut d = desc.json();
        d["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
        self.refs.push(d);
        self.write_index();
    }

    fn write_index(&self) {
        let index = json!({
            "schemaVersion": 2,
            "mediaType": INDEX_MEDIA_TYPE,
            "manifests": self.refs,
        });
        let p = self.dir.join("index.json");
        std::fs::write(&p, to_bytes(&index))
            .unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    }
}

fn to_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("JSON into memory")
}

/// A layout in `dir` holding one image named `tag`.
pub fn build_layout(
    dir: &Path,
    tag: &str,
    layers: &[LayerSpec],
    config: &ConfigSpec,
) -> BuiltImage {
    let mut layout = OciLayout::create(dir);
    let image = layout.add_image(layers, config);
    layout.tag(tag, &image.manifest);
    image
}

/// `n` layers of about `total_bytes` together of incompressible (seeded random) data, each
/// a few files of at most 1 MiB under `data<k>/`.
pub fn random_layers(total_bytes: usize, n: usize, seed: u64) -> Vec<LayerSpec> {
    assert!(n > 0, "random_layers: at least one layer");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let per_layer = total_bytes.div_ceil(n);
    (0..n)
        .map(|k| {
            let mut entries = vec![Entry::dir(&format!("data{k}"))];
            let mut left = per_layer;
            let mut f = 0;
            while left > 0 {
                let len = left.min(1 << 20);
                let mut data = vec![0u8; len];
                rng.fill_bytes(&mut data);
                entries.push(Entry::file(&format!("data{k}/f{f}"), &data));
                left -= len;
                f += 1;
            }
            LayerSpec::new(entries)
        })
        .collect()
}

/// Layers that try to write outside the directory they are unpacked into. Each must be
/// refused as an unsafe layer.
pub mod hostile {
    use super::{Entry, LayerSpec};

    /// An entry named `../<name>` (lands next to the unpack dir if followed).
    pub fn dotdot(name: &str) -> LayerSpec {
        LayerSpec::new(vec![Entry::file(&format!("../{name}"), b"escaped")])
    }

    /// An entry `a/../../<name>` hidden behind a real directory.
    pub fn nested_dotdot(name: &str) -> LayerSpec {
        LayerSpec::new(vec![
            Entry::dir("a"),
            Entry::file(&format!("a/../../{name}"), b"escaped"),
        ])
    }

    /// An entry with an absolute path.
    pub fn absolute(path: &str) -> LayerSpec {
        assert!(path.starts_with('/'));
        LayerSpec::new(vec![Entry::file(path, b"escaped")])
    }

    /// A hard link to `../../etc/passwd`.
    pub fn hardlink_escape() -> LayerSpec {
        LayerSpec::new(vec![Entry::hardlink("passwd", "../../etc/passwd")])
    }

    /// A hard link to the absolute `/etc/passwd`.
    pub fn hardlink_absolute() -> LayerSpec {
        LayerSpec::new(vec![Entry::hardlink("passwd", "/etc/passwd")])
    }

    /// A symlink `link -> outside_dir`, then a file written through it (`link/<name>`).
    pub fn write_through_symlink(outside_dir: &str, name: &str) -> LayerSpec {
        LayerSpec::new(vec![
            Entry::symlink("link", outside_dir),
            Entry::file(&format!("link/{name}"), b"escaped"),
        ])
    }

    /// A symlink `up -> ..`, then a file written through it.
    pub fn write_through_relative_symlink(name: &str) -> LayerSpec {
        LayerSpec::new(vec![
            Entry::symlink("up", ".."),
            Entry::file(&format!("up/{name}"), b"escaped"),
        ])
    }
}

/// The testnet's busybox image (`testnet/busybox-image.sh`: Debian's busybox-static, `sh`,
/// every applet linked in `/bin`) as an OCI layout in `dir`, tagged `shoal.test/busybox:1`.
/// Returns that tag and the manifest digest.
pub fn busybox_layout(dir: &Path) -> (String, String) {
    assert!(
        Path::new("/bin/busybox").exists(),
        "missing prerequisite /bin/busybox (Debian package busybox-static): \
         apt-get install busybox-static"
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("testnet/busybox-image.sh");
    let tmp = tempfile::tempdir().expect("a temporary dir");
    let archive = tmp.path().join("busybox-image.tar");
    let out = Command::new(&script)
        .arg(&archive)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{}: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let file = std::fs::File::open(&archive).expect("the busybox archive");
    tar::Archive::new(file)
        .unpack(dir)
        .unwrap_or_else(|e| panic!("unpack {} into {}: {e}", archive.display(), dir.display()));
    let index: Value = serde_json::from_slice(
        &std::fs::read(dir.join("index.json")).expect("index.json of the busybox layout"),
    )
    .expect("index.json is JSON");
    let entry = &index["manifests"][0];
    let tag = entry["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .expect("the busybox layout names its image")
        .to_string();
    let digest = entry["digest"]
        .as_str()
        .expect("a manifest digest")
        .to_string();
    (tag, digest)
}
