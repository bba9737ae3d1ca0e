//! Pulls from a real OCI registry (Debian's `docker-registry`, images pushed with the real
//! `skopeo`) into a fresh node store: layer contents as overlayfs wants them, zstd layers,
//! pulls by digest, multi-platform indexes, auth (htpasswd and bearer tokens), plain-HTTP
//! refusal, tampered blobs, hostile layers, a registry that is down, and one download per blob
//! however many pulls wait for it.
//!
//! The `harness_*` tests check the test registry itself (push, access-log counting, tamper,
//! auth, TLS) with skopeo and curl only.
//!
//! Needs root (layers are unpacked with their owners, whiteouts are char devices 0:0, opaque
//! dirs get `trusted.overlay.opaque`) and the packages docker-registry, skopeo, apache2-utils
//! (htpasswd) and curl; a missing one fails the test by name.

mod support;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use shoal::runtime::image::pull::{
    Credentials, NoPeers, PullConfig, PullError, PullEvent, PullRequest, Puller,
};
use shoal::runtime::image::{get_xattr, ImageStore, ResolvedImage};

use support::registry::layout::{
    build_layout, busybox_layout, host_arch, hostile, random_layers, sha256, BuiltImage,
    Compression, ConfigSpec, Entry, LayerSpec, OciLayout,
};
use support::registry::{Registry, RegistryOptions};

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (layers are unpacked with their owners, whiteouts are mknod'ed \
         char devices, opaque dirs get trusted.* xattrs)"
    );
}

/// A fresh store in `dir` and its puller, trusting `registry` over plain HTTP.
fn puller(dir: &Path, registry: &Registry) -> Arc<Puller> {
    let store = ImageStore::open(dir).expect("open the image store");
    Puller::new(
        store,
        PullConfig {
            insecure_registries: vec![registry.host()],
            ..PullConfig::default()
        },
        Arc::new(NoPeers),
    )
}

fn request(reference: &str) -> PullRequest {
    PullRequest {
        reference: reference.to_string(),
        credentials: None,
    }
}

async fn pull(p: &Arc<Puller>, reference: &str) -> Result<ResolvedImage, PullError> {
    p.pull(&request(reference), None).await
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// The store's blobs (hex names), each checked to hash to its name.
fn verified_blobs(store: &ImageStore) -> Vec<String> {
    let dir = store.dir().join("blobs/sha256");
    let names = entries(&dir);
    for n in &names {
        let bytes = std::fs::read(dir.join(n)).unwrap();
        assert_eq!(
            sha256(&bytes),
            format!("sha256:{n}"),
            "blob {n} in the store does not hold its content"
        );
    }
    names
}

/// No image, blob or unpacked layer.
fn assert_empty_store(store: &ImageStore) {
    assert!(store.list().is_empty(), "images: {:?}", store.list());
    assert!(verified_blobs(store).is_empty(), "blobs were stored");
    let layers = entries(&store.dir().join("layers"));
    assert!(layers.is_empty(), "layers were stored: {layers:?}");
}

fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").expect("a sha256 digest")
}

/// The pulled image's layer dirs are the built image's layers, by diff id, bottom first.
fn assert_layers(img: &ResolvedImage, built: &BuiltImage) {
    let got: Vec<PathBuf> = img.layers.clone();
    assert_eq!(got.len(), built.layers.len(), "layers: {got:?}");
    for (dir, layer) in got.iter().zip(&built.layers) {
        assert_eq!(
            dir.file_name().and_then(|n| n.to_str()),
            Some(hex(&layer.diff_id)),
            "layer dir {} is not named by its diff id",
            dir.display()
        );
        assert!(dir.is_dir(), "{} is not unpacked", dir.display());
    }
}

fn is_whiteout(p: &Path) -> bool {
    std::fs::symlink_metadata(p)
        .map(|m| m.file_type().is_char_device() && m.rdev() == 0)
        .unwrap_or(false)
}

/// Three layers with what unpacking must get right: modes (set-id, sticky), owners, absolute
/// and `..` symlink targets, hard links, whiteouts, an opaque dir, a whiteout in a dir that
/// only the whiteout creates.
fn rich_layers() -> Vec<LayerSpec> {
    vec![
        LayerSpec::new(vec![
            Entry::dir("etc"),
            Entry::file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"),
            Entry::dir("app").mode(0o750).owner(1000, 1000),
            Entry::file("app/run.sh", b"#!/bin/sh\necho run\n")
                .mode(0o755)
                .owner(1000, 2000),
            Entry::file("app/secret", b"s3cret")
                .mode(0o600)
                .owner(1000, 1000),
            Entry::file("app/suid", b"\x7fELF").mode(0o4755),
            Entry::hardlink("app/run-again", "app/run.sh"),
            Entry::symlink("app/rel", "run.sh"),
            Entry::symlink("etc/abs", "/etc/x"),
            Entry::symlink("up", "../../x"),
            Entry::dir("tmp").mode(0o1777),
            Entry::dir("a"),
            Entry::file("a/x", b"1"),
            Entry::file("a/y", b"2"),
            Entry::dir("d"),
            Entry::file("d/z", b"3"),
        ]),
        LayerSpec::new(vec![
            Entry::whiteout("a/x"),
            Entry::opaque("d"),
            Entry::file("d/new", b"4"),
            Entry::file("app/layer1", b"second").owner(1000, 1000),
        ]),
        LayerSpec::new(vec![
            Entry::file("etc/motd", b"hello\n").mode(0o444),
            Entry::whiteout("gone/deep"),
        ]),
    ]
}

fn assert_rich_layers(img: &ResolvedImage) {
    let l0 = &img.layers[0];
    let meta = |p: &str| std::fs::symlink_metadata(l0.join(p)).unwrap();
    let mode = |p: &str| meta(p).permissions().mode() & 0o7777;
    assert_eq!(
        std::fs::read(l0.join("etc/passwd")).unwrap(),
        b"root:x:0:0:root:/root:/bin/sh\n"
    );
    assert_eq!(mode("etc/passwd"), 0o644);
    assert_eq!(mode("app"), 0o750);
    assert_eq!((meta("app").uid(), meta("app").gid()), (1000, 1000));
    assert_eq!(mode("app/run.sh"), 0o755);
    assert_eq!(
        (meta("app/run.sh").uid(), meta("app/run.sh").gid()),
        (1000, 2000)
    );
    assert_eq!(mode("app/secret"), 0o600);
    assert_eq!(mode("app/suid"), 0o4755, "set-uid bit kept");
    assert_eq!(mode("tmp"), 0o1777, "sticky bit kept");
    assert!(meta("tmp").is_dir());
    // The hard link is the same inode.
    assert_eq!(meta("app/run-again").ino(), meta("app/run.sh").ino());
    assert_eq!(meta("app/run.sh").nlink(), 2);
    // Symlinks keep their targets, even pointing outside: they are only links.
    for (link, target) in [
        ("app/rel", "run.sh"),
        ("etc/abs", "/etc/x"),
        ("up", "../../x"),
    ] {
        assert!(meta(link).file_type().is_symlink(), "{link}");
        assert_eq!(
            std::fs::read_link(l0.join(link)).unwrap(),
            Path::new(target)
        );
    }
    assert_eq!(std::fs::read(l0.join("a/x")).unwrap(), b"1");
    assert_eq!(get_xattr(&l0.join("d"), "trusted.overlay.opaque"), None);

    let l1 = &img.layers[1];
    assert!(is_whiteout(&l1.join("a/x")), "a/x is a whiteout device 0:0");
    assert!(!l1.join("a/.wh.x").exists());
    assert!(!l1.join("a/y").exists(), "only the lower layer has a/y");
    assert_eq!(
        get_xattr(&l1.join("d"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(!l1.join("d/.wh..wh..opq").exists());
    assert_eq!(std::fs::read(l1.join("d/new")).unwrap(), b"4");
    assert_eq!(std::fs::read(l1.join("app/layer1")).unwrap(), b"second");
    assert_eq!(
        std::fs::metadata(l1.join("app/layer1")).unwrap().uid(),
        1000
    );

    let l2 = &img.layers[2];
    assert_eq!(std::fs::read(l2.join("etc/motd")).unwrap(), b"hello\n");
    assert_eq!(
        std::fs::metadata(l2.join("etc/motd"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o444
    );
    assert!(
        is_whiteout(&l2.join("gone/deep")),
        "gone/deep is a whiteout"
    );
}

// ---- the harness itself ----------------------------------------------------------------------

#[test]
fn harness_pushes_counts_gets_and_tampers() {
    let t = tempfile::tempdir().unwrap();
    let mut reg = Registry::start(RegistryOptions::default());
    let layers = vec![
        LayerSpec::new(vec![Entry::file("a", b"first layer")]),
        LayerSpec::new(vec![Entry::file("b", b"second layer")]).compression(Compression::Zstd),
    ];
    let built = build_layout(
        &t.path().join("oci"),
        "test:1",
        &layers,
        &ConfigSpec::default(),
    );
    let digest = reg.push_oci_layout(&t.path().join("oci"), "test:1", "h/app:1", None, None);
    assert_eq!(
        digest, built.manifest.digest,
        "skopeo keeps the manifest as built"
    );
    let raw = reg.raw_manifest("h/app:1", None);
    assert_eq!(sha256(&raw), digest);
    let manifest: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(
        manifest["layers"][1]["mediaType"],
        Compression::Zstd.media_type()
    );
    assert!(reg.manifest_gets() >= 1);

    let layer = &built.layers[0].blob.digest;
    assert_eq!(reg.blob_gets(layer), 0);
    let url = format!("{}/v2/h/app/blobs/{layer}", reg.url());
    let get = reg.curl(&["-f", &url]);
    assert!(
        get.status.success(),
        "{}",
        String::from_utf8_lossy(&get.stderr)
    );
    assert_eq!(&sha256(&get.stdout), layer);
    assert_eq!(reg.blob_gets(layer), 1);
    // A HEAD is not a GET.
    assert!(reg.curl(&["-f", "-I", &url]).status.success());
    assert_eq!(reg.blob_gets(layer), 1);

    reg.tamper_blob(layer);
    let tampered = reg.curl(&["-f", &url]);
    assert!(tampered.status.success());
    assert_eq!(tampered.stdout.len(), get.stdout.len());
    assert_ne!(
        &sha256(&tampered.stdout),
        layer,
        "the registry serves the tampered bytes"
    );
    assert_eq!(reg.blob_gets(layer), 2);
    assert_eq!(reg.blob_gets(&built.config.digest), 0);

    reg.stop();
    assert!(!reg.curl(&[&format!("{}/v2/", reg.url())]).status.success());
    reg.restart();
    assert!(reg
        .curl(&["-f", &format!("{}/v2/", reg.url())])
        .status
        .success());
}

#[test]
fn harness_auth_tls_zstd_index_and_busybox() {
    let t = tempfile::tempdir().unwrap();

    // htpasswd auth.
    let reg = Registry::start(RegistryOptions::with_auth("alice", "s3cret"));
    let v2 = format!("{}/v2/", reg.url());
    let code = |args: &[&str]| {
        let mut a = vec!["-o", "/dev/null", "-w", "%{http_code}"];
        a.extend_from_slice(args);
        String::from_utf8(reg.curl(&a).stdout).unwrap()
    };
    assert_eq!(code(&[&v2]), "401");
    assert_eq!(code(&["-u", "alice:wrong", &v2]), "401");
    assert_eq!(code(&["-u", "alice:s3cret", &v2]), "200");
    let one = vec![LayerSpec::new(vec![Entry::file("f", b"x")])];
    let built = build_layout(&t.path().join("one"), "one:1", &one, &ConfigSpec::default());
    let creds = Some(("alice", "s3cret"));
    let d = reg.push_oci_layout(&t.path().join("one"), "one:1", "private/one:1", creds, None);
    assert_eq!(d, built.manifest.digest);
    assert!(reg.requests().iter().any(|r| r.status == 401));
    drop(reg);

    // TLS with a self-signed certificate for 127.0.0.1.
    let reg = Registry::start(RegistryOptions {
        tls: true,
        ..RegistryOptions::default()
    });
    assert!(reg.url().starts_with("https://"));
    let ca = t.path().join("ca.pem");
    std::fs::write(&ca, reg.cert_pem().unwrap()).unwrap();
    let ok = reg.curl(&[
        "-f",
        "--cacert",
        ca.to_str().unwrap(),
        &format!("{}/v2/", reg.url()),
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let d = reg.push_oci_layout(&t.path().join("one"), "one:1", "tls/one:1", None, None);
    assert_eq!(d, built.manifest.digest);
    drop(reg);

    let reg = Registry::start(RegistryOptions::default());
    // skopeo recompresses uncompressed layers to zstd.
    let plain: Vec<LayerSpec> = rich_layers()
        .into_iter()
        .map(|l| l.compression(Compression::None))
        .collect();
    build_layout(
        &t.path().join("plain"),
        "p:1",
        &plain,
        &ConfigSpec::default(),
    );
    let d = reg.push_oci_layout(
        &t.path().join("plain"),
        "p:1",
        "z/app:1",
        None,
        Some("zstd"),
    );
    assert_eq!(sha256(&reg.raw_manifest("z/app:1", None)), d);

    // An index with two platforms is pushed whole.
    let mut layout = OciLayout::create(&t.path().join("multi"));
    let arm = layout.add_image(&one, &ConfigSpec::platform("arm64", Some("v8")));
    let amd = layout.add_image(&one, &ConfigSpec::platform("amd64", None));
    let index = layout.add_index(&[&arm, &amd]);
    layout.tag("multi:1", &index);
    let d = reg.push_oci_layout(layout.dir(), "multi:1", "multi/app:1", None, None);
    assert_eq!(d, index.digest);
    let served = reg.manifest("multi/app:1", None);
    assert_eq!(served["manifests"].as_array().unwrap().len(), 2);
    let by_digest = format!("multi/app@{}", amd.manifest.digest);
    assert_eq!(
        sha256(&reg.raw_manifest(&by_digest, None)),
        amd.manifest.digest
    );

    // The testnet's busybox image.
    let (tag, digest) = busybox_layout(&t.path().join("busybox"));
    assert_eq!(tag, "shoal.test/busybox:1");
    let d = reg.push_oci_layout(
        &t.path().join("busybox"),
        &tag,
        "shoal/busybox:1",
        None,
        None,
    );
    assert_eq!(d, digest);
}

// ---- pulls -----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_unpacks_every_kind_of_entry() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(RegistryOptions::default());
    let config = ConfigSpec {
        cmd: vec!["/app/run.sh".into()],
        env: vec!["PATH=/bin".into(), "MODE=test".into()],
        ..ConfigSpec::default()
    };
    let built = build_layout(&t.path().join("oci"), "rich:1", &rich_layers(), &config);
    let digest = reg.push_oci_layout(&t.path().join("oci"), "rich:1", "shoal/rich:1", None, None);
    assert_eq!(digest, built.manifest.digest);

    let p = puller(&t.path().join("store"), &reg);
    let reference = reg.reference("shoal/rich:1");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let img = p.pull(&request(&reference), Some(tx)).await.expect("pull");
    assert_eq!(img.digest, digest);
    assert_eq!(img.config.cmd, vec!["/app/run.sh"]);
    assert_eq!(img.config.env, vec!["PATH=/bin", "MODE=test"]);
    assert_layers(&img, &built);
    assert_rich_layers(&img);

    // What the kubelet resolves later is the same image.
    let resolved = p.store().resolve(&reference).expect("resolve after pull");
    assert_eq!(resolved, img);
    let blobs = verified_blobs(p.store());
    for d in built.blob_digests().iter().chain([&built.manifest.digest]) {
        assert!(blobs.contains(&hex(d).to_string()), "blob {d} is stored");
    }

    // Progress: the manifest's blobs, then done.
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    let resolved_blobs = events.iter().find_map(|e| match e {
        PullEvent::Resolved { digest: d, blobs } if *d == digest => Some(blobs.clone()),
        _ => None,
    });
    let mut listed: Vec<String> = resolved_blobs
        .unwrap_or_else(|| panic!("no Resolved event for {digest}: {events:?}"))
        .into_iter()
        .map(|(d, _)| d)
        .collect();
    listed.sort();
    let mut expected = built.blob_digests();
    expected.sort();
    assert_eq!(listed, expected);
    assert!(
        matches!(events.last(), Some(PullEvent::Done { .. })),
        "the last event is Done: {events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_zstd_layers() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(RegistryOptions::default());
    // Uncompressed in the layout; skopeo compresses them with zstd on the way.
    let layers: Vec<LayerSpec> = rich_layers()
        .into_iter()
        .map(|l| l.compression(Compression::None))
        .collect();
    let built = build_layout(
        &t.path().join("oci"),
        "z:1",
        &layers,
        &ConfigSpec::default(),
    );
    let digest = reg.push_oci_layout(
        &t.path().join("oci"),
        "z:1",
        "shoal/zstd:1",
        None,
        Some("zstd"),
    );
    let manifest = reg.manifest("shoal/zstd:1", None);
    assert_eq!(
        manifest["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );

    let p = puller(&t.path().join("store"), &reg);
    let img = pull(&p, &reg.reference("shoal/zstd:1"))
        .await
        .expect("pull zstd");
    assert_eq!(img.digest, digest);
    // Same diff ids as the uncompressed layers.
    assert_layers(&img, &built);
    assert_rich_layers(&img);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_busybox_by_digest() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(RegistryOptions::default());
    let (tag, digest) = busybox_layout(&t.path().join("busybox"));
    reg.push_oci_layout(
        &t.path().join("busybox"),
        &tag,
        "shoal/busybox:1",
        None,
        None,
    );

    let p = puller(&t.path().join("store"), &reg);
    let by_digest = reg.reference(&format!("shoal/busybox@{digest}"));
    let img = pull(&p, &by_digest).await.expect("pull by digest");
    assert_eq!(img.digest, digest);
    assert_eq!(img.config.cmd, vec!["sh"]);
    let root = &img.layers[0];
    assert_eq!(
        std::fs::metadata(root.join("bin/busybox")).unwrap().len(),
        std::fs::metadata("/bin/busybox").unwrap().len()
    );
    assert_eq!(
        std::fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    let resolved = p.store().resolve(&by_digest).expect("resolve by digest");
    assert_eq!(resolved.digest, digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_picks_the_host_platform_from_an_index() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(RegistryOptions::default());
    let mut layout = OciLayout::create(&t.path().join("oci"));
    let platform = |arch: &str, variant: Option<&str>| {
        let layers = vec![LayerSpec::new(vec![Entry::file("arch", arch.as_bytes())])];
        (layers, ConfigSpec::platform(arch, variant))
    };
    let host = host_arch();
    let other = if host == "arm64" { "amd64" } else { "arm64" };
    let (l, c) = platform(other, (other == "arm64").then_some("v8"));
    let other_img = layout.add_image(&l, &c);
    let (l, c) = platform(host, (host == "arm64").then_some("v8"));
    let host_img = layout.add_image(&l, &c);
    // The host's manifest second: taking the first entry would be wrong.
    let index = layout.add_index(&[&other_img, &host_img]);
    layout.tag("multi:1", &index);
    let pushed = reg.push_oci_layout(layout.dir(), "multi:1", "shoal/multi:1", None, None);
    assert_eq!(pushed, index.digest);

    let p = puller(&t.path().join("store"), &reg);
    let reference = reg.reference("shoal/multi:1");
    let img = pull(&p, &reference).await.expect("pull an index");
    assert_eq!(img.digest, host_img.manifest.digest, "the {host} manifest");
    assert_eq!(
        std::fs::read(img.layers[0].join("arch")).unwrap(),
        host.as_bytes()
    );
    assert_eq!(
        p.store().resolve(&reference).unwrap().digest,
        host_img.manifest.digest
    );
    assert_eq!(reg.blob_gets(&other_img.layers[0].blob.digest), 0);
    assert_eq!(reg.blob_gets(&other_img.config.digest), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticated_registry_needs_the_credentials() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(RegistryOptions::with_auth("alice", "s3cret"));
    let layers = vec![LayerSpec::new(vec![Entry::file("private", b"only alice")])];
    build_layout(
        &t.path().join("oci"),
        "p:1",
        &layers,
        &ConfigSpec::default(),
    );
    let digest = reg.push_oci_layout(
        &t.path().join("oci"),
        "p:1",
        "private/app:1",
        Some(("alice", "s3cret")),
        None,
    );
    let p = puller(&t.path().join("store"), &reg);
    let reference = reg.reference("private/app:1");

    let err = pull(&p, &reference).await.expect_err("anonymous pull");
    let msg = err.to_string().to_lowercase();
    assert!(
        matches!(err, PullError::Registry(_))
            && (msg.contains("unauthorized") || msg.contains("authentication")),
        "expected the registry's refusal, got {err:?}"
    );
    assert!(err.is_caller_error());
    assert_empty_store(p.store());

    let wrong = PullRequest {
        reference: reference.clone(),
        credentials: Some(Credentials {
            username: "alice".into(),
            password: "wrong".into(),
        }),
    };
    let err = p.pull(&wrong, None).await.expect_err("wrong password");
    assert!(matches!(err, PullError::Registry(_)), "{err:?}");
    assert_empty_store(p.store());

    let right = PullRequest {
        reference: reference.clone(),
        credentials: Some(Credentials {
            username: "alice".into(),
            password: "s3cret".into(),
        }),
    };
    let img = p.pull(&right, None).await.expect("pull with credentials");
    assert_eq!(img.digest, digest);
    assert_eq!(
        std::fs::read(img.layers[0].join("private")).unwrap(),
        b"only alice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_registry_needs_credentials_and_issues_a_token() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(RegistryOptions::with_token_auth("bob", "t0ken-pw"));
    let layers = vec![LayerSpec::new(vec![Entry::file("private", b"only bob")])];
    build_layout(
        &t.path().join("oci"),
        "p:1",
        &layers,
        &ConfigSpec::default(),
    );
    // skopeo pushes with a token the same server issues for pull and push.
    let digest = reg.push_oci_layout(
        &t.path().join("oci"),
        "p:1",
        "private/app:1",
        Some(("bob", "t0ken-pw")),
        None,
    );
    let pushed = reg.token_requests();
    assert!(
        pushed.iter().any(|r| r.granted
            && r.scopes
                .iter()
                .any(|s| s.starts_with("repository:private/app:") && s.contains("push"))),
        "skopeo's push should have asked for a push token: {pushed:?}"
    );
    let seen = pushed.len();
    let p = puller(&t.path().join("store"), &reg);
    let reference = reg.reference("private/app:1");
    let pull_scope = "repository:private/app:pull".to_string();

    // Anonymous: the token server refuses, the registry then refuses the tokenless request.
    let err = pull(&p, &reference).await.expect_err("anonymous pull");
    let msg = err.to_string().to_lowercase();
    assert!(
        matches!(err, PullError::Registry(_))
            && (msg.contains("unauthorized") || msg.contains("authentication")),
        "expected the registry's refusal, got {err:?}"
    );
    assert!(err.is_caller_error());
    assert_empty_store(p.store());
    let anonymous = reg.token_requests()[seen..].to_vec();
    assert!(
        !anonymous.is_empty()
            && anonymous
                .iter()
                .all(|r| r.user.is_none() && !r.granted && r.scopes == [pull_scope.clone()]),
        "an anonymous pull should ask for a pull token without credentials and be refused: \
         {anonymous:?}"
    );
    let seen = seen + anonymous.len();

    let wrong = PullRequest {
        reference: reference.clone(),
        credentials: Some(Credentials {
            username: "bob".into(),
            password: "wrong".into(),
        }),
    };
    let err = p.pull(&wrong, None).await.expect_err("wrong password");
    assert!(matches!(err, PullError::Registry(_)), "{err:?}");
    assert_empty_store(p.store());
    let refused = reg.token_requests()[seen..].to_vec();
    assert!(
        !refused.is_empty()
            && refused
                .iter()
                .all(|r| r.user.as_deref() == Some("bob") && !r.granted),
        "a wrong password should be refused by the token server: {refused:?}"
    );
    let seen = seen + refused.len();

    let right = PullRequest {
        reference: reference.clone(),
        credentials: Some(Credentials {
            username: "bob".into(),
            password: "t0ken-pw".into(),
        }),
    };
    let img = p.pull(&right, None).await.expect("pull with credentials");
    assert_eq!(img.digest, digest);
    assert_eq!(
        std::fs::read(img.layers[0].join("private")).unwrap(),
        b"only bob"
    );
    let resolved = p
        .store()
        .resolve(&reference)
        .expect("resolve after the pull");
    assert_eq!(resolved.digest, digest);
    let granted = reg.token_requests()[seen..].to_vec();
    assert!(
        granted.iter().any(|r| r.granted
            && r.user.as_deref() == Some("bob")
            && r.service.as_deref() == Some("shoal-test")
            && r.scopes == [pull_scope.clone()]),
        "the pull should have been granted a pull token: {granted:?}"
    );
    // The registry refused the tokenless requests and accepted the token: the manifest was
    // served.
    let served = reg.requests();
    assert!(
        served
            .iter()
            .any(|r| r.method == "GET" && r.uri.contains("/manifests/") && r.status == 401),
        "the manifest requests without a token should have been refused: {served:?}"
    );
    assert!(
        served
            .iter()
            .any(|r| r.method == "GET" && r.uri.contains("/manifests/") && r.status == 200),
        "no manifest was served with the token: {served:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_registry_must_be_listed_as_insecure() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(RegistryOptions::default());
    let layers = vec![LayerSpec::new(vec![Entry::file("f", b"x")])];
    build_layout(
        &t.path().join("oci"),
        "a:1",
        &layers,
        &ConfigSpec::default(),
    );
    let digest = reg.push_oci_layout(&t.path().join("oci"), "a:1", "shoal/app:1", None, None);
    let reference = reg.reference("shoal/app:1");

    let strict = Puller::new(
        ImageStore::open(&t.path().join("strict")).unwrap(),
        PullConfig::default(),
        Arc::new(NoPeers),
    );
    let err = pull(&strict, &reference)
        .await
        .expect_err("plain HTTP, not listed");
    let msg = err.to_string().to_lowercase();
    assert!(
        matches!(err, PullError::Insecure(_)) || msg.contains("insecure") || msg.contains("http"),
        "expected a refusal of plain HTTP, got {err:?}"
    );
    assert_empty_store(strict.store());
    assert_eq!(
        reg.manifest_gets(),
        0,
        "no manifest fetched over plain HTTP"
    );

    let listed = puller(&t.path().join("listed"), &reg);
    let img = pull(&listed, &reference).await.expect("listed as insecure");
    assert_eq!(img.digest, digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_tls_certificate_is_refused() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(RegistryOptions {
        tls: true,
        ..RegistryOptions::default()
    });
    let layers = vec![LayerSpec::new(vec![Entry::file("f", b"x")])];
    let built = build_layout(
        &t.path().join("oci"),
        "a:1",
        &layers,
        &ConfigSpec::default(),
    );
    reg.push_oci_layout(&t.path().join("oci"), "a:1", "shoal/app:1", None, None);
    let strict = Puller::new(
        ImageStore::open(&t.path().join("store")).unwrap(),
        PullConfig::default(),
        Arc::new(NoPeers),
    );
    let err = pull(&strict, &reg.reference("shoal/app:1"))
        .await
        .expect_err("a self-signed certificate is not trusted");
    let msg = format!("{err} {err:?}").to_lowercase();
    assert!(
        msg.contains("certificate") || msg.contains("tls"),
        "the error should say the certificate is not trusted: {err:?}"
    );
    assert_empty_store(strict.store());
    assert_eq!(reg.blob_gets(&built.layers[0].blob.digest), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_blob_is_refused_and_not_stored() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(RegistryOptions::default());
    let built = build_layout(
        &t.path().join("oci"),
        "a:1",
        &rich_layers(),
        &ConfigSpec::default(),
    );
    reg.push_oci_layout(&t.path().join("oci"), "a:1", "shoal/app:1", None, None);
    let bad = &built.layers[1].blob.digest;
    reg.tamper_blob(bad);

    let p = puller(&t.path().join("store"), &reg);
    let reference = reg.reference("shoal/app:1");
    let err = pull(&p, &reference).await.expect_err("tampered layer");
    assert!(
        matches!(err, PullError::Digest { .. }) || err.to_string().contains("digest"),
        "expected a digest mismatch, got {err:?}"
    );
    assert!(
        err.to_string().contains(bad.as_str()),
        "names the blob: {err}"
    );
    assert!(
        p.store().resolve(&reference).is_err(),
        "the image is not usable"
    );
    let blobs = verified_blobs(p.store());
    assert!(
        !blobs.contains(&hex(bad).to_string()),
        "the tampered blob is not stored"
    );
    assert!(
        !entries(&p.store().dir().join("layers"))
            .contains(&hex(&built.layers[1].diff_id).to_string()),
        "the tampered layer is not unpacked"
    );
    assert!(reg.blob_gets(bad) >= 1, "it was fetched (and refused)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_layers_are_refused() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(RegistryOptions::default());
    let outside = t.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let outside_s = outside.to_str().unwrap().to_string();
    let escape = format!("shoal-escape-{}", std::process::id());
    let absolute = format!("/tmp/{escape}-abs");
    let cases: Vec<(&str, LayerSpec)> = vec![
        ("dotdot", hostile::dotdot(&escape)),
        ("nested-dotdot", hostile::nested_dotdot(&escape)),
        ("absolute", hostile::absolute(&absolute)),
        ("hardlink-up", hostile::hardlink_escape()),
        ("hardlink-absolute", hostile::hardlink_absolute()),
        (
            "through-symlink",
            hostile::write_through_symlink(&outside_s, "evil"),
        ),
        (
            "through-relative-symlink",
            hostile::write_through_relative_symlink(&escape),
        ),
    ];
    let base = LayerSpec::new(vec![
        Entry::dir("etc"),
        Entry::file("etc/hostname", b"base"),
    ]);
    for (what, layer) in cases {
        let dir = t.path().join(format!("oci-{what}"));
        build_layout(
            &dir,
            "evil:1",
            &[base.clone(), layer],
            &ConfigSpec::default(),
        );
        reg.push_oci_layout(&dir, "evil:1", &format!("evil/{what}:1"), None, None);
        let store_dir = t.path().join(format!("store-{what}"));
        let p = puller(&store_dir, &reg);
        let reference = reg.reference(&format!("evil/{what}:1"));
        let err = pull(&p, &reference).await.expect_err(what);
        assert!(
            err.to_string().contains("unsafe layer"),
            "{what}: expected an unsafe-layer refusal, got {err:?}"
        );
        assert!(p.store().resolve(&reference).is_err(), "{what}: resolvable");
        assert!(
            entries(&outside).is_empty(),
            "{what}: wrote into {outside_s}"
        );
        assert!(!Path::new(&absolute).exists(), "{what}: wrote {absolute}");
        for d in [
            t.path().to_path_buf(),
            store_dir.clone(),
            store_dir.join("tmp"),
            store_dir.join("layers"),
            std::env::temp_dir(),
        ] {
            assert!(
                !d.join(&escape).exists(),
                "{what}: wrote {}",
                d.join(&escape).display()
            );
        }
        let passwd = std::fs::read("/etc/passwd").unwrap();
        assert!(!passwd.is_empty(), "{what}: /etc/passwd intact");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_down_is_unreachable() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let mut reg = Registry::start(RegistryOptions::default());
    let layers = vec![LayerSpec::new(vec![Entry::file("f", b"x")])];
    build_layout(
        &t.path().join("oci"),
        "a:1",
        &layers,
        &ConfigSpec::default(),
    );
    reg.push_oci_layout(&t.path().join("oci"), "a:1", "shoal/app:1", None, None);
    reg.stop();
    let p = puller(&t.path().join("store"), &reg);
    let err = pull(&p, &reg.reference("shoal/app:1"))
        .await
        .expect_err("registry down");
    assert!(matches!(err, PullError::Unreachable(_)), "{err:?}");
    assert!(!err.is_caller_error());
    assert_empty_store(p.store());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_download_each_blob_once() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(RegistryOptions::default());
    let layers = random_layers(24 << 20, 3, 7);
    let built = build_layout(
        &t.path().join("oci"),
        "big:1",
        &layers,
        &ConfigSpec::default(),
    );
    let digest = reg.push_oci_layout(&t.path().join("oci"), "big:1", "shoal/big:1", None, None);

    let p = puller(&t.path().join("store"), &reg);
    let reference = reg.reference("shoal/big:1");
    let req = request(&reference);
    let results = futures::future::join_all((0..4).map(|_| p.pull(&req, None))).await;
    for r in results {
        let img = r.expect("every concurrent pull succeeds");
        assert_eq!(img.digest, digest);
        assert_layers(&img, &built);
    }
    for l in &built.layers {
        assert_eq!(
            reg.blob_gets(&l.blob.digest),
            1,
            "layer {} fetched once",
            l.blob.digest
        );
    }
    let unpacked = &p.store().resolve(&reference).unwrap().layers[2];
    assert_eq!(
        std::fs::metadata(unpacked.join("data2/f0")).unwrap().len(),
        1 << 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_pull_fetches_no_blob() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(RegistryOptions::default());
    let built = build_layout(
        &t.path().join("oci"),
        "a:1",
        &rich_layers(),
        &ConfigSpec::default(),
    );
    let digest = reg.push_oci_layout(&t.path().join("oci"), "a:1", "shoal/app:1", None, None);
    let p = puller(&t.path().join("store"), &reg);
    let reference = reg.reference("shoal/app:1");
    pull(&p, &reference).await.expect("first pull");
    let blobs = built.blob_digests();
    let before: Vec<usize> = blobs.iter().map(|d| reg.blob_gets(d)).collect();
    assert!(before.iter().all(|&n| n == 1), "first pull: {before:?}");

    let img = pull(&p, &reference).await.expect("second pull");
    assert_eq!(img.digest, digest);
    let after: Vec<usize> = blobs.iter().map(|d| reg.blob_gets(d)).collect();
    assert_eq!(after, before, "no blob is fetched again");

    // Another puller over the same store (an agent restart) fetches nothing either.
    let again = puller(&t.path().join("store"), &reg);
    pull(&again, &reference).await.expect("pull after restart");
    let after: Vec<usize> = blobs.iter().map(|d| reg.blob_gets(d)).collect();
    assert_eq!(after, before, "no blob is fetched after a restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_requests_go_through_the_configured_proxy_unless_exempt() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(RegistryOptions::default());
    let layers = vec![LayerSpec::new(vec![Entry::file("f", b"proxied")])];
    build_layout(
        &t.path().join("oci"),
        "a:1",
        &layers,
        &ConfigSpec::default(),
    );
    let digest = reg.push_oci_layout(&t.path().join("oci"), "a:1", "shoal/proxy:1", None, None);
    // A proxy that accepts connections and closes them at once.
    let proxy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_addr = proxy.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let accepted = accepted.clone();
        std::thread::spawn(move || {
            for conn in proxy.incoming() {
                accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(conn);
            }
        });
    }
    let with_proxy = |no_proxy: Option<&str>, dir: &str| {
        Puller::new(
            ImageStore::open(&t.path().join(dir)).unwrap(),
            PullConfig {
                insecure_registries: vec![reg.host()],
                http_proxy: Some(format!("http://{proxy_addr}")),
                https_proxy: Some(format!("http://{proxy_addr}")),
                no_proxy: no_proxy.map(str::to_string),
                ..PullConfig::default()
            },
            Arc::new(NoPeers),
        )
    };
    let reference = reg.reference("shoal/proxy:1");
    let err = pull(&with_proxy(None, "a"), &reference)
        .await
        .expect_err("the proxy drops every connection");
    assert!(matches!(err, PullError::Unreachable(_)), "{err:?}");
    assert!(
        accepted.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "the request went to the proxy"
    );
    let img = pull(&with_proxy(Some("127.0.0.1"), "b"), &reference)
        .await
        .expect("NO_PROXY exempts the registry");
    assert_eq!(img.digest, digest);
}

/// A puller with `config` in a fresh store under `dir`.
fn puller_with(dir: &Path, config: PullConfig) -> Arc<Puller> {
    Puller::new(
        ImageStore::open(dir).expect("open the image store"),
        config,
        Arc::new(NoPeers),
    )
}

/// `certs/<host>/` with `files` (name, content): a certs directory in Docker's layout.
fn certs_dir(root: &Path, host: &str, files: &[(&str, &[u8])]) -> PathBuf {
    let certs = root.join("certs.d");
    std::fs::create_dir_all(certs.join(host)).unwrap();
    for (name, content) in files {
        std::fs::write(certs.join(host).join(name), content).unwrap();
    }
    certs
}

/// Docker's self-signed recipe (a CA certificate as the registry's own): refused as
/// `CaUsedAsEndEntity` with the system roots alone, pulled once the certificate is in
/// `certs.d/HOST:PORT/ca.crt` (pinned); another certificate there does not make it trusted,
/// and a corrupt one is an error naming the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_recipe_certificate_is_pulled_once_in_certs_d() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(RegistryOptions {
        tls: true,
        docker_recipe_cert: true,
        ..RegistryOptions::default()
    });
    let layers = vec![LayerSpec::new(vec![Entry::file("f", b"pinned")])];
    build_layout(
        &t.path().join("oci"),
        "a:1",
        &layers,
        &ConfigSpec::default(),
    );
    let digest = reg.push_oci_layout(&t.path().join("oci"), "a:1", "shoal/app:1", None, None);
    let reference = reg.reference("shoal/app:1");

    let strict = puller_with(&t.path().join("strict"), PullConfig::default());
    let err = pull(&strict, &reference)
        .await
        .expect_err("not trusted without certs.d");
    assert!(
        format!("{err}").contains("CaUsedAsEndEntity"),
        "webpki should refuse the CA certificate as the server's own: {err:?}"
    );
    assert_empty_store(strict.store());

    // Another certificate for the same name in certs.d: still full verification, refused.
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let wrong = certs_dir(
        &t.path().join("wrong"),
        &reg.host(),
        &[("ca.crt", other.cert.pem().as_bytes())],
    );
    let p = puller_with(
        &t.path().join("wrong-store"),
        PullConfig {
            certs_dirs: vec![wrong],
            ..PullConfig::default()
        },
    );
    let err = pull(&p, &reference)
        .await
        .expect_err("an unrelated certificate");
    assert!(format!("{err}").contains("certificate"), "{err:?}");
    assert_empty_store(p.store());

    // A corrupt ca.crt: an error naming the file, nothing fetched.
    let corrupt = certs_dir(
        &t.path().join("corrupt"),
        &reg.host(),
        &[("ca.crt", b"garbage")],
    );
    let p = puller_with(
        &t.path().join("corrupt-store"),
        PullConfig {
            certs_dirs: vec![corrupt.clone()],
            ..PullConfig::default()
        },
    );
    let err = pull(&p, &reference).await.expect_err("a corrupt ca.crt");
    assert!(
        matches!(&err, PullError::Config(m) if m.contains(&corrupt.join(reg.host()).join("ca.crt").display().to_string())),
        "{err:?}"
    );

    // The registry's own certificate in certs.d: pulled. An empty first directory is passed.
    let certs = certs_dir(
        &t.path().join("good"),
        &reg.host(),
        &[("ca.crt", reg.cert_pem().unwrap().as_bytes())],
    );
    let p = puller_with(
        &t.path().join("good-store"),
        PullConfig {
            certs_dirs: vec![t.path().join("missing"), certs],
            ..PullConfig::default()
        },
    );
    let img = pull(&p, &reference).await.expect("pinned in certs.d");
    assert_eq!(img.digest, digest);
    assert_eq!(std::fs::read(img.layers[0].join("f")).unwrap(), b"pinned");
}

/// A registry that requires client certificates (`http.tls.clientcas`): refused with the CA
/// alone, pulled with `client.cert`/`client.key` beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_from_certs_d() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(RegistryOptions {
        tls: true,
        docker_recipe_cert: true,
        client_certs: true,
        ..RegistryOptions::default()
    });
    let layers = vec![LayerSpec::new(vec![Entry::file("f", b"mtls")])];
    build_layout(
        &t.path().join("oci"),
        "a:1",
        &layers,
        &ConfigSpec::default(),
    );
    let digest = reg.push_oci_layout(&t.path().join("oci"), "a:1", "shoal/mtls:1", None, None);
    let reference = reg.reference("shoal/mtls:1");
    let ca = reg.cert_pem().unwrap().as_bytes().to_vec();

    let ca_only = certs_dir(&t.path().join("ca-only"), &reg.host(), &[("ca.crt", &ca)]);
    let p = puller_with(
        &t.path().join("ca-only-store"),
        PullConfig {
            certs_dirs: vec![ca_only],
            ..PullConfig::default()
        },
    );
    let err = pull(&p, &reference)
        .await
        .expect_err("no client certificate");
    assert!(matches!(err, PullError::Unreachable(_)), "{err:?}");
    assert_empty_store(p.store());

    let client = reg.client_cert_dir().unwrap();
    let cert = std::fs::read(client.join("client.cert")).unwrap();
    let key = std::fs::read(client.join("client.key")).unwrap();
    // A certificate without its key is refused by name.
    let half = certs_dir(
        &t.path().join("half"),
        &reg.host(),
        &[("ca.crt", &ca), ("client.cert", &cert)],
    );
    let p = puller_with(
        &t.path().join("half-store"),
        PullConfig {
            certs_dirs: vec![half],
            ..PullConfig::default()
        },
    );
    let err = pull(&p, &reference).await.expect_err("client.key missing");
    assert!(
        matches!(&err, PullError::Config(m) if m.contains("client.key")),
        "{err:?}"
    );

    let full = certs_dir(
        &t.path().join("full"),
        &reg.host(),
        &[
            ("ca.crt", &ca),
            ("client.cert", &cert),
            ("client.key", &key),
        ],
    );
    let p = puller_with(
        &t.path().join("full-store"),
        PullConfig {
            certs_dirs: vec![full],
            ..PullConfig::default()
        },
    );
    let img = pull(&p, &reference)
        .await
        .expect("with the client certificate");
    assert_eq!(img.digest, digest);
}

/// A mirror (here over TLS with its certificate in certs.d) is asked first; what it lacks,
/// or everything while it is down, comes from the registry itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_is_tried_first_and_the_registry_is_the_fallback() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let upstream = Registry::start(RegistryOptions::default());
    let mut mirror = Registry::start(RegistryOptions {
        tls: true,
        docker_recipe_cert: true,
        ..RegistryOptions::default()
    });
    let only_mirror = vec![LayerSpec::new(vec![Entry::file("f", b"from the mirror")])];
    build_layout(
        &t.path().join("m"),
        "m:1",
        &only_mirror,
        &ConfigSpec::default(),
    );
    let mirrored = mirror.push_oci_layout(&t.path().join("m"), "m:1", "shoal/app:1", None, None);
    let only_upstream = vec![LayerSpec::new(vec![Entry::file("f", b"from upstream")])];
    let built = build_layout(
        &t.path().join("u"),
        "u:1",
        &only_upstream,
        &ConfigSpec::default(),
    );
    let upstreamed =
        upstream.push_oci_layout(&t.path().join("u"), "u:1", "shoal/other:1", None, None);
    let certs = certs_dir(
        t.path(),
        &mirror.host(),
        &[("ca.crt", mirror.cert_pem().unwrap().as_bytes())],
    );
    let config = PullConfig {
        insecure_registries: vec![upstream.host()],
        certs_dirs: vec![certs],
        mirrors: [(upstream.host(), vec![mirror.url()])]
            .into_iter()
            .collect(),
        ..PullConfig::default()
    };

    // Only the mirror has it: the pull of the upstream reference is served by the mirror.
    let p = puller_with(&t.path().join("one"), config.clone());
    let img = pull(&p, &upstream.reference("shoal/app:1"))
        .await
        .expect("served by the mirror");
    assert_eq!(img.digest, mirrored);
    assert_eq!(
        std::fs::read(img.layers[0].join("f")).unwrap(),
        b"from the mirror"
    );

    // Only upstream has it: the mirror answers 404, upstream serves it.
    let img = pull(&p, &upstream.reference("shoal/other:1"))
        .await
        .expect("the registry is the fallback");
    assert_eq!(img.digest, upstreamed);
    assert!(
        mirror
            .requests()
            .iter()
            .any(|r| r.uri.contains("/v2/shoal/other/manifests/") && r.status == 404),
        "the mirror was asked first: {:?}",
        mirror.requests()
    );
    assert_eq!(upstream.blob_gets(&built.layers[0].blob.digest), 1);

    // The mirror down: upstream alone, in a fresh store.
    mirror.stop();
    let p = puller_with(&t.path().join("two"), config);
    let img = pull(&p, &upstream.reference("shoal/other:1"))
        .await
        .expect("the mirror is down");
    assert_eq!(img.digest, upstreamed);
}
