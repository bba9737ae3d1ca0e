//! `shoal image import` and `shoal image ls` against real agents on loopback, with the image
//! the testnet uses (`testnet/busybox-image.sh`, from Debian's busybox-static): the archive
//! lands in the store of the node the context names, and only there.

mod loopback;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use loopback::{shoal_bin, Cluster};

fn shoal(args: &[&str]) -> Output {
    Command::new(shoal_bin())
        .args(args)
        .output()
        .expect("running shoal")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// One kubeconfig with a context per node (as the testnet's).
fn kubeconfig(c: &Cluster) -> PathBuf {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(&c.ca);
    let mut s = String::from("apiVersion: v1\nkind: Config\nclusters:\n");
    for n in &c.nodes {
        s += &format!(
            "- name: {0}\n  cluster:\n    server: https://{1}\n    certificate-authority-data: {ca}\n",
            n.name, n.api
        );
    }
    s += &format!(
        "users:\n- name: admin\n  user:\n    token: {}\ncontexts:\n",
        c.admin_token
    );
    for n in &c.nodes {
        s += &format!(
            "- name: {0}\n  context:\n    cluster: {0}\n    user: admin\n",
            n.name
        );
    }
    s += "current-context: n1\n";
    let p = c.tmp.path().join("all.kubeconfig");
    std::fs::write(&p, s).unwrap();
    p
}

/// The manifest digest `index.json` of an OCI layout tar names.
fn manifest_digest(archive: &Path) -> String {
    let mut a = tar::Archive::new(std::fs::File::open(archive).unwrap());
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().to_str() == Some("index.json") {
            let v: serde_json::Value = serde_json::from_reader(&mut e).unwrap();
            return v["manifests"][0]["digest"].as_str().unwrap().to_string();
        }
    }
    panic!("no index.json in {}", archive.display());
}

#[test]
fn import_busybox_into_the_node_the_context_names() {
    assert!(
        Path::new("/bin/busybox").exists(),
        "this test needs Debian's busybox-static (/bin/busybox): apt-get install busybox-static"
    );
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (the store unpacks layers with their owners and device whiteouts)"
    );
    let c = Cluster::start(2);
    let kc = kubeconfig(&c);
    let kc = kc.to_str().unwrap();
    let archive = c.tmp.path().join("busybox-image.tar");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("testnet/busybox-image.sh");
    let built = Command::new(&script).arg(&archive).output().unwrap();
    assert!(
        built.status.success(),
        "busybox-image.sh: {}",
        text(&built.stderr)
    );
    let digest = manifest_digest(&archive);

    let out = shoal(&[
        "image",
        "import",
        archive.to_str().unwrap(),
        "--kubeconfig",
        kc,
        "--context",
        "n2",
    ]);
    assert!(out.status.success(), "import: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with(&format!("imported shoal.test/busybox:1 {digest} (")),
        "{stdout}"
    );

    // Listed on n2, not on n1.
    let ls = |ctx: &str| {
        let out = shoal(&["image", "ls", "--kubeconfig", kc, "--context", ctx]);
        assert!(out.status.success(), "ls on {ctx}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    let n2 = ls("n2");
    let lines: Vec<&str> = n2.lines().collect();
    assert_eq!(lines.len(), 2, "{n2}");
    assert!(lines[0].starts_with("REFERENCE"), "{n2}");
    let cols: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(cols[0], "shoal.test/busybox:1");
    assert!(digest.starts_with(cols[1]), "{} vs {digest}", cols[1]);
    assert_eq!(ls("n1").lines().count(), 1, "n1 has no image");

    // What the kubelet of n2 will run from.
    let store = shoal::runtime::image::ImageStore::open(&c.nodes[1].dir.join("images")).unwrap();
    let img = store.resolve("shoal.test/busybox:1").unwrap();
    assert_eq!(img.digest, digest);
    assert_eq!(img.config.cmd, vec!["sh"]);
    assert!(img
        .config
        .env
        .iter()
        .any(|e| e.starts_with("PATH=") && e.contains("/bin")));
    let root = &img.layers[0];
    let bb = std::fs::metadata(root.join("bin/busybox")).unwrap();
    assert_eq!(bb.len(), std::fs::metadata("/bin/busybox").unwrap().len());
    for applet in ["sh", "sleep", "httpd", "wget", "nc"] {
        assert_eq!(
            std::fs::read_link(root.join("bin").join(applet)).unwrap(),
            Path::new("busybox"),
            "{applet}"
        );
    }
    let tmp = std::fs::metadata(root.join("tmp")).unwrap();
    assert_eq!(tmp.permissions().mode() & 0o7777, 0o1777);
    assert!(std::fs::read_to_string(root.join("etc/passwd"))
        .unwrap()
        .starts_with("root:x:0:0:"));

    // A second import is idempotent; uploads are not left behind.
    let again = shoal(&[
        "image",
        "import",
        archive.to_str().unwrap(),
        "--kubeconfig",
        kc,
        "--context",
        "n2",
    ]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(text(&again.stdout), stdout);
    assert_eq!(ls("n2"), n2);
    let tmp_left: Vec<_> = std::fs::read_dir(c.nodes[1].dir.join("images/tmp"))
        .unwrap()
        .collect();
    assert!(tmp_left.is_empty(), "left in images/tmp: {tmp_left:?}");

    // Clear errors: a missing file, something that is not an archive (refused before upload),
    // a tar that holds no image (refused by the server, its message shown).
    let missing = shoal(&["image", "import", "/nonexistent.tar", "--kubeconfig", kc]);
    assert!(!missing.status.success());
    assert!(
        text(&missing.stderr).contains("/nonexistent.tar"),
        "{}",
        text(&missing.stderr)
    );
    let junk = c.tmp.path().join("junk.txt");
    std::fs::write(&junk, b"not an archive").unwrap();
    let out = shoal(&[
        "image",
        "import",
        junk.to_str().unwrap(),
        "--kubeconfig",
        kc,
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not a tar archive"),
        "{}",
        text(&out.stderr)
    );
    let empty_tar = c.tmp.path().join("empty.tar");
    {
        let mut b = tar::Builder::new(std::fs::File::create(&empty_tar).unwrap());
        let mut h = tar::Header::new_ustar();
        h.set_path("README").unwrap();
        h.set_size(2);
        h.set_cksum();
        b.append(&h, &b"hi"[..]).unwrap();
        b.finish().unwrap();
    }
    let out = shoal(&[
        "image",
        "import",
        empty_tar.to_str().unwrap(),
        "--kubeconfig",
        kc,
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("400") && err.contains("neither an OCI image layout"),
        "{err}"
    );
}
