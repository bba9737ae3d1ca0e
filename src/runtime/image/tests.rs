//! Tests of the image store with archives built here: OCI layouts, `docker save` tars,
//! tampered digests, hostile layers, whiteouts, idempotence, removal.

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::*;

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (mknod of whiteouts, trusted.* xattrs, chown)"
    );
}

/// One entry of a test layer; paths and link names are written raw, so hostile ones can be.
enum E<'a> {
    Dir(&'a str, u32),
    File(&'a str, &'a [u8], u32),
    Symlink(&'a str, &'a str),
    Hard(&'a str, &'a str),
}

fn raw_header(path: &str, kind: tar::EntryType, size: u64, mode: u32, link: &str) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    {
        let g = h.as_gnu_mut().unwrap();
        g.name[..path.len()].copy_from_slice(path.as_bytes());
        g.linkname[..link.len()].copy_from_slice(link.as_bytes());
    }
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    h
}

fn layer(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        match e {
            E::Dir(p, m) => {
                let h = raw_header(p, tar::EntryType::Directory, 0, *m, "");
                b.append(&h, std::io::empty()).unwrap();
            }
            E::File(p, data, m) => {
                let h = raw_header(p, tar::EntryType::Regular, data.len() as u64, *m, "");
                b.append(&h, *data).unwrap();
            }
            E::Symlink(p, t) => {
                let h = raw_header(p, tar::EntryType::Symlink, 0, 0o777, t);
                b.append(&h, std::io::empty()).unwrap();
            }
            E::Hard(p, t) => {
                let h = raw_header(p, tar::EntryType::Link, 0, 0o644, t);
                b.append(&h, std::io::empty()).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn outer(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (p, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_path(p).unwrap();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append(&h, data.as_slice()).unwrap();
    }
    b.into_inner().unwrap()
}

fn config_json(diff_ids: &[String], cmd: &[&str]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": cmd, "Env": ["PATH=/bin"], "WorkingDir": "/root", "User": ""},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap()
}

struct Built {
    archive: Vec<u8>,
    manifest_hex: String,
    layer_blob_sizes: u64,
}

/// An OCI image layout tar. `tamper` edits blobs after they are named (for mismatch tests).
fn oci(
    name: &str,
    layers: &[Vec<u8>],
    gz: bool,
    diff_override: Option<String>,
    tamper: bool,
) -> Built {
    let mut files: Vec<(String, Vec<u8>)> = vec![(
        "oci-layout".into(),
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    )];
    let mut diff_ids = Vec::new();
    let mut descs = Vec::new();
    let mut total = 0;
    for l in layers {
        diff_ids.push(
            diff_override
                .clone()
                .unwrap_or(format!("sha256:{}", sha(l))),
        );
        let blob = if gz { gzip(l) } else { l.clone() };
        let hex = sha(&blob);
        total += blob.len() as u64;
        descs.push(serde_json::json!({
            "mediaType": if gz { "application/vnd.oci.image.layer.v1.tar+gzip" } else { "application/vnd.oci.image.layer.v1.tar" },
            "digest": format!("sha256:{hex}"), "size": blob.len(),
        }));
        let mut stored = blob;
        if tamper {
            stored[0] ^= 0xff;
        }
        files.push((format!("blobs/sha256/{hex}"), stored));
    }
    let config = config_json(&diff_ids, &["sh"]);
    let chex = sha(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{chex}"), "size": config.len()},
        "layers": descs,
    }))
    .unwrap();
    let mhex = sha(&manifest);
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{mhex}"), "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": name},
        }],
    }))
    .unwrap();
    files.push((format!("blobs/sha256/{chex}"), config));
    files.push((format!("blobs/sha256/{mhex}"), manifest));
    files.push(("index.json".into(), index));
    Built {
        archive: outer(&files),
        manifest_hex: mhex,
        layer_blob_sizes: total,
    }
}

fn docker(tags: &[&str], layers: &[Vec<u8>]) -> Vec<u8> {
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| format!("sha256:{}", sha(l)))
        .collect();
    let config = config_json(&diff_ids, &["echo", "hi"]);
    let chex = sha(&config);
    let mut files = vec![(format!("{chex}.json"), config)];
    let mut paths = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let p = format!("layer{i}/layer.tar");
        files.push((p.clone(), l.clone()));
        files.push((format!("layer{i}/VERSION"), b"1.0".to_vec()));
        paths.push(p);
    }
    let manifest = serde_json::to_vec(&serde_json::json!([
        {"Config": format!("{chex}.json"), "RepoTags": tags, "Layers": paths}
    ]))
    .unwrap();
    files.push(("manifest.json".into(), manifest));
    outer(&files)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Nothing of a refused import stayed: no index entry, blob, layer or staging dir.
fn assert_empty_store(store: &ImageStore) {
    assert!(store.list().is_empty(), "index: {:?}", store.list());
    assert!(entries(&store.dir().join("blobs/sha256")).is_empty());
    assert!(entries(&store.dir().join("layers")).is_empty());
    let tmp: Vec<String> = entries(&store.upload_dir())
        .into_iter()
        .filter(|n| n.starts_with("stage-"))
        .collect();
    assert!(tmp.is_empty(), "staging left: {tmp:?}");
}

fn base_layer() -> Vec<u8> {
    layer(&[
        E::Dir("bin/", 0o755),
        E::File("bin/hello", b"#!/bin/sh\necho hello\n", 0o755),
        E::Symlink("bin/sh", "hello"),
        E::Hard("bin/hi", "bin/hello"),
        E::Symlink("etc", "/nonexistent/abs/target"),
        E::Dir("tmp/", 0o1777),
        E::File("./setuid", b"x", 0o4755),
    ])
}

#[test]
fn oci_layout_import_resolves_to_unpacked_layers() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&t.path().join("images")).unwrap();
    let built = oci("shoal.test/busybox:1", &[base_layer()], true, None, false);
    let a = write(t.path(), "a.tar", &built.archive);
    let got = store.import(&a).unwrap();
    let digest = format!("sha256:{}", built.manifest_hex);
    assert_eq!(
        got,
        vec![ImageSummary {
            reference: "shoal.test/busybox:1".into(),
            digest: digest.clone(),
            size: built.layer_blob_sizes,
        }]
    );
    assert_eq!(store.list(), got);

    let img = store.resolve("shoal.test/busybox:1").unwrap();
    assert_eq!(img.digest, digest);
    assert_eq!(img.config.cmd, vec!["sh"]);
    assert_eq!(img.config.env, vec!["PATH=/bin"]);
    assert_eq!(img.config.working_dir.as_deref(), Some("/root"));
    assert_eq!(img.config.user, None);
    assert_eq!(img.layers.len(), 1);
    let root = &img.layers[0];
    assert_eq!(
        std::fs::read(root.join("bin/hello")).unwrap(),
        b"#!/bin/sh\necho hello\n"
    );
    let m = std::fs::metadata(root.join("bin/hello")).unwrap();
    assert_eq!(m.permissions().mode() & 0o7777, 0o755);
    assert_eq!(m.mtime(), 1_700_000_000);
    assert_eq!(
        std::fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("hello")
    );
    assert_eq!(
        std::fs::read_link(root.join("etc")).unwrap(),
        Path::new("/nonexistent/abs/target")
    );
    assert_eq!(
        std::fs::metadata(root.join("bin/hi")).unwrap().ino(),
        m.ino(),
        "hard link shares the inode"
    );
    let tmp = std::fs::metadata(root.join("tmp")).unwrap();
    assert_eq!(tmp.permissions().mode() & 0o7777, 0o1777);
    assert_eq!(
        std::fs::metadata(root.join("setuid"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o4755
    );

    // By digest, with or without a name.
    let by_digest = store
        .resolve(&format!("shoal.test/busybox@{digest}"))
        .unwrap();
    assert_eq!(by_digest.layers, img.layers);
    assert!(matches!(
        store.resolve("busybox"),
        Err(ImageError::NotFound(r)) if r == "docker.io/library/busybox:latest"
    ));
    assert!(matches!(
        store.resolve("Bad Name"),
        Err(ImageError::InvalidReference(_))
    ));
}

#[test]
fn docker_save_import_with_several_tags_and_layers() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&t.path().join("images")).unwrap();
    let l0 = layer(&[E::Dir("etc/", 0o755), E::File("etc/motd", b"base", 0o644)]);
    let l1 = layer(&[E::File("etc/motd", b"top", 0o600)]);
    let a = write(
        t.path(),
        "d.tar",
        &docker(
            &["busybox:latest", "shoal.test/x:2"],
            &[l0.clone(), l1.clone()],
        ),
    );
    let got = store.import(&a).unwrap();
    let refs: Vec<&str> = got.iter().map(|s| s.reference.as_str()).collect();
    assert_eq!(
        refs,
        vec!["docker.io/library/busybox:latest", "shoal.test/x:2"]
    );
    assert_eq!(got[0].digest, got[1].digest);
    assert_eq!(got[0].size, (l0.len() + l1.len()) as u64);

    let img = store.resolve("busybox").unwrap();
    assert_eq!(img.config.cmd, vec!["echo", "hi"]);
    assert_eq!(img.layers.len(), 2);
    assert_eq!(img.layers[0], store.dir().join("layers").join(sha(&l0)));
    assert_eq!(
        std::fs::read(img.layers[0].join("etc/motd")).unwrap(),
        b"base"
    );
    assert_eq!(
        std::fs::read(img.layers[1].join("etc/motd")).unwrap(),
        b"top"
    );
    assert_eq!(store.resolve("shoal.test/x:2").unwrap().digest, img.digest);

    // The manifest made for a docker image is deterministic: a re-import names the same one.
    let again = store.import(&a).unwrap();
    assert_eq!(again, got);
}

#[test]
fn docker_save_with_blob_paths_and_symlinked_layers_reimports() {
    require_root();
    // Docker 25+ names files blobs/sha256/<hex>; older versions symlink a repeated layer.tar.
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&t.path().join("images")).unwrap();
    let l0 = layer(&[E::File("a", b"a", 0o644)]);
    let l1 = layer(&[E::File("b", b"b", 0o644)]);
    let diff_ids = vec![
        format!("sha256:{}", sha(&l0)),
        format!("sha256:{}", sha(&l1)),
    ];
    let config = config_json(&diff_ids, &["sh"]);
    let chex = sha(&config);
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": format!("blobs/sha256/{chex}"),
        "RepoTags": ["shoal.test/new:1"],
        "Layers": [format!("blobs/sha256/{}", sha(&l0)), "old/layer.tar"],
    }]))
    .unwrap();
    let mut b = tar::Builder::new(Vec::new());
    for (p, data) in [
        (format!("blobs/sha256/{chex}"), config),
        (format!("blobs/sha256/{}", sha(&l0)), l0.clone()),
        (format!("blobs/sha256/{}", sha(&l1)), l1.clone()),
        ("manifest.json".to_string(), manifest),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_path(&p).unwrap();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, data.as_slice()).unwrap();
    }
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_path("old/layer.tar").unwrap();
    h.set_link_name(format!("../blobs/sha256/{}", sha(&l1)))
        .unwrap();
    h.set_size(0);
    h.set_cksum();
    b.append(&h, std::io::empty()).unwrap();
    let a = write(t.path(), "new.tar", &b.into_inner().unwrap());
    let first = store.import(&a).unwrap();
    let img = store.resolve("shoal.test/new:1").unwrap();
    assert_eq!(std::fs::read(img.layers[1].join("b")).unwrap(), b"b");
    // The second time every blob is in the store already and is not read from the archive.
    assert_eq!(store.import(&a).unwrap(), first);
}

#[test]
fn tampered_blob_is_refused_and_nothing_is_stored() {
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&t.path().join("images")).unwrap();
    let built = oci("shoal.test/a:1", &[base_layer()], true, None, true);
    let a = write(t.path(), "a.tar", &built.archive);
    let err = store.import(&a).unwrap_err();
    assert!(
        matches!(&err, ImageError::DigestMismatch { what, .. } if what.starts_with("blobs/sha256/")),
        "{err}"
    );
    assert_empty_store(&store);
}

#[test]
fn wrong_diff_id_is_refused_and_nothing_is_stored() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&t.path().join("images")).unwrap();
    let wrong = format!("sha256:{}", "0".repeat(64));
    let built = oci("shoal.test/a:1", &[base_layer()], true, Some(wrong), false);
    let a = write(t.path(), "a.tar", &built.archive);
    let err = store.import(&a).unwrap_err();
    assert!(
        matches!(&err, ImageError::DigestMismatch { what, .. } if what == "layer diff id"),
        "{err}"
    );
    assert_empty_store(&store);
}

#[test]
fn hostile_layers_are_refused_and_nothing_is_written() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let outside = t.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let outside_s = outside.to_str().unwrap().to_string();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("dotdot", layer(&[E::File("../escape", b"x", 0o644)])),
        (
            "nested dotdot",
            layer(&[E::Dir("a/", 0o755), E::File("a/../../escape", b"x", 0o644)]),
        ),
        ("absolute", layer(&[E::File("/escape", b"x", 0o644)])),
        (
            "write through symlink",
            layer(&[
                E::Symlink("link", &outside_s),
                E::File("link/evil", b"x", 0o644),
            ]),
        ),
        (
            "write through relative symlink",
            layer(&[E::Symlink("up", ".."), E::File("up/evil", b"x", 0o644)]),
        ),
        ("hard link up", layer(&[E::Hard("h", "../../etc/passwd")])),
        ("hard link absolute", layer(&[E::Hard("h", "/etc/passwd")])),
        (
            "hard link through symlink",
            layer(&[E::Symlink("s", "/etc"), E::Hard("h", "s/passwd")]),
        ),
    ];
    for (what, l) in cases {
        let store =
            ImageStore::open(&t.path().join(format!("images-{}", what.replace(' ', "-")))).unwrap();
        let built = oci("shoal.test/evil:1", &[l], false, None, false);
        let a = write(t.path(), "evil.tar", &built.archive);
        let err = store.import(&a).unwrap_err();
        assert!(
            matches!(err, ImageError::UnsafeLayer(_)),
            "{what}: expected an unsafe-layer refusal, got {err}"
        );
        assert_empty_store(&store);
        assert!(entries(&outside).is_empty(), "{what}: wrote outside");
        assert!(!t.path().join("escape").exists(), "{what}: wrote outside");
        assert!(
            !store.dir().join("escape").exists(),
            "{what}: wrote outside"
        );
    }
}

#[test]
fn whiteouts_become_overlay_whiteouts() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&t.path().join("images")).unwrap();
    let l0 = layer(&[
        E::Dir("a/", 0o755),
        E::File("a/x", b"1", 0o644),
        E::File("a/y", b"2", 0o644),
        E::Dir("d/", 0o755),
        E::File("d/z", b"3", 0o644),
    ]);
    let l1 = layer(&[
        E::File("a/.wh.x", b"", 0o644),
        E::File("d/.wh..wh..opq", b"", 0o644),
        E::File("d/new", b"4", 0o644),
        E::File("gone/.wh.deep", b"", 0o644),
    ]);
    let built = oci("shoal.test/wh:1", &[l0, l1], true, None, false);
    let a = write(t.path(), "wh.tar", &built.archive);
    store.import(&a).unwrap();
    let img = store.resolve("shoal.test/wh:1").unwrap();
    let top = &img.layers[1];
    let x = std::fs::symlink_metadata(top.join("a/x")).unwrap();
    assert!(x.file_type().is_char_device(), "a/x is a whiteout device");
    assert_eq!(x.rdev(), 0);
    assert!(!top.join("a/.wh.x").exists());
    assert!(!top.join("a/y").exists(), "only the lower layer has a/y");
    assert_eq!(
        get_xattr(&top.join("d"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(!top.join("d/.wh..wh..opq").exists());
    assert_eq!(std::fs::read(top.join("d/new")).unwrap(), b"4");
    assert!(std::fs::symlink_metadata(top.join("gone/deep"))
        .unwrap()
        .file_type()
        .is_char_device());
    // The lower layer is untouched.
    assert_eq!(std::fs::read(img.layers[0].join("a/x")).unwrap(), b"1");
    assert_eq!(
        get_xattr(&img.layers[0].join("d"), "trusted.overlay.opaque"),
        None
    );
}

#[test]
fn pax_xattrs_user_kept_trusted_dropped() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&t.path().join("images")).unwrap();
    let record = |k: &str, v: &str| {
        // "<len> <key>=<value>\n", the length counting itself.
        let body = format!(" {k}={v}\n");
        let mut n = body.len() + 1;
        while format!("{n}{body}").len() != n {
            n += 1;
        }
        format!("{n}{body}")
    };
    let pax = record("SCHILY.xattr.user.note", "hello")
        + &record("SCHILY.xattr.trusted.overlay.opaque", "y");
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_path("PaxHeaders/f").unwrap();
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_size(pax.len() as u64);
    h.set_cksum();
    b.append(&h, pax.as_bytes()).unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_path("f").unwrap();
    h.set_size(1);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    b.append(&h, &b"x"[..]).unwrap();
    let built = oci(
        "shoal.test/x:1",
        &[b.into_inner().unwrap()],
        false,
        None,
        false,
    );
    store
        .import(&write(t.path(), "x.tar", &built.archive))
        .unwrap();
    let f = store.resolve("shoal.test/x:1").unwrap().layers[0].join("f");
    assert_eq!(get_xattr(&f, "user.note").as_deref(), Some(&b"hello"[..]));
    assert_eq!(get_xattr(&f, "trusted.overlay.opaque"), None);
}

#[test]
fn reimport_is_idempotent_and_concurrent_imports_agree() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("images");
    let store = ImageStore::open(&dir).unwrap();
    let built = oci("shoal.test/busybox:1", &[base_layer()], true, None, false);
    let a = write(t.path(), "a.tar", &built.archive);
    let first = store.import(&a).unwrap();
    let img = store.resolve("shoal.test/busybox:1").unwrap();
    let ino = std::fs::metadata(&img.layers[0]).unwrap().ino();
    let blobs = entries(&dir.join("blobs/sha256"));
    assert_eq!(blobs.len(), 3, "layer, config, manifest");
    assert_eq!(store.import(&a).unwrap(), first);
    assert_eq!(
        std::fs::metadata(&img.layers[0]).unwrap().ino(),
        ino,
        "the layer was not unpacked again"
    );
    assert_eq!(entries(&dir.join("blobs/sha256")), blobs);

    // Two stores on one dir (as the API and the kubelet have), importing at once.
    let other = write(
        t.path(),
        "b.tar",
        &oci(
            "shoal.test/other:1",
            &[base_layer(), layer(&[E::File("f", b"z", 0o644)])],
            true,
            None,
            false,
        )
        .archive,
    );
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let s = ImageStore::open(&dir).unwrap();
            let other = other.clone();
            std::thread::spawn(move || s.import(&other))
        })
        .collect();
    let results: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().unwrap().unwrap())
        .collect();
    assert!(results.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(store.list().len(), 2);
    assert_eq!(entries(&dir.join("layers")).len(), 2);
    assert_eq!(
        std::fs::metadata(&img.layers[0]).unwrap().ino(),
        ino,
        "the shared base layer was not unpacked again"
    );
}

#[test]
fn remove_keeps_shared_layers_and_drops_the_rest() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("images");
    let store = ImageStore::open(&dir).unwrap();
    let top = layer(&[E::File("only-b", b"b", 0o644)]);
    for (name, layers) in [
        ("shoal.test/a:1", vec![base_layer()]),
        ("shoal.test/b:1", vec![base_layer(), top.clone()]),
    ] {
        let a = write(
            t.path(),
            "x.tar",
            &oci(name, &layers, false, None, false).archive,
        );
        store.import(&a).unwrap();
    }
    assert_eq!(entries(&dir.join("layers")).len(), 2);
    store.remove("shoal.test/b:1").unwrap();
    assert!(matches!(
        store.resolve("shoal.test/b:1"),
        Err(ImageError::NotFound(_))
    ));
    assert_eq!(entries(&dir.join("layers")), vec![sha(&base_layer())]);
    assert_eq!(entries(&dir.join("blobs/sha256")).len(), 3);
    assert!(store.resolve("shoal.test/a:1").is_ok());
    assert!(matches!(
        store.remove("shoal.test/b:1"),
        Err(ImageError::NotFound(_))
    ));
}

#[test]
fn gzipped_archives_and_garbage() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&t.path().join("images")).unwrap();
    let built = oci("shoal.test/gz:1", &[base_layer()], false, None, false);
    let a = write(t.path(), "a.tar.gz", &gzip(&built.archive));
    assert_eq!(store.import(&a).unwrap()[0].reference, "shoal.test/gz:1");

    for (name, bytes) in [
        ("empty", Vec::new()),
        (
            "text",
            b"hello, this is not a tar archive at all".repeat(20),
        ),
        (
            "tar without image",
            outer(&[("README".into(), b"hi".to_vec())]),
        ),
    ] {
        let p = write(t.path(), name, &bytes);
        let err = store.import(&p).unwrap_err();
        assert!(
            matches!(err, ImageError::InvalidArchive(_)),
            "{name}: {err}"
        );
    }
    // A bare tag names no repository.
    let tag_only = write(
        t.path(),
        "tag.tar",
        &oci("1", &[base_layer()], false, None, false).archive,
    );
    let err = store.import(&tag_only).unwrap_err();
    assert!(err.to_string().contains("only by the tag"), "{err}");
    assert!(matches!(
        store.import(&t.path().join("missing.tar")),
        Err(ImageError::Io { .. })
    ));
    assert_eq!(store.list().len(), 1);
}
