//! Table-driven tests of the Pod Security checks: each case a pod, a level and the message
//! Kubernetes gives for it (the wording of `k8s.io/pod-security-admission`'s checks).

use serde_json::{json, Value};

use super::*;

fn lv(level: Level) -> LevelVersion {
    LevelVersion {
        level,
        version: Version::Latest,
    }
}

/// A container that passes `restricted`.
fn good(name: &str) -> Value {
    json!({"name": name, "image": "busybox", "securityContext": {
        "allowPrivilegeEscalation": false, "runAsNonRoot": true,
        "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}})
}

/// `good(name)` with `patch` merged into its securityContext (null removes a field).
fn with(name: &str, patch: Value) -> Value {
    let mut c = good(name);
    for (k, v) in patch.as_object().unwrap() {
        if v.is_null() {
            c["securityContext"].as_object_mut().unwrap().remove(k);
        } else {
            c["securityContext"][k] = v.clone();
        }
    }
    c
}

fn message(level: Level, metadata: Value, spec: Value) -> String {
    describe(&evaluate(lv(level), &metadata, &spec))
}

#[test]
fn levels_and_messages_table() {
    use Level::*;
    let plain = json!({"name": "c", "image": "busybox"});
    let cases: Vec<(Level, Value, &str)> = vec![
        // A pod that sets nothing: baseline allows it, restricted names the four fields
        // (Kubernetes' own example message).
        (Baseline, json!({"containers": [plain.clone()]}), ""),
        (
            Restricted,
            json!({"containers": [plain.clone()]}),
            r#"allowPrivilegeEscalation != false (container "c" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container "c" must set securityContext.capabilities.drop=["ALL"]), runAsNonRoot != true (pod or container "c" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container "c" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")"#,
        ),
        (Restricted, json!({"containers": [good("c")]}), ""),
        (
            Privileged,
            json!({"hostNetwork": true, "containers": [with("c", json!({"privileged": true}))]}),
            "",
        ),
        // Pod-level settings satisfy restricted for every container.
        (
            Restricted,
            json!({"securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "Localhost"}},
                   "containers": [with("c", json!({"runAsNonRoot": null, "seccompProfile": null}))]}),
            "",
        ),
        // Baseline.
        (
            Baseline,
            json!({"hostNetwork": true, "hostPID": true, "hostIPC": false, "containers": [plain.clone()]}),
            "host namespaces (hostNetwork, hostPID)",
        ),
        (
            Baseline,
            json!({"containers": [
                with("a", json!({"privileged": true})), with("b", json!({"privileged": true}))]}),
            r#"privileged (containers "a", "b" must not set securityContext.privileged=true)"#,
        ),
        (
            Baseline,
            json!({"initContainers": [with("i", json!({"capabilities": {"add": ["NET_ADMIN", "CHOWN"]}}))],
                   "containers": [with("c", json!({"capabilities": {"add": ["SYS_ADMIN", "NET_ADMIN"]}}))]}),
            r#"non-default capabilities (containers "i", "c" must not include "NET_ADMIN", "SYS_ADMIN" in securityContext.capabilities.add)"#,
        ),
        (
            Baseline,
            json!({"volumes": [{"name": "h", "hostPath": {"path": "/"}}, {"name": "e", "emptyDir": {}}],
                   "containers": [plain.clone()]}),
            r#"hostPath volumes (volume "h")"#,
        ),
        (
            Baseline,
            json!({"containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 8080},
                                                         {"containerPort": 81, "hostPort": 443}]}]}),
            r#"hostPort (container "c" uses hostPorts 443, 8080)"#,
        ),
        (
            Baseline,
            json!({"containers": [{"name": "c", "livenessProbe": {"httpGet": {"host": "10.0.0.1", "port": 80}}}]}),
            r#"probe or lifecycle host (container "c" uses probe or lifecycle host "10.0.0.1")"#,
        ),
        (
            Baseline,
            json!({"containers": [with("c", json!({"procMount": "Unmasked"}))]}),
            r#"procMount (container "c" must not set securityContext.procMount to "Unmasked")"#,
        ),
        (
            Baseline,
            json!({"securityContext": {"seLinuxOptions": {"type": "spc_t", "user": "u"}}, "containers": [plain.clone()]}),
            r#"seLinuxOptions (pod set forbidden securityContext.seLinuxOptions: type "spc_t"; user may not be set)"#,
        ),
        (
            Baseline,
            json!({"securityContext": {"seccompProfile": {"type": "Unconfined"}},
                   "containers": [with("c", json!({"seccompProfile": {"type": "Unconfined"}}))]}),
            r#"seccompProfile (pod and container "c" must not set securityContext.seccompProfile.type to "Unconfined")"#,
        ),
        (
            Baseline,
            json!({"securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"},
                                                   {"name": "net.ipv4.tcp_syncookies", "value": "1"},
                                                   {"name": "net.core.somaxconn", "value": "1"}]},
                   "containers": [plain.clone()]}),
            "forbidden sysctls (kernel.msgmax, net.core.somaxconn)",
        ),
        (
            Baseline,
            json!({"containers": [with("c", json!({"windowsOptions": {"hostProcess": true}}))]}),
            r#"hostProcess (container "c" must not set securityContext.windowsOptions.hostProcess=true)"#,
        ),
        // Restricted only.
        (
            Restricted,
            json!({"containers": [with("c", json!({"allowPrivilegeEscalation": true})), good("d")]}),
            r#"allowPrivilegeEscalation != false (container "c" must set securityContext.allowPrivilegeEscalation=false)"#,
        ),
        (
            Restricted,
            json!({"containers": [with("c", json!({"capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE", "CHOWN"]}})),
                                  with("d", json!({"capabilities": {"drop": ["all"]}}))]}),
            r#"unrestricted capabilities (container "d" must set securityContext.capabilities.drop=["ALL"]; container "c" must not include "CHOWN" in securityContext.capabilities.add)"#,
        ),
        (
            Restricted,
            json!({"volumes": [{"name": "z", "hostPath": {"path": "/"}}, {"name": "a", "nfs": {"server": "x"}},
                               {"name": "s", "secret": {"secretName": "x"}}],
                   "containers": [good("c")]}),
            r#"restricted volume types (volumes ["a" "z"] have restricted types)"#,
        ),
        (
            Restricted,
            json!({"securityContext": {"runAsNonRoot": false}, "containers": [good("c"), with("d", json!({"runAsNonRoot": false}))]}),
            r#"runAsNonRoot != true (pod and container "d" must not set securityContext.runAsNonRoot=false)"#,
        ),
        (
            Restricted,
            json!({"securityContext": {"runAsUser": 0}, "containers": [with("c", json!({"runAsUser": 0})), with("d", json!({"runAsUser": 1000}))]}),
            r#"runAsUser=0 (pod and container "c" must not set runAsUser=0)"#,
        ),
        (
            Restricted,
            json!({"containers": [with("c", json!({"seccompProfile": {"type": "Unconfined"}}))]}),
            r#"seccompProfile (container "c" must not set securityContext.seccompProfile.type to "Unconfined")"#,
        ),
        // Restricted includes the baseline checks it does not replace, first.
        (
            Restricted,
            json!({"hostPID": true, "containers": [with("c", json!({"privileged": true, "allowPrivilegeEscalation": null}))]}),
            r#"host namespaces (hostPID), privileged (container "c" must not set securityContext.privileged=true), allowPrivilegeEscalation != false (container "c" must set securityContext.allowPrivilegeEscalation=false)"#,
        ),
        // Ephemeral containers are checked too.
        (
            Baseline,
            json!({"containers": [plain.clone()], "ephemeralContainers": [with("debug", json!({"privileged": true}))]}),
            r#"privileged (container "debug" must not set securityContext.privileged=true)"#,
        ),
    ];
    for (i, (level, spec, want)) in cases.into_iter().enumerate() {
        assert_eq!(
            message(level, json!({}), spec.clone()),
            want,
            "case {i}: {spec}"
        );
    }
}

#[test]
fn annotations_are_checked_too() {
    let meta = json!({"annotations": {
        "container.apparmor.security.beta.kubernetes.io/c": "unconfined",
        "container.apparmor.security.beta.kubernetes.io/d": "runtime/default"}});
    let spec = json!({"containers": [{"name": "c"}, {"name": "d"}]});
    assert_eq!(
        message(Level::Baseline, meta, spec.clone()),
        r#"forbidden AppArmor profile (container.apparmor.security.beta.kubernetes.io/c="unconfined")"#
    );
    // Before 1.19 baseline reads the seccomp annotations, not the fields.
    let meta = json!({"annotations": {"seccomp.security.alpha.kubernetes.io/pod": "unconfined"}});
    let old = LevelVersion {
        level: Level::Baseline,
        version: Version::Minor(18),
    };
    assert_eq!(
        describe(&evaluate(old, &meta, &spec)),
        r#"seccompProfile (forbidden annotation seccomp.security.alpha.kubernetes.io/pod="unconfined")"#
    );
}

#[test]
fn versions_select_the_checks_of_their_time() {
    let spec = json!({"containers": [{"name": "c", "securityContext": {"runAsNonRoot": true}}]});
    let at = |version| LevelVersion {
        level: Level::Restricted,
        version,
    };
    // allowPrivilegeEscalation since 1.8, seccomp 1.19, capabilities 1.22.
    let reasons = |v| -> Vec<String> {
        evaluate(at(v), &json!({}), &spec)
            .into_iter()
            .map(|v| v.reason)
            .collect()
    };
    assert_eq!(reasons(Version::Minor(7)), Vec::<String>::new());
    assert_eq!(
        reasons(Version::Minor(19)),
        ["allowPrivilegeEscalation != false", "seccompProfile"]
    );
    assert_eq!(
        reasons(Version::Minor(22)),
        [
            "allowPrivilegeEscalation != false",
            "unrestricted capabilities",
            "seccompProfile"
        ]
    );
    // A sysctl allowed since 1.29.
    let sysctl = json!({"securityContext": {"sysctls": [{"name": "net.ipv4.tcp_fin_timeout"}]}});
    let base = |version| LevelVersion {
        level: Level::Baseline,
        version,
    };
    assert_eq!(
        evaluate(base(Version::Minor(28)), &json!({}), &sysctl).len(),
        1
    );
    assert!(evaluate(base(Version::Minor(29)), &json!({}), &sysctl).is_empty());
    assert!(evaluate(base(Version::Latest), &json!({}), &sysctl).is_empty());
}

#[test]
fn labels_parse_into_a_policy_or_name_what_is_wrong() {
    assert_eq!(Policy::from_labels(&Value::Null), Ok(Policy::default()));
    let p = Policy::from_labels(&json!({
        "pod-security.kubernetes.io/enforce": "baseline",
        "pod-security.kubernetes.io/warn": "restricted",
        "pod-security.kubernetes.io/warn-version": "v1.29",
        "other": "x"}))
    .unwrap();
    assert_eq!(p.enforce.to_string(), "baseline:latest");
    assert_eq!(p.warn.to_string(), "restricted:v1.29");
    assert_eq!(p.audit.to_string(), "privileged:latest");
    let errors = Policy::from_labels(&json!({
        "pod-security.kubernetes.io/enforce": "strict",
        "pod-security.kubernetes.io/audit-version": "1.29",
        "pod-security.kubernetes.io/warn-version": "v1.029",
        "pod-security.kubernetes.io/block": "baseline"}))
    .unwrap_err();
    let shown: Vec<String> = errors
        .iter()
        .map(|e| format!("{}={}: {}", e.key, e.value, e.message))
        .collect();
    assert_eq!(
        shown,
        [
            r#"pod-security.kubernetes.io/audit-version=1.29: must be "latest" or "v1.x""#,
            "pod-security.kubernetes.io/block=baseline: unknown Pod Security label; supported: pod-security.kubernetes.io/enforce, pod-security.kubernetes.io/enforce-version, pod-security.kubernetes.io/warn, pod-security.kubernetes.io/warn-version, pod-security.kubernetes.io/audit, pod-security.kubernetes.io/audit-version",
            "pod-security.kubernetes.io/enforce=strict: must be one of privileged, baseline, restricted",
            r#"pod-security.kubernetes.io/warn-version=v1.029: must be "latest" or "v1.x""#,
        ]
    );
}

#[test]
fn messages_read_as_the_api_servers() {
    let v = evaluate(
        lv(Level::Baseline),
        &json!({}),
        &json!({"containers": [{"name": "c", "securityContext": {"privileged": true}}]}),
    );
    assert_eq!(
        forbidden_message(lv(Level::Baseline), &v),
        r#"violates PodSecurity "baseline:latest": privileged (container "c" must not set securityContext.privileged=true)"#
    );
    assert_eq!(
        warning_message(lv(Level::Baseline), &v),
        r#"would violate PodSecurity "baseline:latest": privileged (container "c" must not set securityContext.privileged=true)"#
    );
}

#[test]
fn hostile_shapes_never_panic() {
    for spec in [
        json!(null),
        json!([]),
        json!({"containers": "x", "volumes": 3, "securityContext": []}),
        json!({"containers": [null, 1, {"securityContext": "x", "ports": [null, {"hostPort": "80"}]}]}),
    ] {
        for level in [Level::Baseline, Level::Restricted] {
            let _ = evaluate(lv(level), &json!(7), &spec);
        }
    }
}
