//! A pod's volumes on the node: emptyDir (on disk, or `medium: Memory` as a tmpfs sized by
//! `sizeLimit`), hostPath (checked again after resolving symlinks, against the node's allowed
//! prefixes), and files from ConfigMaps and Secrets written the way Kubernetes' atomic writer
//! does (`..data` is a symlink to a timestamped dir, swapped with one rename, so a reader sees
//! either the old or the new set; top-level names are symlinks through `..data`).
//!
//! Secret material lives only in memory: Secret volumes and the OCI config of a container with
//! Secret env are in the pod's *memory dir*, a tmpfs at `<pod dir>/memory` (mode 0700) mounted
//! when the pod first needs it and unmounted with [`unmount_all`] when the pod is removed.
//!
//! Layout: `<pod>/volumes/<name>` (emptyDir, configMap), `<pod>/memory/volumes/<name>`
//! (secret, projected with a secret), `<pod>/memory/bundles/<container>-<restart>.json`.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};

pub use crate::model::container::{HostPathType, VolumeFile, VolumeSource};

use super::{io_err, RuntimeError};

/// The pod's tmpfs for Secret material (relative to the pod dir).
pub const MEMORY_DIR: &str = "memory";
/// Size of the pod's memory dir: room for several Secrets of the 1 MiB maximum and the
/// containers' configs. tmpfs only uses memory for what is written.
const MEMORY_DIR_SIZE: &str = "size=32m";
/// The symlink readers follow in a configMap/secret volume.
const DATA_LINK: &str = "..data";

/// A volume ready to be bind-mounted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedVolume {
    pub source: PathBuf,
    /// configMap/secret volumes are always read-only, as in Kubernetes.
    pub read_only: bool,
}

fn config_err(message: String) -> RuntimeError {
    RuntimeError::Invalid {
        what: "volume".into(),
        reason: message,
    }
}

/// Makes every volume of `volumes` ready under `pod_dir` (idempotent: files are rewritten only
/// when they changed). `host_path_prefixes`: the node's policy, checked on the resolved path.
pub fn prepare(
    pod_dir: &Path,
    volumes: &BTreeMap<String, VolumeSource>,
    host_path_prefixes: &[PathBuf],
) -> Result<BTreeMap<String, PreparedVolume>, RuntimeError> {
    let mut out = BTreeMap::new();
    for (name, source) in volumes {
        super::check_component("volume name", name)?;
        let prepared = match source {
            VolumeSource::EmptyDir { memory, size_limit } => {
                let dir = pod_dir.join("volumes").join(name);
                create_dir(&dir, 0o777)?;
                if *memory && !is_mount_point(&dir) {
                    let size = match size_limit {
                        Some(bytes) => format!("size={bytes}"),
                        None => "size=50%".into(),
                    };
                    mount_tmpfs(&dir, &format!("mode=1777,{size}"))?;
                }
                PreparedVolume {
                    source: dir,
                    read_only: false,
                }
            }
            VolumeSource::Claim { path, read_only } => {
                create_dir(path, 0o777)?;
                PreparedVolume {
                    source: path.clone(),
                    read_only: *read_only,
                }
            }
            VolumeSource::HostPath { path, kind } => PreparedVolume {
                source: host_path(path, *kind, host_path_prefixes)?,
                read_only: false,
            },
            VolumeSource::Files { files, secret } => {
                let dir = if *secret {
                    memory_dir(pod_dir)?.join("volumes").join(name)
                } else {
                    pod_dir.join("volumes").join(name)
                };
                create_dir(&dir, 0o755)?;
                write_files(&dir, files)?;
                PreparedVolume {
                    source: dir,
                    read_only: true,
                }
            }
        };
        out.insert(name.clone(), prepared);
    }
    Ok(out)
}

/// Rewrites the files of the configMap/secret volumes in `volumes` that exist already (a pod
/// whose containers run): contents follow updates. Returns whether anything changed.
pub fn refresh(
    pod_dir: &Path,
    volumes: &BTreeMap<String, VolumeSource>,
) -> Result<bool, RuntimeError> {
    let mut changed = false;
    for (name, source) in volumes {
        let VolumeSource::Files { files, secret } = source else {
            continue;
        };
        super::check_component("volume name", name)?;
        let base = if *secret {
            pod_dir.join(MEMORY_DIR)
        } else {
            pod_dir.to_path_buf()
        };
        let dir = base.join("volumes").join(name);
        if dir.join(DATA_LINK).exists() {
            changed |= write_files(&dir, files)?;
        }
    }
    Ok(changed)
}

fn create_dir(dir: &Path, mode: u32) -> Result<(), RuntimeError> {
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
            .map_err(io_err(dir))?;
    }
    Ok(())
}

/// The pod's memory dir, a tmpfs (mode 0700) mounted on first use.
pub fn memory_dir(pod_dir: &Path) -> Result<PathBuf, RuntimeError> {
    let dir = pod_dir.join(MEMORY_DIR);
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    if !is_mount_point(&dir) {
        mount_tmpfs(&dir, &format!("mode=0700,{MEMORY_DIR_SIZE}"))?;
    }
    Ok(dir)
}

fn mount_tmpfs(dir: &Path, options: &str) -> Result<(), RuntimeError> {
    use nix::mount::{mount, MsFlags};
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(options),
    )
    .map_err(|e| RuntimeError::Spawn(format!("mounting a tmpfs at {}: {e}", dir.display())))
}

/// Mount points of this process's mount namespace (`runtime::mountinfo`: octal escapes
/// decoded).
fn mount_points() -> Vec<PathBuf> {
    super::mountinfo::read()
        .into_iter()
        .map(|m| m.mount_point)
        .collect()
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

fn is_mount_point(dir: &Path) -> bool {
    let dir = canonical(dir);
    mount_points().contains(&dir)
}

/// Unmounts everything mounted at or below `dir` (the pod's tmpfs volumes and memory dir),
/// deepest first, lazily (a shim's private namespace may still hold a copy).
pub fn unmount_all(dir: &Path) -> Result<(), RuntimeError> {
    let dir = canonical(dir);
    let mut below: Vec<PathBuf> = mount_points()
        .into_iter()
        .filter(|m| m.starts_with(&dir))
        .collect();
    below.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    below.dedup();
    for m in below {
        if let Err(e) = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH) {
            if e != nix::errno::Errno::EINVAL && e != nix::errno::Errno::ENOENT {
                return Err(RuntimeError::Spawn(format!(
                    "unmounting {}: {e}",
                    m.display()
                )));
            }
        }
    }
    Ok(())
}

/// The files currently visible in a volume dir (through `..data`), with modes.
fn current_files(dir: &Path) -> Option<BTreeMap<String, (Vec<u8>, u32)>> {
    let data = dir.join(DATA_LINK);
    std::fs::read_link(&data).ok()?;
    let mut out = BTreeMap::new();
    let mut stack = vec![(data.clone(), String::new())];
    while let Some((d, prefix)) = stack.pop() {
        for e in std::fs::read_dir(&d).ok()?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let rel = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            let meta = e.metadata().ok()?;
            if meta.is_dir() {
                stack.push((e.path(), rel));
            } else {
                let bytes = std::fs::read(e.path()).ok()?;
                out.insert(rel, (bytes, meta.permissions().mode() & 0o7777));
            }
        }
    }
    Some(out)
}

/// Kubernetes' atomic writer: writes `files` into a new timestamped dir, points `..data` at
/// it with one rename, links the top-level names through `..data` and removes the old dir.
/// Nothing is written when the visible set is the same. Returns whether it changed.
pub fn write_files(dir: &Path, files: &[VolumeFile]) -> Result<bool, RuntimeError> {
    // One writer at a time (a container start and a refresh may render the same volume).
    static WRITING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _writing = WRITING.lock().unwrap_or_else(|p| p.into_inner());
    let wanted: BTreeMap<String, (Vec<u8>, u32)> = files
        .iter()
        .map(|f| (f.path.clone(), (f.bytes.clone(), f.mode)))
        .collect();
    if current_files(dir).as_ref() == Some(&wanted) {
        return Ok(false);
    }
    for f in files {
        if Path::new(&f.path)
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
            || f.path.starts_with("..")
        {
            return Err(config_err(format!("invalid file path {:?}", f.path)));
        }
    }
    let old = std::fs::read_link(dir.join(DATA_LINK)).ok();
    let stamp = chrono::Utc::now()
        .format("..%Y_%m_%d_%H_%M_%S.%f")
        .to_string();
    let new = dir.join(&stamp);
    std::fs::create_dir(&new).map_err(io_err(&new))?;
    std::fs::set_permissions(&new, std::fs::Permissions::from_mode(0o755)).map_err(io_err(&new))?;
    for f in files {
        let path = new.join(&f.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(&path))?;
        file.write_all(&f.bytes).map_err(io_err(&path))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(f.mode))
            .map_err(io_err(&path))?;
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(&stamp, &tmp).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, dir.join(DATA_LINK)).map_err(io_err(dir))?;
    let top: std::collections::BTreeSet<String> = files
        .iter()
        .filter_map(|f| f.path.split('/').next().map(str::to_string))
        .collect();
    for name in &top {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(Path::new(DATA_LINK).join(name), &link).map_err(io_err(&link))?;
        }
    }
    // Names no longer in the set.
    for e in std::fs::read_dir(dir).map_err(io_err(dir))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !top.contains(&name) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    if let Some(old) = old.filter(|o| o.as_os_str() != stamp.as_str()) {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(true)
}

/// A hostPath checked against `prefixes` after resolving symlinks, created or checked as
/// `kind` says.
fn host_path(
    path: &Path,
    kind: HostPathType,
    prefixes: &[PathBuf],
) -> Result<PathBuf, RuntimeError> {
    use std::os::unix::fs::FileTypeExt;
    let allowed = |p: &Path| prefixes.iter().any(|pre| p.starts_with(canonical(pre)));
    let exists = std::fs::symlink_metadata(path).is_ok();
    if !exists {
        match kind {
            HostPathType::DirectoryOrCreate => {
                // The parent must resolve inside the policy before anything is created.
                check_parent(path, &allowed)?;
                std::fs::create_dir_all(path).map_err(io_err(path))?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
                    .map_err(io_err(path))?;
            }
            HostPathType::FileOrCreate => {
                check_parent(path, &allowed)?;
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(io_err(path))?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
                    .map_err(io_err(path))?;
            }
            _ => {
                return Err(config_err(format!(
                    "hostPath {}: does not exist",
                    path.display()
                )))
            }
        }
    }
    let resolved = std::fs::canonicalize(path).map_err(io_err(path))?;
    if !allowed(&resolved) {
        return Err(config_err(format!(
            "hostPath {} resolves to {}, outside the node's allowed prefixes (shoal agent --allow-host-path)",
            path.display(),
            resolved.display()
        )));
    }
    let meta = std::fs::metadata(&resolved).map_err(io_err(&resolved))?;
    let t = meta.file_type();
    let ok = match kind {
        HostPathType::Unset => true,
        HostPathType::DirectoryOrCreate | HostPathType::Directory => t.is_dir(),
        HostPathType::FileOrCreate | HostPathType::File => t.is_file(),
        HostPathType::Socket => t.is_socket(),
        HostPathType::CharDevice => t.is_char_device(),
        HostPathType::BlockDevice => t.is_block_device(),
    };
    if !ok {
        return Err(config_err(format!(
            "hostPath {} is not of type {kind:?}",
            path.display()
        )));
    }
    Ok(resolved)
}

fn check_parent(path: &Path, allowed: &dyn Fn(&Path) -> bool) -> Result<(), RuntimeError> {
    // The nearest existing ancestor, resolved.
    let mut p = path.parent();
    while let Some(a) = p {
        if a.exists() {
            let r = canonical(a);
            if allowed(&r) || allowed(&r.join(path.strip_prefix(a).unwrap_or(path))) {
                return Ok(());
            }
            return Err(config_err(format!(
                "hostPath {}: {} resolves to {}, outside the node's allowed prefixes",
                path.display(),
                a.display(),
                r.display()
            )));
        }
        p = a.parent();
    }
    Ok(())
}

/// A mount's `subPath` inside the volume `root`, bind-mounted at `target` (a path of the
/// agent's, outside every volume), which is what runc is given.
///
/// Race-free (the CVE-2021-25741 class): the path is opened with `openat2` beneath the
/// volume's root (`RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`: a symlink may only lead to
/// somewhere inside the volume, checked by the kernel during the one walk), missing
/// directories are created one component at a time the same way, and the *opened object* is
/// bind-mounted at `target` through `/proc/self/fd/N`. A container sharing the volume that
/// swaps a component for a symlink after the check cannot redirect the mount: nothing
/// resolves the path again. The subPath must be relative without `..`; a missing one is
/// created as a directory (as Kubernetes does) unless the volume is read-only.
pub fn resolve_sub_path(
    root: &Path,
    sub: &str,
    create: bool,
    target: &Path,
) -> Result<PathBuf, RuntimeError> {
    use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
    use nix::sys::stat::Mode;
    let rel = Path::new(sub);
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(config_err(format!(
            "subPath {sub:?} must be a relative path without '..'"
        )));
    }
    let how = || {
        OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS)
    };
    let fail = |e: nix::errno::Errno| match e {
        nix::errno::Errno::EXDEV | nix::errno::Errno::ELOOP => escape(sub),
        e => config_err(format!("subPath {sub:?}: {e}")),
    };
    let root_fd = nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| config_err(format!("volume {}: {e}", root.display())))?;
    let fd = match openat2(&root_fd, rel, how()) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) if create => {
            // One component at a time, each opened beneath the last: what exists must stay
            // inside the volume, what is missing is made inside the directory just opened.
            let mut dir = root_fd;
            for c in rel.components() {
                let Component::Normal(name) = c else { continue };
                match nix::sys::stat::mkdirat(&dir, name, Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                    Err(e) => return Err(fail(e)),
                }
                dir = openat2(&dir, name, how()).map_err(fail)?;
            }
            dir
        }
        Err(e) => return Err(fail(e)),
    };
    let is_dir = nix::sys::stat::fstat(&fd)
        .map(|st| {
            use nix::sys::stat::SFlag;
            SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
        })
        .map_err(|e| config_err(format!("subPath {sub:?}: {e}")))?;
    // A target left by an earlier attempt is replaced.
    if is_mount_point(target) {
        let _ = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH);
    }
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    let _ = std::fs::remove_dir(target);
    let _ = std::fs::remove_file(target);
    if is_dir {
        std::fs::create_dir(target).map_err(io_err(target))?;
    } else {
        std::fs::File::create(target).map_err(io_err(target))?;
    }
    let source = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
    nix::mount::mount(
        Some(source.as_str()),
        target,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND | nix::mount::MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| RuntimeError::Spawn(format!("bind-mounting subPath {sub:?}: {e}")))?;
    drop(fd);
    Ok(target.to_path_buf())
}

fn escape(sub: &str) -> RuntimeError {
    config_err(format!(
        "subPath {sub:?} resolves outside the volume (through a symlink)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, text: &str, mode: u32) -> VolumeFile {
        VolumeFile {
            path: path.into(),
            bytes: text.as_bytes().to_vec(),
            mode,
        }
    }

    #[test]
    fn atomic_writer_swaps_data_and_follows_updates() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        assert!(write_files(dir, &[file("a", "1", 0o644), file("sub/b", "2", 0o600)]).unwrap());
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(dir.join("sub/b")).unwrap(), "2");
        let mode = std::fs::metadata(dir.join("sub/b"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(std::fs::symlink_metadata(dir.join("a"))
            .unwrap()
            .file_type()
            .is_symlink());
        let first = std::fs::read_link(dir.join(DATA_LINK)).unwrap();
        // Same content: nothing written.
        assert!(!write_files(dir, &[file("a", "1", 0o644), file("sub/b", "2", 0o600)]).unwrap());
        assert_eq!(std::fs::read_link(dir.join(DATA_LINK)).unwrap(), first);
        // An update swaps ..data; a removed name goes, the old dir goes.
        assert!(write_files(dir, &[file("a", "changed", 0o644)]).unwrap());
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "changed");
        assert!(std::fs::symlink_metadata(dir.join("sub")).is_err());
        assert!(!dir.join(&first).exists());
        assert!(write_files(dir, &[file("../x", "no", 0o644)]).is_err());
    }

    #[test]
    fn sub_paths_stay_inside_the_volume() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("vol");
        let t = |n: &str| tmp.path().join("subpaths").join(n);
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::write(root.join("d/f"), "x").unwrap();
        symlink("/etc", root.join("out")).unwrap();
        symlink("d/f", root.join("in")).unwrap();
        let got = resolve_sub_path(&root, "d/f", true, &t("1")).unwrap();
        assert_eq!(
            (got.clone(), std::fs::read_to_string(&got).unwrap()),
            (t("1"), "x".into())
        );
        let got = resolve_sub_path(&root, "in", true, &t("2")).unwrap();
        assert_eq!(std::fs::read_to_string(got).unwrap(), "x");
        let got = resolve_sub_path(&root, "new/dir", true, &t("3")).unwrap();
        assert!(root.join("new/dir").is_dir() && got.is_dir());
        // The same target again (a restart): replaced.
        resolve_sub_path(&root, "d", true, &t("3")).unwrap();
        assert!(t("3").join("f").is_file());
        for bad in [
            "../x",
            "/etc",
            "d/../../x",
            "out",
            "out/passwd",
            "out/newdir",
        ] {
            let err = resolve_sub_path(&root, bad, true, &t("bad"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("subPath"), "{bad}: {err}");
        }
        assert!(!Path::new("/etc/newdir").exists());
        assert!(resolve_sub_path(&root, "missing", false, &t("4")).is_err());
        unmount_all(tmp.path()).unwrap();
    }

    /// A container sharing the volume swaps a directory of a subPath for a symlink to the host,
    /// over and over, while the subPath is resolved: a mount never shows the host's file.
    #[test]
    fn a_symlink_raced_into_a_sub_path_never_yields_a_host_path() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("vol");
        let host = tmp.path().join("host");
        std::fs::create_dir_all(root.join("dir")).unwrap();
        std::fs::create_dir_all(&host).unwrap();
        std::fs::write(root.join("dir/marker"), "inside").unwrap();
        std::fs::write(host.join("marker"), "HOST").unwrap();
        symlink(&host, root.join("link")).unwrap();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let racer = {
            let (stop, root) = (stop.clone(), root.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    for name in ["dir", "link"] {
                        let _ = std::fs::rename(root.join(name), root.join("d"));
                        let _ = std::fs::rename(root.join("d"), root.join(name));
                    }
                }
            })
        };
        let target = tmp.path().join("subpaths/0");
        let (mut inside, mut refused) = (0, 0);
        let started = std::time::Instant::now();
        while inside < 200 || refused < 200 {
            assert!(
                started.elapsed().as_secs() < 60,
                "{inside} mounted, {refused} refused"
            );
            match resolve_sub_path(&root, "d/marker", false, &target) {
                Ok(got) => {
                    assert_eq!(std::fs::read_to_string(got).unwrap(), "inside");
                    inside += 1;
                }
                Err(_) => refused += 1,
            }
        }
        stop.store(true, Ordering::Relaxed);
        racer.join().unwrap();
        unmount_all(tmp.path()).unwrap();
    }

    #[test]
    fn host_paths_are_checked_after_resolving_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let allowed = tmp.path().join("allowed");
        std::fs::create_dir_all(&allowed).unwrap();
        symlink("/etc", allowed.join("etc")).unwrap();
        let prefixes = vec![allowed.clone()];
        let made = host_path(
            &allowed.join("new"),
            HostPathType::DirectoryOrCreate,
            &prefixes,
        )
        .unwrap();
        assert!(made.is_dir());
        let f = host_path(&allowed.join("f"), HostPathType::FileOrCreate, &prefixes).unwrap();
        assert!(f.is_file());
        assert!(host_path(&allowed.join("f"), HostPathType::Directory, &prefixes).is_err());
        assert!(host_path(&allowed.join("nope"), HostPathType::Directory, &prefixes).is_err());
        let err = host_path(&allowed.join("etc"), HostPathType::Unset, &prefixes)
            .unwrap_err()
            .to_string();
        assert!(err.contains("outside"), "{err}");
        assert!(host_path(
            &allowed.join("etc/shoal-x"),
            HostPathType::DirectoryOrCreate,
            &prefixes
        )
        .is_err());
        assert!(!Path::new("/etc/shoal-x").exists());
    }
}
