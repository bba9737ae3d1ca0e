//! A container's security settings from its pod's and its own `securityContext` (the
//! container's fields override the pod's), and the path rules that refuse specs trying to
//! escape the container (CVE-2024-21626's `workingDir: /proc/self/fd/N`, mounts over `/proc`).
//! Pure: used by the bundle builder and, on the JSON form, by API admission. See
//! docs/security.md.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Container, Pod, PodSecurityContext, SecurityContext};
use oci_spec::runtime::Capability;
use serde_json::Value;

/// Docker's default capability set (what `docker run` grants without `--cap-add`).
pub const DEFAULT_CAPABILITIES: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Every capability the kernel knows (what `privileged` and `add: [ALL]` grant).
pub const ALL_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// `CAP_`-prefixed upper-case name of a capability as Kubernetes spells it (`NET_ADMIN`,
/// `cap_net_admin`, `CAP_NET_ADMIN`); `None` if the kernel has no such capability. `ALL` is
/// handled by the callers.
pub fn capability_name(name: &str) -> Option<&'static str> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    ALL_CAPABILITIES.iter().copied().find(|c| *c == full)
}

/// Keeps the capabilities inside `bound` (a `CapBnd` mask, bit n = capability n, the order of
/// [`ALL_CAPABILITIES`]): a container cannot get what the agent itself lacks (runc would fail
/// with "unable to apply caps"). Returns the names removed.
pub fn within_bound(caps: &mut BTreeSet<String>, bound: u64) -> Vec<String> {
    let allowed = |c: &String| {
        ALL_CAPABILITIES
            .iter()
            .position(|a| a == c)
            .is_some_and(|n| bound & (1u64 << n) != 0)
    };
    let removed: Vec<String> = caps.iter().filter(|c| !allowed(c)).cloned().collect();
    caps.retain(allowed);
    removed
}

/// The `CapBnd` mask of a `/proc/<pid>/status` text.
pub fn parse_cap_bound(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// The oci-spec value of a known capability name.
pub fn capability(name: &str) -> Option<Capability> {
    serde_json::from_value(Value::String(name.to_string())).ok()
}

/// `seccompProfile.type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seccomp {
    /// shoal's default profile (`seccomp::default_profile`); also when unset.
    RuntimeDefault,
    Unconfined,
}

/// What one container runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub privileged: bool,
    /// `CAP_…` names of the bounding, effective and permitted sets.
    pub capabilities: BTreeSet<String>,
    pub no_new_privileges: bool,
    pub readonly_root: bool,
    /// `None` when privileged (no filter at all, as Kubernetes does).
    pub seccomp: Option<Seccomp>,
    pub run_as_non_root: bool,
    /// `supplementalGroups` then `fsGroup`, without repeats.
    pub additional_gids: Vec<u32>,
    /// Whether `/proc` paths stay masked (`procMount: Default`; off when privileged).
    pub masked_paths: bool,
}

/// Why a securityContext cannot be run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The field, relative to the container (`securityContext.capabilities.add[0]`).
    pub field: String,
    pub value: Value,
    pub detail: String,
}

fn refusal(field: impl Into<String>, value: Value, detail: impl Into<String>) -> Refusal {
    Refusal {
        field: field.into(),
        value,
        detail: detail.into(),
    }
}

const ID_RANGE: &str = "must be between 0 and 2147483647, inclusive";

fn id(field: &str, v: i64) -> Result<u32, Refusal> {
    u32::try_from(v)
        .ok()
        .filter(|v| *v <= i32::MAX as u32)
        .ok_or_else(|| refusal(field, Value::from(v), ID_RANGE))
}

/// Capability set: the default set, `drop` removes (`ALL`: everything), then `add` adds
/// (`ALL`: everything), as containerd applies them.
fn capabilities(sc: Option<&SecurityContext>) -> Result<BTreeSet<String>, Refusal> {
    let mut caps: BTreeSet<String> = DEFAULT_CAPABILITIES
        .iter()
        .map(|c| format!("CAP_{c}"))
        .collect();
    let Some(c) = sc.and_then(|s| s.capabilities.as_ref()) else {
        return Ok(caps);
    };
    let all = |n: &str| n.trim().eq_ignore_ascii_case("ALL");
    for (i, name) in c.drop.iter().flatten().enumerate() {
        if all(name) {
            caps.clear();
        } else {
            let cap = capability_name(name).ok_or_else(|| {
                refusal(
                    format!("securityContext.capabilities.drop[{i}]"),
                    Value::from(name.as_str()),
                    "unknown capability",
                )
            })?;
            caps.remove(cap);
        }
    }
    for (i, name) in c.add.iter().flatten().enumerate() {
        if all(name) {
            caps.extend(ALL_CAPABILITIES.iter().map(|c| c.to_string()));
        } else {
            let cap = capability_name(name).ok_or_else(|| {
                refusal(
                    format!("securityContext.capabilities.add[{i}]"),
                    Value::from(name.as_str()),
                    "unknown capability",
                )
            })?;
            caps.insert(cap.to_string());
        }
    }
    Ok(caps)
}

fn seccomp_type(
    profile: Option<&k8s_openapi::api::core::v1::SeccompProfile>,
    field: &str,
) -> Result<Option<Seccomp>, Refusal> {
    match profile.map(|p| p.type_.as_str()) {
        None => Ok(None),
        Some("RuntimeDefault") => Ok(Some(Seccomp::RuntimeDefault)),
        Some("Unconfined") => Ok(Some(Seccomp::Unconfined)),
        Some("Localhost") => Err(refusal(
            format!("{field}.type"),
            Value::from("Localhost"),
            "Localhost seccomp profiles are not supported by shoal (use RuntimeDefault or Unconfined)",
        )),
        Some(other) => Err(refusal(
            format!("{field}.type"),
            Value::from(other),
            "supported values: \"Localhost\", \"RuntimeDefault\", \"Unconfined\"",
        )),
    }
}

/// The settings of `container` in `pod`; a refusal names the field (relative to the container
/// for container fields, `spec.securityContext…` for the pod's).
pub fn resolve(pod: &Pod, container: &Container) -> Result<Settings, Refusal> {
    let psc: Option<&PodSecurityContext> =
        pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let csc = container.security_context.as_ref();
    let privileged = csc.and_then(|c| c.privileged).unwrap_or(false);
    let mut caps = capabilities(csc)?;
    if privileged {
        caps = ALL_CAPABILITIES.iter().map(|c| c.to_string()).collect();
    }
    let sys_admin_added = csc
        .and_then(|c| c.capabilities.as_ref())
        .and_then(|c| c.add.as_ref())
        .is_some_and(|add| {
            add.iter().any(|n| {
                capability_name(n) == Some("CAP_SYS_ADMIN") || n.eq_ignore_ascii_case("ALL")
            })
        });
    let ape = csc.and_then(|c| c.allow_privilege_escalation);
    if ape == Some(false) && privileged {
        return Err(refusal(
            "securityContext",
            Value::Null,
            "cannot set `allowPrivilegeEscalation` to false and `privileged` to true",
        ));
    }
    if ape == Some(false) && sys_admin_added {
        return Err(refusal(
            "securityContext",
            Value::Null,
            "cannot set `allowPrivilegeEscalation` to false and `capabilities.Add` CAP_SYS_ADMIN",
        ));
    }
    // shoal's default is no new privileges (issue 6); Kubernetes' own default is the opposite.
    let no_new_privileges = !(ape == Some(true) || privileged || sys_admin_added);
    match csc.and_then(|c| c.proc_mount.as_deref()) {
        None | Some("Default") => {}
        Some(other) => {
            return Err(refusal(
                "securityContext.procMount",
                Value::from(other),
                "only \"Default\" is supported",
            ))
        }
    }
    let container_seccomp = seccomp_type(
        csc.and_then(|c| c.seccomp_profile.as_ref()),
        "securityContext.seccompProfile",
    )?;
    let pod_seccomp = seccomp_type(
        psc.and_then(|p| p.seccomp_profile.as_ref()),
        "spec.securityContext.seccompProfile",
    )?;
    let seccomp = if privileged {
        None
    } else {
        Some(
            container_seccomp
                .or(pod_seccomp)
                .unwrap_or(Seccomp::RuntimeDefault),
        )
    };
    let run_as_non_root = csc
        .and_then(|c| c.run_as_non_root)
        .or(psc.and_then(|p| p.run_as_non_root))
        .unwrap_or(false);
    let mut additional_gids = Vec::new();
    for (i, g) in psc
        .and_then(|p| p.supplemental_groups.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
    {
        additional_gids.push(id(
            &format!("spec.securityContext.supplementalGroups[{i}]"),
            *g,
        )?);
    }
    if let Some(g) = psc.and_then(|p| p.fs_group) {
        additional_gids.push(id("spec.securityContext.fsGroup", g)?);
    }
    let mut seen = BTreeSet::new();
    additional_gids.retain(|g| seen.insert(*g));
    Ok(Settings {
        privileged,
        capabilities: caps,
        no_new_privileges,
        readonly_root: csc
            .and_then(|c| c.read_only_root_filesystem)
            .unwrap_or(false),
        seccomp,
        run_as_non_root,
        additional_gids,
        masked_paths: !privileged,
    })
}

/// Kubernetes' kubelet message for a root container under `runAsNonRoot`.
pub fn non_root_message(pod: &Pod, container: &str) -> String {
    let m = &pod.metadata;
    format!(
        "container has runAsNonRoot and image will run as root (pod: \"{}_{}({})\", container: {container})",
        m.name.as_deref().unwrap_or_default(),
        m.namespace.as_deref().unwrap_or_default(),
        m.uid.as_deref().unwrap_or_default()
    )
}

/// Why a node started with `--deny-privileged` does not run a privileged container.
pub fn privileged_denied_message(container: &str) -> String {
    format!(
        "container {container} is privileged and this node refuses privileged containers (shoal agent --deny-privileged)"
    )
}

/// Whether `container` asks to be privileged.
pub fn is_privileged(container: &Container) -> bool {
    container
        .security_context
        .as_ref()
        .and_then(|s| s.privileged)
        .unwrap_or(false)
}

/// What a path is used for (the rules differ a little).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathUse {
    WorkingDir,
    MountDestination,
}

/// Destinations the runtime manages itself: a volume there would hide or replace them.
const RUNTIME_MOUNTS: &[&str] = &["/", "/dev", "/dev/pts", "/dev/mqueue"];

/// Why `path` cannot be a container's `workingDir` or mount destination, if it cannot:
/// NUL bytes, relative paths, `..`, anything under `/proc` (the `/proc/self/fd/N` and
/// `/proc/<pid>/cwd` doors to host files), `/sys`, and for mounts the runtime's own mount points.
pub fn path_problem(path: &str, usage: PathUse) -> Option<&'static str> {
    if path.contains('\0') {
        return Some("must not contain a NUL byte");
    }
    if !path.starts_with('/') {
        return Some("must be an absolute path");
    }
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.contains(&"..") {
        return Some("must not contain '..'");
    }
    match parts.first().copied() {
        Some("proc") => {
            return Some("must not be under /proc (it would reach outside the container)")
        }
        Some("sys") if usage == PathUse::MountDestination => {
            return Some("must not be under /sys (the runtime mounts it)")
        }
        _ => {}
    }
    let normal = format!("/{}", parts.join("/"));
    if usage == PathUse::MountDestination && RUNTIME_MOUNTS.contains(&normal.as_str()) {
        return Some(
            "must not be a mount point the runtime manages (/, /dev, /dev/pts, /dev/mqueue)",
        );
    }
    None
}

/// Admission's checks of one container (JSON form, as submitted): paths that would escape and
/// securityContext fields shoal cannot run. Fields are relative to the container.
pub fn refusals(container: &Value) -> Vec<Refusal> {
    let mut out = Vec::new();
    if let Some(dir) = container["workingDir"].as_str().filter(|d| !d.is_empty()) {
        if let Some(p) = path_problem(dir, PathUse::WorkingDir) {
            out.push(refusal("workingDir", Value::from(dir), p));
        }
    }
    for (i, vm) in container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        if let Some(path) = vm["mountPath"].as_str().filter(|d| !d.is_empty()) {
            if let Some(p) = path_problem(path, PathUse::MountDestination) {
                out.push(refusal(
                    format!("volumeMounts[{i}].mountPath"),
                    Value::from(path),
                    p,
                ));
            }
        }
    }
    for list in ["command", "args"] {
        for (i, a) in container[list].as_array().into_iter().flatten().enumerate() {
            if a.as_str().is_some_and(|a| a.contains('\0')) {
                out.push(refusal(
                    format!("{list}[{i}]"),
                    a.clone(),
                    "must not contain a NUL byte",
                ));
            }
        }
    }
    // The typed checks (capability names, conflicts, seccomp types); the pod's own fields are
    // [`pod_refusals`]'.
    let pod = Pod::default();
    let c: Result<Container, _> = serde_json::from_value(serde_json::json!({
        "name": "c", "securityContext": container["securityContext"].clone()
    }));
    if let Ok(c) = c {
        if let Err(mut r) = resolve(&pod, &c) {
            if r.value.is_null() {
                r.value = container["securityContext"].clone();
            }
            out.push(r);
        }
    }
    for (field, v) in [
        (
            "securityContext.runAsUser",
            &container["securityContext"]["runAsUser"],
        ),
        (
            "securityContext.runAsGroup",
            &container["securityContext"]["runAsGroup"],
        ),
    ] {
        if let Some(n) = v.as_i64() {
            if let Err(r) = id(field, n) {
                out.push(r);
            }
        }
    }
    out
}

/// Admission's checks of the pod-level securityContext (fields from `spec.`).
pub fn pod_refusals(pod_spec: &Value) -> Vec<Refusal> {
    let mut out = Vec::new();
    let sc = &pod_spec["securityContext"];
    for field in ["runAsUser", "runAsGroup"] {
        if let Some(n) = sc[field].as_i64() {
            if let Err(mut r) = id(field, n) {
                r.field = format!("securityContext.{field}");
                out.push(r);
            }
        }
    }
    let pod: Result<Pod, _> = serde_json::from_value(serde_json::json!({
        "metadata": {}, "spec": {"containers": [], "securityContext": sc.clone()}
    }));
    if let Ok(pod) = pod {
        if let Err(mut r) = resolve(&pod, &Container::default()) {
            r.field = r.field.trim_start_matches("spec.").to_string();
            out.push(r);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(sc: Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
            "spec": {"containers": [], "securityContext": sc}
        }))
        .unwrap()
    }

    fn container(sc: Value) -> Container {
        serde_json::from_value(json!({"name": "c", "securityContext": sc})).unwrap()
    }

    fn settings(psc: Value, csc: Value) -> Result<Settings, Refusal> {
        resolve(&pod(psc), &container(csc))
    }

    #[test]
    fn defaults_are_docker_caps_nnp_and_the_default_profile() {
        let s = settings(json!({}), json!({})).unwrap();
        assert_eq!(s.capabilities.len(), DEFAULT_CAPABILITIES.len());
        assert!(s.capabilities.contains("CAP_CHOWN"));
        assert!(!s.capabilities.contains("CAP_SYS_ADMIN"));
        assert!(s.no_new_privileges);
        assert!(!s.privileged && s.masked_paths && !s.readonly_root);
        assert_eq!(s.seccomp, Some(Seccomp::RuntimeDefault));
    }

    #[test]
    fn capabilities_add_and_drop_with_or_without_prefix_and_all() {
        let s = settings(
            json!({}),
            json!({"capabilities": {"drop": ["chown", "CAP_KILL"], "add": ["NET_ADMIN"]}}),
        )
        .unwrap();
        assert!(!s.capabilities.contains("CAP_CHOWN"));
        assert!(!s.capabilities.contains("CAP_KILL"));
        assert!(s.capabilities.contains("CAP_NET_ADMIN"));
        let s = settings(
            json!({}),
            json!({"capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}),
        )
        .unwrap();
        assert_eq!(
            s.capabilities.iter().collect::<Vec<_>>(),
            ["CAP_NET_BIND_SERVICE"]
        );
        let s = settings(json!({}), json!({"capabilities": {"add": ["all"]}})).unwrap();
        assert_eq!(s.capabilities.len(), ALL_CAPABILITIES.len());
        assert!(!s.no_new_privileges, "ALL includes CAP_SYS_ADMIN");
        let r = settings(
            json!({}),
            json!({"capabilities": {"add": ["NET_ADMIN", "FLY"]}}),
        )
        .unwrap_err();
        assert_eq!(r.field, "securityContext.capabilities.add[1]");
        assert!(capability("CAP_NET_ADMIN").is_some());
    }

    #[test]
    fn capabilities_stay_within_the_nodes_bounding_set() {
        let mut caps: BTreeSet<String> = ALL_CAPABILITIES.iter().map(|c| c.to_string()).collect();
        let bound = parse_cap_bound("CapPrm:\t0\nCapBnd:\t000001fffeffffff\n").unwrap();
        assert_eq!(within_bound(&mut caps, bound), ["CAP_SYS_RESOURCE"]);
        assert_eq!(caps.len(), ALL_CAPABILITIES.len() - 1);
        assert!(caps.contains("CAP_CHECKPOINT_RESTORE") && caps.contains("CAP_CHOWN"));
        assert_eq!(parse_cap_bound("nothing"), None);
    }

    #[test]
    fn privileged_escalation_and_their_conflicts() {
        let s = settings(json!({}), json!({"privileged": true})).unwrap();
        assert_eq!(s.capabilities.len(), ALL_CAPABILITIES.len());
        assert!(!s.no_new_privileges && !s.masked_paths);
        assert_eq!(s.seccomp, None);
        let s = settings(json!({}), json!({"allowPrivilegeEscalation": true})).unwrap();
        assert!(!s.no_new_privileges);
        let s = settings(json!({}), json!({"allowPrivilegeEscalation": false})).unwrap();
        assert!(s.no_new_privileges);
        let s = settings(json!({}), json!({"capabilities": {"add": ["SYS_ADMIN"]}})).unwrap();
        assert!(!s.no_new_privileges);
        let r = settings(
            json!({}),
            json!({"privileged": true, "allowPrivilegeEscalation": false}),
        )
        .unwrap_err();
        assert!(r.detail.contains("`privileged` to true"), "{r:?}");
        let r = settings(
            json!({}),
            json!({"allowPrivilegeEscalation": false, "capabilities": {"add": ["CAP_SYS_ADMIN"]}}),
        )
        .unwrap_err();
        assert!(r.detail.contains("CAP_SYS_ADMIN"), "{r:?}");
    }

    #[test]
    fn container_fields_override_the_pods() {
        let s = settings(
            json!({"runAsNonRoot": true, "seccompProfile": {"type": "Unconfined"},
                   "supplementalGroups": [5, 6, 5], "fsGroup": 7}),
            json!({"runAsNonRoot": false}),
        )
        .unwrap();
        assert!(!s.run_as_non_root);
        assert_eq!(s.seccomp, Some(Seccomp::Unconfined));
        assert_eq!(s.additional_gids, [5, 6, 7]);
        let s = settings(
            json!({"seccompProfile": {"type": "Unconfined"}}),
            json!({"seccompProfile": {"type": "RuntimeDefault"}, "readOnlyRootFilesystem": true}),
        )
        .unwrap();
        assert_eq!(s.seccomp, Some(Seccomp::RuntimeDefault));
        assert!(s.readonly_root);
        let r = settings(
            json!({"seccompProfile": {"type": "Localhost", "localhostProfile": "x.json"}}),
            json!({}),
        )
        .unwrap_err();
        assert_eq!(r.field, "spec.securityContext.seccompProfile.type");
        let r = settings(json!({}), json!({"procMount": "Unmasked"})).unwrap_err();
        assert_eq!(r.field, "securityContext.procMount");
        let r = settings(json!({"supplementalGroups": [-1]}), json!({})).unwrap_err();
        assert_eq!(r.detail, ID_RANGE);
        assert_eq!(
            non_root_message(&pod(json!({})), "c"),
            "container has runAsNonRoot and image will run as root (pod: \"p_ns(u1)\", container: c)"
        );
    }

    #[test]
    fn escaping_paths_are_refused() {
        use PathUse::*;
        for (path, usage) in [
            ("/proc/self/fd/7", WorkingDir),
            ("//proc/./1/cwd", WorkingDir),
            ("/proc/thread-self/fd/3", MountDestination),
            ("/data/../proc", WorkingDir),
            ("relative/dir", WorkingDir),
            ("/a\0b", WorkingDir),
            ("/sys/fs/cgroup", MountDestination),
            ("/", MountDestination),
            ("/dev/", MountDestination),
            ("/dev/pts", MountDestination),
        ] {
            assert!(path_problem(path, usage).is_some(), "{path:?}");
        }
        for (path, usage) in [
            ("/", WorkingDir),
            ("/data", MountDestination),
            ("/dev/shm", MountDestination),
            ("/var/lib/x", WorkingDir),
            ("/sys", WorkingDir),
            ("/processes", MountDestination),
        ] {
            assert_eq!(path_problem(path, usage), None, "{path:?}");
        }
    }

    #[test]
    fn admission_refusals_name_their_fields() {
        let c = json!({"name": "c", "workingDir": "/proc/self/fd/8",
            "volumeMounts": [{"name": "v", "mountPath": "/ok"}, {"name": "v", "mountPath": "/proc"}],
            "args": ["a\u{0}b"],
            "securityContext": {"privileged": true, "allowPrivilegeEscalation": false, "runAsUser": -3}});
        let fields: Vec<String> = refusals(&c).into_iter().map(|r| r.field).collect();
        assert_eq!(
            fields,
            [
                "workingDir",
                "volumeMounts[1].mountPath",
                "args[0]",
                "securityContext",
                "securityContext.runAsUser"
            ]
        );
        assert!(refusals(&json!({"name": "c", "workingDir": "/srv"})).is_empty());
        let p = pod_refusals(&json!({"securityContext": {"runAsUser": -1, "fsGroup": -1}}));
        let fields: Vec<&str> = p.iter().map(|r| r.field.as_str()).collect();
        assert_eq!(
            fields,
            ["securityContext.runAsUser", "securityContext.fsGroup"]
        );
        let p =
            pod_refusals(&json!({"securityContext": {"seccompProfile": {"type": "Localhost"}}}));
        assert_eq!(p[0].field, "securityContext.seccompProfile.type");
    }
}
