//! Unpacks one layer tar (plain, gzip or zstd) into a fresh directory, safely: no entry may leave the
//! directory or write through a symlink; OCI whiteouts become overlay whiteouts; the sha256 of
//! the uncompressed stream is checked against the layer's diff id.

use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use super::ImageError;

/// Entries in one layer.
pub const MAX_LAYER_ENTRIES: u64 = 1_000_000;
/// Uncompressed bytes of one layer.
pub const MAX_LAYER_BYTES: u64 = 64 << 30;
/// Bytes of one path inside a layer (Linux' PATH_MAX).
pub const MAX_PATH_BYTES: usize = 4096;

/// A reader that hashes and counts what passes through it, failing past `limit` bytes.
pub struct HashReader<R> {
    pub inner: R,
    pub hasher: Sha256,
    pub count: u64,
    pub limit: u64,
}

impl<R: Read> HashReader<R> {
    pub fn new(inner: R, limit: u64) -> Self {
        HashReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
            limit,
        }
    }
    pub fn hex(&self) -> String {
        hex::encode(self.hasher.clone().finalize())
    }
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        if self.count > self.limit {
            return Err(io::Error::other(format!("more than {} bytes", self.limit)));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// The compression of a layer blob, from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

pub fn sniff(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// Opens `file` decompressed (gzip, zstd or none).
pub fn open_decompressed(file: &Path) -> Result<Box<dyn Read>, ImageError> {
    let f = std::fs::File::open(file).map_err(|e| ImageError::io(file, e))?;
    let mut r = BufReader::with_capacity(256 * 1024, f);
    let head = r.fill_buf().map_err(|e| ImageError::io(file, e))?.to_vec();
    match sniff(&head) {
        Compression::Gzip => Ok(Box::new(flate2::read::MultiGzDecoder::new(r))),
        Compression::Zstd => Ok(Box::new(
            zstd::stream::read::Decoder::with_buffer(r).map_err(|e| ImageError::io(file, e))?,
        )),
        Compression::None => Ok(Box::new(r)),
    }
}

/// A path inside an archive, made relative and checked: no `..`, not absolute, bounded.
/// `.` components are dropped; the empty path is the archive's root.
pub fn safe_relative(p: &Path) -> Result<PathBuf, String> {
    let bytes = p.as_os_str().as_bytes();
    if bytes.len() > MAX_PATH_BYTES {
        return Err(format!("a path longer than {MAX_PATH_BYTES} bytes"));
    }
    if bytes.contains(&0) {
        return Err("a path with a NUL byte".into());
    }
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => return Err(format!("{}: a `..` component", p.display())),
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("{}: an absolute path", p.display()))
            }
        }
    }
    Ok(out)
}

struct DirMeta {
    path: PathBuf,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: u64,
}

/// Unpacks the layer blob `blob` into `dest` (which must not exist) and checks its diff id.
/// On error `dest` may be partly written: the caller removes it.
pub fn unpack_layer(blob: &Path, dest: &Path, diff_id_hex: &str) -> Result<(), ImageError> {
    std::fs::create_dir(dest).map_err(|e| ImageError::io(dest, e))?;
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| ImageError::io(dest, e))?;
    let reader = open_decompressed(blob)?;
    let mut hashing = HashReader::new(reader, MAX_LAYER_BYTES);
    let layer = format!("layer sha256:{diff_id_hex}");
    let bad = |what: String| ImageError::UnsafeLayer(format!("{layer}: {what}"));
    let mut dirs: Vec<DirMeta> = Vec::new();
    {
        let mut archive = tar::Archive::new(&mut hashing);
        let entries = archive
            .entries()
            .map_err(|e| ImageError::InvalidArchive(format!("{layer}: not a tar archive: {e}")))?;
        let mut count = 0u64;
        for entry in entries {
            let mut entry = entry.map_err(|e| {
                ImageError::InvalidArchive(format!("{layer}: not a valid tar archive: {e}"))
            })?;
            count += 1;
            if count > MAX_LAYER_ENTRIES {
                return Err(ImageError::TooLarge(format!(
                    "{layer}: more than {MAX_LAYER_ENTRIES} entries"
                )));
            }
            let raw = entry
                .path()
                .map_err(|e| ImageError::InvalidArchive(format!("{layer}: entry path: {e}")))?
                .into_owned();
            let rel = safe_relative(&raw).map_err(&bad)?;
            let xattrs = pax_xattrs(&mut entry);
            let header = entry.header();
            let kind = header.entry_type();
            let mode = header.mode().unwrap_or(0o644) & 0o7777;
            let uid = id32(header.uid()).map_err(&bad)?;
            let gid = id32(header.gid()).map_err(&bad)?;
            let mtime = header.mtime().unwrap_or(0);
            if rel.as_os_str().is_empty() {
                if kind.is_dir() {
                    dirs.push(DirMeta {
                        path: dest.to_path_buf(),
                        mode,
                        uid,
                        gid,
                        mtime,
                    });
                }
                continue;
            }
            let name = rel
                .file_name()
                .map(|n| n.as_bytes().to_vec())
                .unwrap_or_default();
            let parent_rel = rel.parent().unwrap_or(Path::new(""));
            let parent = ensure_dirs(dest, parent_rel).map_err(|e| match e {
                Walk::Symlink(p) => bad(format!(
                    "{}: would write through the symlink {}",
                    raw.display(),
                    p.display()
                )),
                Walk::NotDir(p) => bad(format!(
                    "{}: {} is not a directory",
                    raw.display(),
                    p.display()
                )),
                Walk::Io(p, e) => ImageError::io(&p, e),
            })?;
            // Whiteouts (OCI image spec, "Representing Changes") → overlayfs whiteouts.
            if let Some(hidden) = name.strip_prefix(b".wh.") {
                if hidden == b".wh..opq" {
                    set_xattr(&parent, "trusted.overlay.opaque", b"y")?;
                } else if !hidden.starts_with(b".wh.") && !hidden.is_empty() {
                    let target = parent.join(std::ffi::OsStr::from_bytes(hidden));
                    remove_existing(&target)?;
                    nix::sys::stat::mknod(
                        &target,
                        nix::sys::stat::SFlag::S_IFCHR,
                        nix::sys::stat::Mode::empty(),
                        nix::sys::stat::makedev(0, 0),
                    )
                    .map_err(|e| ImageError::io(&target, e.into()))?;
                }
                continue;
            }
            let target = dest.join(&rel);
            use tar::EntryType as T;
            match kind {
                T::Directory => {
                    let is_dir = std::fs::symlink_metadata(&target)
                        .map(|m| m.is_dir())
                        .unwrap_or(false);
                    if !is_dir {
                        remove_existing(&target)?;
                        std::fs::create_dir(&target).map_err(|e| ImageError::io(&target, e))?;
                    }
                    dirs.push(DirMeta {
                        path: target,
                        mode,
                        uid,
                        gid,
                        mtime,
                    });
                }
                T::Regular | T::Continuous | T::GNUSparse => {
                    remove_existing(&target)?;
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
                        .mode(0o600)
                        .open(&target)
                        .map_err(|e| ImageError::io(&target, e))?;
                    io::copy(&mut entry, &mut f).map_err(|e| {
                        ImageError::InvalidArchive(format!("{layer}: {}: {e}", raw.display()))
                    })?;
                    drop(f);
                    set_meta(&target, Some(mode), uid, gid, mtime)?;
                    // After chown, which drops file capabilities.
                    for (name, value) in &xattrs {
                        set_xattr(&target, name, value)?;
                    }
                }
                T::Symlink => {
                    let link = entry
                        .link_name()
                        .ok()
                        .flatten()
                        .ok_or_else(|| bad(format!("{}: symlink without a target", raw.display())))?
                        .into_owned();
                    if link.as_os_str().len() > MAX_PATH_BYTES {
                        return Err(bad(format!("{}: symlink target too long", raw.display())));
                    }
                    remove_existing(&target)?;
                    std::os::unix::fs::symlink(&link, &target)
                        .map_err(|e| ImageError::io(&target, e))?;
                    set_meta(&target, None, uid, gid, mtime)?;
                }
                T::Link => {
                    let link = entry
                        .link_name()
                        .ok()
                        .flatten()
                        .ok_or_else(|| {
                            bad(format!("{}: hard link without a target", raw.display()))
                        })?
                        .into_owned();
                    let link_rel = safe_relative(&link)
                        .map_err(|e| bad(format!("hard link {}: {e}", raw.display())))?;
                    let src = existing_inside(dest, &link_rel).ok_or_else(|| {
                        bad(format!(
                            "{}: hard link to {}, which is not a file of this layer",
                            raw.display(),
                            link.display()
                        ))
                    })?;
                    if src == target {
                        continue;
                    }
                    remove_existing(&target)?;
                    std::fs::hard_link(&src, &target).map_err(|e| ImageError::io(&target, e))?;
                }
                T::Char | T::Block | T::Fifo => {
                    let sflag = match kind {
                        T::Char => nix::sys::stat::SFlag::S_IFCHR,
                        T::Block => nix::sys::stat::SFlag::S_IFBLK,
                        _ => nix::sys::stat::SFlag::S_IFIFO,
                    };
                    let major = header.device_major().ok().flatten().unwrap_or(0);
                    let minor = header.device_minor().ok().flatten().unwrap_or(0);
                    remove_existing(&target)?;
                    nix::sys::stat::mknod(
                        &target,
                        sflag,
                        nix::sys::stat::Mode::from_bits_truncate(0o600),
                        nix::sys::stat::makedev(major.into(), minor.into()),
                    )
                    .map_err(|e| ImageError::io(&target, e.into()))?;
                    set_meta(&target, Some(mode), uid, gid, mtime)?;
                }
                // Extension headers are folded into their entries by the tar crate; anything
                // else (global PAX headers, volume labels) carries no file.
                _ => {}
            }
        }
    }
    // The diff id covers the whole uncompressed stream, padding after the end marker included.
    io::copy(&mut hashing, &mut io::sink())
        .map_err(|e| ImageError::InvalidArchive(format!("{layer}: {e}")))?;
    let actual = hashing.hex();
    if actual != diff_id_hex {
        return Err(ImageError::DigestMismatch {
            what: "layer diff id".into(),
            expected: format!("sha256:{diff_id_hex}"),
            actual: format!("sha256:{actual}"),
        });
    }
    // Directory metadata last: writing children changes a directory's mtime.
    for d in dirs.iter().rev() {
        set_meta(&d.path, Some(d.mode), d.uid, d.gid, d.mtime)?;
    }
    Ok(())
}

/// Extended attributes a layer may carry (PAX `SCHILY.xattr.*`): file capabilities and the
/// `user.` namespace. Others (`trusted.overlay.*` above all) would let a layer steer overlayfs.
fn pax_xattrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> Vec<(String, Vec<u8>)> {
    let Ok(Some(exts)) = entry.pax_extensions() else {
        return Vec::new();
    };
    exts.filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.key().ok()?.strip_prefix("SCHILY.xattr.")?;
            let allowed = name == "security.capability" || name.starts_with("user.");
            (allowed && name.len() <= 255 && e.value_bytes().len() <= 64 * 1024)
                .then(|| (name.to_string(), e.value_bytes().to_vec()))
        })
        .take(64)
        .collect()
}

fn id32(v: io::Result<u64>) -> Result<u32, String> {
    let v = v.map_err(|e| format!("bad owner field: {e}"))?;
    u32::try_from(v).map_err(|_| format!("owner id {v} out of range"))
}

enum Walk {
    Symlink(PathBuf),
    NotDir(PathBuf),
    Io(PathBuf, io::Error),
}

/// Makes sure every component of `rel` under `root` is a real directory (created 0755 when
/// missing); a symlink anywhere on the way is refused. Returns `root/rel`.
fn ensure_dirs(root: &Path, rel: &Path) -> Result<PathBuf, Walk> {
    let mut cur = root.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => return Err(Walk::Symlink(cur)),
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(Walk::NotDir(cur)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir(&cur).map_err(|e| Walk::Io(cur.clone(), e))?;
                std::fs::set_permissions(&cur, std::fs::Permissions::from_mode(0o755))
                    .map_err(|e| Walk::Io(cur.clone(), e))?;
            }
            Err(e) => return Err(Walk::Io(cur, e)),
        }
    }
    Ok(cur)
}

/// `root/rel` if it exists, is not a directory, and no parent on the way is a symlink.
fn existing_inside(root: &Path, rel: &Path) -> Option<PathBuf> {
    if rel.as_os_str().is_empty() {
        return None;
    }
    let mut cur = root.to_path_buf();
    let n = rel.components().count();
    for (i, c) in rel.components().enumerate() {
        cur.push(c);
        let m = std::fs::symlink_metadata(&cur).ok()?;
        if i + 1 < n {
            if !m.is_dir() {
                return None;
            }
        } else if m.is_dir() {
            return None;
        }
    }
    Some(cur)
}

/// Removes whatever is at `p` (a directory with its contents), never following a symlink.
fn remove_existing(p: &Path) -> Result<(), ImageError> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p).map_err(|e| ImageError::io(p, e)),
        Ok(_) => std::fs::remove_file(p).map_err(|e| ImageError::io(p, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ImageError::io(p, e)),
    }
}

/// Owner, then mode (chown clears set-id bits), then mtime; never follows a symlink.
fn set_meta(p: &Path, mode: Option<u32>, uid: u32, gid: u32, mtime: u64) -> Result<(), ImageError> {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).map_err(|e| ImageError::io(p, e))?;
    if let Some(mode) = mode {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
            .map_err(|e| ImageError::io(p, e))?;
    }
    let t = nix::sys::time::TimeSpec::new(i64::try_from(mtime).unwrap_or(0), 0);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        p,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| ImageError::io(p, e.into()))
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) -> Result<(), ImageError> {
    // `xattr::set` is `lsetxattr`: on the entry itself, never through a symlink.
    xattr::set(p, name, value).map_err(|e| ImageError::io(p, e))
}

/// Reads an xattr of `p`, not following a symlink (tests and diagnostics).
pub fn get_xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    xattr::get(p, name).ok().flatten()
}
