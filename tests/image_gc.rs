//! Image garbage collection and removal on a real store (images pulled from a real
//! `docker-registry`): over the threshold, unused images go least recently used first; an
//! image a container uses (its layers named by an attempt's `shim.json`) or a bound pod wants
//! is never removed, and `remove_image` refuses an image in use.
//!
//! Needs root (layers are unpacked with their owners) and docker-registry, skopeo, curl.

mod support;

use std::path::Path;
use std::sync::Arc;

use shoal::agent::images::{gc, layers_in_use, remove_image, GcConfig};
use shoal::runtime::image::pull::{NoPeers, PullConfig, PullRequest, Puller};
use shoal::runtime::image::{ImageError, ImageStore};

use support::registry::layout::{build_layout, random_layers, ConfigSpec};
use support::registry::{Registry, RegistryOptions};

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (layers are unpacked with their owners)"
    );
}

async fn pull_new(reg: &Registry, p: &Arc<Puller>, dir: &Path, name: &str, seed: u64) -> String {
    let layout = dir.join(format!("oci-{name}"));
    build_layout(
        &layout,
        "x:1",
        &random_layers(1 << 20, 2, seed),
        &ConfigSpec::default(),
    );
    reg.push_oci_layout(&layout, "x:1", &format!("gc/{name}:1"), None, None);
    let reference = reg.reference(&format!("gc/{name}:1"));
    p.pull(
        &PullRequest {
            reference: reference.clone(),
            credentials: None,
        },
        None,
    )
    .await
    .unwrap_or_else(|e| panic!("pull {reference}: {e}"));
    reference
}

/// A container attempt on this node whose root file system uses `layers`.
fn fake_container(data: &Path, pod: &str, layers: &[std::path::PathBuf]) {
    let attempt = data.join("pods").join(pod).join("containers/main/0");
    std::fs::create_dir_all(&attempt).unwrap();
    let spec = serde_json::json!({ "id": format!("{pod}-main-0"), "layers": layers });
    std::fs::write(attempt.join("shim.json"), spec.to_string()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_removes_unused_images_oldest_first_and_never_one_in_use() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    let reg = Registry::start(RegistryOptions::default());
    let p = Puller::new(
        ImageStore::open(&data.join("images")).unwrap(),
        PullConfig {
            insecure_registries: vec![reg.host()],
            ..PullConfig::default()
        },
        Arc::new(NoPeers),
    );
    let running = pull_new(&reg, &p, t.path(), "running", 1).await;
    let old = pull_new(&reg, &p, t.path(), "old", 2).await;
    let wanted = pull_new(&reg, &p, t.path(), "wanted", 3).await;
    // The most recently used image: removable, after `old`.
    pull_new(&reg, &p, t.path(), "recent", 4).await;
    let store = p.store().clone();
    let running_layers = store.resolve(&running).unwrap().layers;
    fake_container(&data, "pod-a", &running_layers);
    assert_eq!(layers_in_use(&data).len(), 2);

    // Under the thresholds: nothing happens.
    let roomy = GcConfig {
        high_percent: 100,
        low_percent: 99,
        max_bytes: Some(u64::MAX / 2),
    };
    let r = gc(&p, &data, &roomy, Vec::new()).await.unwrap();
    assert!(r.removed.is_empty(), "{r:?}");
    assert_eq!(store.list().len(), 4);

    // Removal refuses what a container uses.
    let err = remove_image(&p, &data, &running).await.expect_err("in use");
    assert!(matches!(err, ImageError::InUse(_)), "{err:?}");

    // Over a store cap that leaves room for about two images: the least recently used unused
    // image goes first; the running and the wanted ones stay.
    let before = store.disk_bytes();
    let tight = GcConfig {
        high_percent: 100,
        low_percent: 99,
        max_bytes: Some(before / 2),
    };
    let r = gc(&p, &data, &tight, vec![wanted.clone()]).await.unwrap();
    assert_eq!(r.removed.first(), Some(&old), "{r:?}");
    assert!(
        !r.removed.contains(&running) && !r.removed.contains(&wanted),
        "{r:?}"
    );
    assert!(r.store_bytes_after < before, "{r:?}");
    for img in [&running, &wanted] {
        let resolved = store.resolve(img).unwrap_or_else(|e| panic!("{img}: {e}"));
        assert!(
            resolved.layers.iter().all(|l| l.is_dir()),
            "{img} layers kept"
        );
    }
    assert!(store.resolve(&old).is_err(), "{old} removed");
    assert!(running_layers.iter().all(|l| l.is_dir()));

    // With nothing in use any more, a cap of one byte removes everything unused.
    std::fs::remove_dir_all(data.join("pods")).unwrap();
    let zero = GcConfig {
        high_percent: 100,
        low_percent: 99,
        max_bytes: Some(1),
    };
    let r = gc(&p, &data, &zero, Vec::new()).await.unwrap();
    assert!(store.list().is_empty(), "{r:?} left {:?}", store.list());
    let left: Vec<_> = std::fs::read_dir(data.join("images/layers"))
        .unwrap()
        .flatten()
        .collect();
    assert!(left.is_empty(), "layers left: {left:?}");
}
