//! Images end to end: an image pushed with skopeo to the testnet's registry (Debian's
//! docker-registry on the bridge), pulled, verified, unpacked and run by the agents through
//! kubectl; started from peers once the registry is gone; pull errors shown as Kubernetes does.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::workloads::apply;
use crate::support::registry::layout::{build_layout, ConfigSpec, Entry, LayerSpec};
use crate::support::*;

/// The testnet registry (testnet/registry.sh).
const REGISTRY: &str = "10.77.0.1:5000";
/// Time for a pull and a start.
const START: Duration = Duration::from_secs(90);

/// A busybox image of our own making (so no node holds any of its blobs): busybox-static and
/// a few applet links, then a layer with `marker` and 4 MiB of random filler.
fn build_app_image(dir: &Path, marker: &str) {
    let busybox = std::fs::read("/bin/busybox")
        .expect("missing prerequisite /bin/busybox (Debian package busybox-static)");
    let mut base = vec![
        Entry::dir("bin"),
        Entry::file("bin/busybox", &busybox).mode(0o755),
    ];
    for applet in ["sh", "cat", "sleep", "echo", "ls"] {
        base.push(Entry::symlink(&format!("bin/{applet}"), "busybox"));
    }
    let filler: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let top = vec![
        Entry::file("marker", marker.as_bytes()),
        Entry::file("filler", &filler),
    ];
    build_layout(
        dir,
        "app",
        &[LayerSpec::new(base), LayerSpec::new(top)],
        &ConfigSpec::default(),
    );
}

/// Overwrites the stored data of the image's last layer in the testnet registry's storage
/// with other bytes of the same length; returns that layer's digest.
fn tamper_top_layer(layout: &Path) -> String {
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index.json"))
            .expect("index.json is JSON");
    let manifest_digest = index["manifests"][0]["digest"]
        .as_str()
        .expect("a manifest");
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(
            layout
                .join("blobs/sha256")
                .join(manifest_digest.trim_start_matches("sha256:")),
        )
        .expect("the manifest blob"),
    )
    .expect("the manifest is JSON");
    let layers = manifest["layers"].as_array().expect("layers");
    let digest = layers.last().expect("a layer")["digest"]
        .as_str()
        .expect("a digest")
        .to_string();
    let hex = digest.trim_start_matches("sha256:");
    let data = run_dir()
        .join("registry/storage/docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    let mut bytes = std::fs::read(&data)
        .unwrap_or_else(|e| panic!("the registry's copy {}: {e}", data.display()));
    for b in bytes.iter_mut() {
        *b = !*b;
    }
    std::fs::write(&data, &bytes).expect("tamper with the stored blob");
    digest
}

fn push(dir: &Path, repo_tag: &str) {
    let out = Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:app", dir.display()))
        .arg(format!("docker://{REGISTRY}/{repo_tag}"))
        .output()
        .expect("run skopeo (Debian package skopeo)");
    assert!(
        out.status.success(),
        "skopeo copy to {REGISTRY}/{repo_tag}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A pod pinned to `node` (spec.nodeName) that prints the image's marker and stays up.
fn pod(name: &str, node: &str, image: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {image}
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "cat /marker; echo; sleep 3600"]
"#
    )
}

fn pod_json(ctx: &str, name: &str) -> Result<Value, String> {
    let out = kubectl(ctx, &["get", "pod", name, "-o", "json"])?;
    serde_json::from_str(&out).map_err(|e| format!("bad JSON: {e}: {out}"))
}

fn running_with_marker(ctx: &str, name: &str, marker: &str) -> Result<(), String> {
    let p = pod_json(ctx, name)?;
    if p["status"]["phase"] != "Running" {
        return Err(format!("{name}: {}", p["status"]));
    }
    let logs = kubectl(ctx, &["logs", name])?;
    if !logs.contains(marker) {
        return Err(format!("{name} logs: {logs:?}"));
    }
    Ok(())
}

fn events_of(ctx: &str, pod: &str) -> Result<Vec<(String, String)>, String> {
    let field = format!("--field-selector=involvedObject.name={pod}");
    let out = kubectl(ctx, &["get", "events", &field, "-o", "json"])?;
    let list: Value = serde_json::from_str(&out).map_err(|e| format!("bad JSON: {e}: {out}"))?;
    Ok(list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["reason"].as_str().unwrap_or("").to_string(),
                e["message"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect())
}

#[test]
fn pulled_image_runs_and_peers_serve_it_when_the_registry_is_down() {
    let _tn = Testnet::up(3);
    let dir = tempfile::tempdir().expect("a temporary dir");
    let marker = format!("e2e-marker-{}", std::process::id());
    build_app_image(dir.path(), &marker);
    push(dir.path(), "e2e/app:1");
    let image = format!("{REGISTRY}/e2e/app:1");

    // n1 pulls it from the registry, verifies, unpacks and runs it.
    apply("n1", &pod("app-n1", "n1", &image));
    eventually("app-n1 runs the pulled image", START, || {
        running_with_marker("n1", "app-n1", &marker)
    });
    let events = events_of("n1", "app-n1").unwrap_or_else(|e| panic!("{e}"));
    for reason in ["Pulling", "Pulled", "Started"] {
        assert!(
            events.iter().any(|(r, _)| r == reason),
            "no {reason} event for app-n1: {events:?}"
        );
    }
    let pulled = events.iter().find(|(r, _)| r == "Pulled").unwrap();
    assert!(
        pulled.1.contains("Successfully pulled image"),
        "Pulled event: {pulled:?}"
    );

    // A blob tampered with in the registry: the pull fails with a digest error, nothing runs.
    let bad_dir = tempfile::tempdir().expect("a temporary dir");
    build_app_image(bad_dir.path(), "never-runs");
    push(bad_dir.path(), "e2e/tampered:1");
    let top_layer = tamper_top_layer(bad_dir.path());
    apply(
        "n1",
        &pod("tampered", "n3", &format!("{REGISTRY}/e2e/tampered:1")),
    );
    let waiting = eventually("tampered shows a digest error", START, || {
        let p = pod_json("n1", "tampered")?;
        let w = &p["status"]["containerStatuses"][0]["state"]["waiting"];
        let msg = w["message"].as_str().unwrap_or_default();
        match w["reason"].as_str() {
            Some("ErrImagePull") | Some("ImagePullBackOff") if msg.contains("digest") => {
                Ok(w.clone())
            }
            _ => Err(format!("{}", p["status"])),
        }
    });
    assert!(
        waiting["message"]
            .as_str()
            .unwrap_or_default()
            .contains(&top_layer),
        "the error names the bad blob {top_layer}: {waiting}"
    );
    let p = pod_json("n1", "tampered").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p["status"]["phase"], "Pending", "{}", p["status"]);
    assert!(
        p["status"]["containerStatuses"][0]["containerID"].is_null(),
        "no container was created: {}",
        p["status"]
    );
    kubectl_ok("n1", &["delete", "pod", "tampered", "--wait=false"]);

    // The registry goes away; n2 and n3 still start the image, from n1.
    script("registry.sh", &["stop"]);
    let probe = Command::new("curl")
        .args(["-s", "--max-time", "2", &format!("http://{REGISTRY}/v2/")])
        .status()
        .expect("run curl");
    assert!(!probe.success(), "the registry still answers after stop");
    apply("n2", &pod("app-n2", "n2", &image));
    apply("n3", &pod("app-n3", "n3", &image));
    for (ctx, name) in [("n2", "app-n2"), ("n3", "app-n3")] {
        eventually(&format!("{name} runs the image from a peer"), START, || {
            running_with_marker(ctx, name, &marker)
        });
    }
    for node in ["n2", "n3"] {
        let log = agent_log(node);
        assert!(
            log.contains("registry unreachable: using the tag as a peer has it"),
            "{node} did not resolve the tag through a peer:\n{}",
            log.lines().rev().take(40).collect::<Vec<_>>().join("\n")
        );
    }

    // An image no one has: the pod waits with the reason Kubernetes shows, and events say why.
    apply("n2", &pod("nope", "n2", &format!("{REGISTRY}/e2e/nope:1")));
    let waiting = eventually("nope shows a pull error", START, || {
        let p = pod_json("n2", "nope")?;
        let w = &p["status"]["containerStatuses"][0]["state"]["waiting"];
        match w["reason"].as_str() {
            Some("ErrImagePull") | Some("ImagePullBackOff") => Ok(w.clone()),
            _ => Err(format!("{}", p["status"])),
        }
    });
    assert!(
        waiting["message"].as_str().is_some_and(|m| !m.is_empty()),
        "the waiting state gives no reason: {waiting}"
    );
    eventually("a Failed event names the image", START, || {
        let ev = events_of("n2", "nope")?;
        ev.iter()
            .find(|(r, m)| r == "Failed" && m.contains("Failed to pull image"))
            .cloned()
            .ok_or_else(|| format!("{ev:?}"))
    });
    let p = pod_json("n2", "nope").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p["status"]["phase"], "Pending", "{}", p["status"]);
}

#[test]
fn image_pull_secrets_authenticate_to_a_private_registry() {
    let _tn = Testnet::up(2);
    let auth_env = [
        ("REGISTRY_PORT", "5001"),
        ("REGISTRY_AUTH", "e2e:s3cret-pw"),
    ];
    script_env("registry.sh", &["start"], &auth_env);
    let dir = tempfile::tempdir().expect("a temporary dir");
    let marker = format!("private-marker-{}", std::process::id());
    build_app_image(dir.path(), &marker);
    script_env(
        "registry.sh",
        &[
            "push",
            &dir.path().display().to_string(),
            "private/app:1",
            "app",
        ],
        &auth_env,
    );
    let image = "10.77.0.1:5001/private/app:1";

    // Without credentials: the registry's refusal is the pod's waiting message.
    apply("n1", &pod("no-creds", "n2", image));
    let waiting = eventually("no-creds shows the registry's refusal", START, || {
        let p = pod_json("n1", "no-creds")?;
        let w = &p["status"]["containerStatuses"][0]["state"]["waiting"];
        let msg = w["message"]
            .as_str()
            .unwrap_or_default()
            .to_ascii_lowercase();
        match w["reason"].as_str() {
            Some("ErrImagePull") | Some("ImagePullBackOff")
                if msg.contains("unauthorized") || msg.contains("authentication") =>
            {
                Ok(w.clone())
            }
            _ => Err(format!("{}", p["status"])),
        }
    });
    assert!(
        !waiting["message"]
            .as_str()
            .unwrap_or_default()
            .contains("s3cret"),
        "no credential in the status"
    );

    // With a docker-registry Secret made by kubectl itself, the pull works.
    kubectl_ok(
        "n1",
        &[
            "create",
            "secret",
            "docker-registry",
            "regcred",
            "--docker-server=10.77.0.1:5001",
            "--docker-username=e2e",
            "--docker-password=s3cret-pw",
        ],
    );
    let with_secret = pod("with-creds", "n2", image).replace(
        "  containers:\n",
        "  imagePullSecrets:\n  - name: regcred\n  containers:\n",
    );
    apply("n1", &with_secret);
    eventually("with-creds runs the private image", START, || {
        running_with_marker("n1", "with-creds", &marker)
    });
    assert!(
        !agent_log("n2").contains("s3cret-pw"),
        "the password appears in n2's log"
    );
}
