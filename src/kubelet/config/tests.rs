//! Unit tests of `kubelet::config`: env resolution, envFrom names, missing references, volume items/modes, the hostPath policy.

use super::*;
use serde_json::json;

fn pod(spec: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "prod", "uid": "u-1",
            "labels": {"app": "web"}, "annotations": {"team": "a"}},
        "spec": spec,
    }))
    .unwrap()
}

fn objects() -> Objects {
    let mut o = Objects::default();
    o.config_maps.insert(
        "cfg".into(),
        config_map_values(
            &json!({"data": {"mode": "fast", "bad-name": "x", "1st": "y"},
            "binaryData": {"bin": "AAE="}}),
        ),
    );
    o.secrets.insert(
        "db".into(),
        secret_values(&json!({"data": {"password": "aHVudGVyMg=="}})),
    );
    o
}

fn facts() -> NodeFacts {
    NodeFacts {
        node_name: "n1".into(),
        host_ip: "10.0.0.1".into(),
        pod_ip: Some("10.244.1.5".into()),
        cpu_milli: 2000,
        memory_bytes: 4 << 30,
        host_path_prefixes: vec![PathBuf::from("/srv/data")],
        local_path_root: PathBuf::from("/var/lib/shoal/local-path"),
    }
}

fn resolve_one(spec: Value) -> Result<ContainerConfig, String> {
    let p = pod(spec);
    let c = p.spec.as_ref().unwrap().containers[0].clone();
    resolve(&p, &c, &objects(), &facts())
}

fn env_of(cfg: &ContainerConfig) -> Vec<(String, String, bool)> {
    cfg.env
        .iter()
        .map(|e| (e.name.clone(), e.value.clone(), e.expand))
        .collect()
}

#[test]
fn env_from_objects_fields_and_resources() {
    let cfg = resolve_one(json!({"nodeName": "n1", "serviceAccountName": "builder",
        "containers": [{"name": "c",
        "resources": {"limits": {"memory": "64Mi"}, "requests": {"cpu": "250m"}},
        "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
        "env": [
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}},
            {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
            {"name": "GONE", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k", "optional": true}}},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "TEAM", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['team']"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
            {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
            {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
            {"name": "REQ", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1m"}}},
            {"name": "LIT", "value": "$(MODE)-x"}
        ]}]}))
    .unwrap();
    let s = |a: &str, b: &str, e: bool| (a.to_string(), b.to_string(), e);
    assert_eq!(
        env_of(&cfg),
        vec![
            s("CFG_1st", "y", false),
            s("CFG_bad-name", "x", false),
            s("CFG_bin", "\u{0}\u{1}", false),
            s("CFG_mode", "fast", false),
            s("MODE", "fast", false),
            s("PW", "hunter2", false),
            s("POD", "web", false),
            s("NS", "prod", false),
            s("UID", "u-1", false),
            s("APP", "web", false),
            s("TEAM", "a", false),
            s("NODE", "n1", false),
            s("SA", "builder", false),
            s("IP", "10.244.1.5", false),
            s("HOST", "10.0.0.1", false),
            s("MEM", "64", false),
            s("CPU", "2", false),
            s("REQ", "250", false),
            s("LIT", "$(MODE)-x", true),
        ]
    );
    assert!(cfg.sensitive, "a Secret value makes the config sensitive");
    assert!(cfg.skipped.is_empty());
}

#[test]
fn env_from_skips_invalid_names_with_kubernetes_warning() {
    let cfg = resolve_one(json!({"containers": [{"name": "c",
        "envFrom": [{"configMapRef": {"name": "cfg"}}]}]}))
    .unwrap();
    let names: Vec<_> = cfg.env.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["bad-name", "bin", "mode"]);
    assert_eq!(
        cfg.skipped,
        ["Keys [1st] from the EnvFrom configmap prod/cfg were skipped since they are considered invalid environment variable names."]
    );
    assert!(!cfg.sensitive);
    assert!(is_env_var_name("_x.y-z"));
    assert!(!is_env_var_name("1x") && !is_env_var_name("") && !is_env_var_name("a b"));
}

#[test]
fn missing_references_give_kubernetes_messages_or_are_optional() {
    let err =
        |env: Value| resolve_one(json!({"containers": [{"name": "c", "env": [env]}]})).unwrap_err();
    assert_eq!(
        err(json!({"name": "A", "valueFrom": {"configMapKeyRef": {"name": "x", "key": "k"}}})),
        "configmap \"x\" not found"
    );
    assert_eq!(
        err(json!({"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "k"}}})),
        "couldn't find key k in ConfigMap prod/cfg"
    );
    assert_eq!(
        err(json!({"name": "A", "valueFrom": {"secretKeyRef": {"name": "x", "key": "k"}}})),
        "secret \"x\" not found"
    );
    assert_eq!(
        err(json!({"name": "A", "valueFrom": {"secretKeyRef": {"name": "db", "key": "user"}}})),
        "couldn't find key user in Secret prod/db"
    );
    assert!(
        err(json!({"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "spec.nope"}}}))
            .contains("unsupported fieldPath \"spec.nope\"")
    );
    // The whole-map forms are for volumes only, as in Kubernetes.
    assert!(
        err(json!({"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels"}}}))
            .contains("unsupported fieldPath")
    );
    let e = resolve_one(json!({"containers": [{"name": "c",
        "envFrom": [{"secretRef": {"name": "x"}}]}]}))
    .unwrap_err();
    assert_eq!(e, "secret \"x\" not found");
    let ok = resolve_one(json!({"containers": [{"name": "c",
        "envFrom": [{"secretRef": {"name": "x", "optional": true}}],
        "env": [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "k", "optional": true}}}]}]}))
    .unwrap();
    assert!(ok.env.is_empty());
    // No message carries a value.
    let e = err(json!({"name": "A", "valueFrom": {"secretKeyRef": {"name": "db", "key": "nope"}}}));
    assert!(!e.contains("hunter2"));
}

#[test]
fn volumes_items_modes_and_optional() {
    let cfg = resolve_one(json!({
        "volumes": [
            {"name": "all", "configMap": {"name": "cfg", "defaultMode": 0o600}},
            {"name": "some", "configMap": {"name": "cfg", "items": [
                {"key": "mode", "path": "conf/mode.txt", "mode": 0o400}]}},
            {"name": "sec", "secret": {"secretName": "db"}},
            {"name": "opt", "secret": {"secretName": "nope", "optional": true}},
            {"name": "mem", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
            {"name": "host", "hostPath": {"path": "/srv/data/x", "type": "DirectoryOrCreate"}},
            {"name": "unused", "configMap": {"name": "missing"}}
        ],
        "containers": [{"name": "c", "volumeMounts": [
            {"name": "all", "mountPath": "/a"}, {"name": "some", "mountPath": "/b"},
            {"name": "sec", "mountPath": "/s"}, {"name": "opt", "mountPath": "/o"},
            {"name": "mem", "mountPath": "/m"}, {"name": "host", "mountPath": "/h"}]}]}))
    .unwrap();
    let files = |name: &str| match &cfg.volumes[name] {
        VolumeSource::Files { files, .. } => files
            .iter()
            .map(|f| (f.path.clone(), f.mode))
            .collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        files("all"),
        [
            ("1st".into(), 0o600),
            ("bad-name".into(), 0o600),
            ("bin".into(), 0o600),
            ("mode".into(), 0o600)
        ]
    );
    assert_eq!(files("some"), [("conf/mode.txt".to_string(), 0o400)]);
    assert_eq!(files("sec"), [("password".to_string(), DEFAULT_MODE)]);
    assert!(files("opt").is_empty());
    assert!(matches!(
        cfg.volumes["sec"],
        VolumeSource::Files { secret: true, .. }
    ));
    assert!(cfg.sensitive);
    assert_eq!(
        cfg.volumes["mem"],
        VolumeSource::EmptyDir {
            memory: true,
            size_limit: Some(16 << 20)
        }
    );
    assert_eq!(
        cfg.volumes["host"],
        VolumeSource::HostPath {
            path: "/srv/data/x".into(),
            kind: HostPathType::DirectoryOrCreate
        }
    );
    assert!(
        !cfg.volumes.contains_key("unused"),
        "only mounted volumes are resolved"
    );
}

#[test]
fn volume_errors() {
    let with = |volume: Value| {
        resolve_one(json!({"volumes": [volume], "containers": [{"name": "c",
            "volumeMounts": [{"name": "v", "mountPath": "/v"}]}]}))
        .unwrap_err()
    };
    assert_eq!(
        with(json!({"name": "v", "configMap": {"name": "x"}})),
        "configmap \"x\" not found"
    );
    assert_eq!(
        with(
            json!({"name": "v", "configMap": {"name": "cfg", "items": [{"key": "k", "path": "p"}]}})
        ),
        "configmap references non-existent config key: k"
    );
    assert_eq!(
        with(
            json!({"name": "v", "secret": {"secretName": "db", "items": [{"key": "k", "path": "p"}]}})
        ),
        "secret references non-existent secret key: k"
    );
    assert!(with(json!({"name": "v", "configMap": {"name": "cfg", "items": [{"key": "mode", "path": "../x"}]}}))
        .contains("invalid volume item path"));
    let host = with(json!({"name": "v", "hostPath": {"path": "/etc"}}));
    assert!(
        host.contains("\"/etc\" is not allowed") && host.contains("--allow-host-path"),
        "{host}"
    );
    assert!(
        with(json!({"name": "v", "hostPath": {"path": "/srv/data/../../etc"}})).contains("'..'")
    );
    assert!(with(json!({"name": "v", "hostPath": {"path": "/srv/datax"}})).contains("not allowed"));
    assert!(with(json!({"name": "v", "nfs": {"server": "s", "path": "/"}})).contains("supported"));
}

#[test]
fn item_paths_and_host_path_policy() {
    for ok in [
        "a",
        "a/b",
        "a.b",
        "..a-is-bad-but-.a-is-fine".trim_start_matches(".."),
    ] {
        assert!(check_item_path(ok).is_ok(), "{ok}");
    }
    for bad in ["", "/abs", "../x", "a/../b", "..x"] {
        assert!(check_item_path(bad).is_err(), "{bad}");
    }
    let prefixes = [PathBuf::from("/srv")];
    assert!(check_host_path("/srv", &prefixes).is_ok());
    assert!(check_host_path("/srv/a/b", &prefixes).is_ok());
    assert!(check_host_path("/srvx", &prefixes).is_err());
    assert!(check_host_path("relative", &prefixes).is_err());
    assert!(check_host_path("/srv/a", &[])
        .unwrap_err()
        .contains("allowed prefixes: none"));
}

#[test]
fn claims_mount_only_their_volume_on_this_node() {
    use crate::model::storage::{Reclaim, Volume};
    let spec = json!({"containers": [{"name": "c", "image": "i",
        "volumeMounts": [{"name": "d", "mountPath": "/data"}]}],
        "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data", "readOnly": true}}]});
    let volume = |node: &str| Volume {
        name: "pvc-u1".into(),
        node: node.into(),
        claim_namespace: "default".into(),
        claim_name: "data".into(),
        claim_uid: "u1".into(),
        capacity: 1,
        reclaim: Reclaim::Delete,
    };
    let with = |v: Option<Volume>| {
        let mut o = objects();
        o.claims.insert(
            "data".into(),
            ClaimVolume {
                uid: "u1".into(),
                volume: v,
            },
        );
        let p = pod(spec.clone());
        let c = p.spec.as_ref().unwrap().containers[0].clone();
        resolve(&p, &c, &o, &facts())
    };
    let cfg = with(Some(volume("n1"))).unwrap();
    assert_eq!(
        cfg.volumes["d"],
        VolumeSource::Claim {
            path: PathBuf::from("/var/lib/shoal/local-path/pvc-u1_default_data"),
            read_only: true,
        }
    );
    let err = with(Some(volume("n2"))).unwrap_err();
    assert!(err.contains("on node n2, not this node"), "{err}");
    let err = with(None).unwrap_err();
    assert!(err.contains("is not bound"), "{err}");
    let err = resolve_one(spec.clone()).unwrap_err();
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn downward_api_volume_items_and_projection() {
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "prod", "uid": "u-1",
            "labels": {"tier": "front", "app": "web"},
            "annotations": {"note": "say \"hi\"\n\tbye", "uni": "é✓"}},
        "spec": {
            "volumes": [
                {"name": "info", "downwardAPI": {"defaultMode": 0o640, "items": [
                    {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
                    {"path": "ns", "fieldRef": {"fieldPath": "metadata.namespace"}},
                    {"path": "uid", "fieldRef": {"fieldPath": "metadata.uid"}},
                    {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                    {"path": "meta/annotations", "fieldRef": {"fieldPath": "metadata.annotations"}, "mode": 0o400},
                    {"path": "tier", "fieldRef": {"fieldPath": "metadata.labels['tier']"}},
                    {"path": "mem", "resourceFieldRef": {"containerName": "c", "resource": "limits.memory", "divisor": "1Mi"}},
                    {"path": "cpu", "resourceFieldRef": {"containerName": "c", "resource": "requests.cpu", "divisor": "1m"}}
                ]}},
                {"name": "proj", "projected": {"defaultMode": 0o600, "sources": [
                    {"downwardAPI": {"items": [{"path": "pod", "fieldRef": {"fieldPath": "metadata.name"}}]}},
                    {"configMap": {"name": "cfg", "items": [{"key": "mode", "path": "mode"}]}}
                ]}}
            ],
            "containers": [{"name": "c",
                "resources": {"limits": {"memory": "64Mi"}, "requests": {"cpu": "250m"}},
                "volumeMounts": [{"name": "info", "mountPath": "/etc/info"},
                                 {"name": "proj", "mountPath": "/etc/proj"}]}]
        }
    }))
    .unwrap();
    let c = p.spec.as_ref().unwrap().containers[0].clone();
    let cfg = resolve(&p, &c, &objects(), &facts()).unwrap();
    let files = |name: &str| match &cfg.volumes[name] {
        VolumeSource::Files { files, secret } => {
            assert!(!secret, "downward API files are not secret");
            files
                .iter()
                .map(|f| {
                    (
                        f.path.clone(),
                        String::from_utf8(f.bytes.clone()).unwrap(),
                        f.mode,
                    )
                })
                .collect::<Vec<_>>()
        }
        other => panic!("{other:?}"),
    };
    let s = |p: &str, v: &str, m: u32| (p.to_string(), v.to_string(), m);
    assert_eq!(
        files("info"),
        [
            s("name", "web", 0o640),
            s("ns", "prod", 0o640),
            s("uid", "u-1", 0o640),
            // Sorted by key, Go-quoted values, no trailing newline (Kubernetes' FormatMap).
            s("labels", "app=\"web\"\ntier=\"front\"", 0o640),
            s(
                "meta/annotations",
                "note=\"say \\\"hi\\\"\\n\\tbye\"\nuni=\"é✓\"",
                0o400
            ),
            s("tier", "front", 0o640),
            s("mem", "64", 0o640),
            s("cpu", "250", 0o640),
        ]
    );
    assert_eq!(
        files("proj"),
        [s("pod", "web", 0o600), s("mode", "fast", 0o600)]
    );
}

#[test]
fn downward_api_volume_errors() {
    let with = |items: Value| {
        resolve_one(
            json!({"volumes": [{"name": "v", "downwardAPI": {"items": items}}],
            "containers": [{"name": "c", "volumeMounts": [{"name": "v", "mountPath": "/v"}]}]}),
        )
        .unwrap_err()
    };
    let e = with(json!([{"path": "x", "fieldRef": {"fieldPath": "spec.nodeName"}}]));
    assert!(e.contains("unsupported fieldPath \"spec.nodeName\""), "{e}");
    let e = with(json!([{"path": "../x", "fieldRef": {"fieldPath": "metadata.name"}}]));
    assert!(e.contains("invalid volume item path"), "{e}");
    let e = with(
        json!([{"path": "x", "resourceFieldRef": {"containerName": "nope", "resource": "limits.cpu"}}]),
    );
    assert!(e.contains("does not have"), "{e}");
    let e = with(json!([{"path": "x"}]));
    assert!(
        e.contains("exactly one of fieldRef and resourceFieldRef"),
        "{e}"
    );
}

#[test]
fn go_quote_matches_go() {
    assert_eq!(go_quote("plain"), "\"plain\"");
    assert_eq!(go_quote("a\"b\\c"), "\"a\\\"b\\\\c\"");
    assert_eq!(go_quote("\u{1}\u{7f}\r"), "\"\\x01\\x7f\\r\"");
    assert_eq!(go_quote("\u{85}"), "\"\\u0085\"");
    assert_eq!(format_map(None), "");
}
