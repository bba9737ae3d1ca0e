//! Pod Security Admission, the pure core: a namespace's `pod-security.kubernetes.io/*` labels
//! → its policy ([`Policy::from_labels`]), and a pod's metadata and spec checked against a
//! level of the Pod Security Standards ([`evaluate`]) with Kubernetes' reasons and details,
//! in Kubernetes' order, so that the messages read as the API server's do.

use std::collections::BTreeSet;
use std::fmt;

use serde_json::Value;

/// The label prefix; `enforce`, `warn`, `audit` and their `-version`s follow it.
pub const LABEL_PREFIX: &str = "pod-security.kubernetes.io/";
/// The three modes, in the order their labels are checked.
pub const MODES: [&str; 3] = ["enforce", "warn", "audit"];

/// A level of the Pod Security Standards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Privileged,
    Baseline,
    Restricted,
}

impl Level {
    pub fn parse(s: &str) -> Result<Level, String> {
        match s {
            "privileged" => Ok(Level::Privileged),
            "baseline" => Ok(Level::Baseline),
            "restricted" => Ok(Level::Restricted),
            _ => Err("must be one of privileged, baseline, restricted".into()),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

/// A policy version: `latest` or `v1.N` (the checks as they were in Kubernetes 1.N).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Latest,
    Minor(u32),
}

impl Version {
    pub fn parse(s: &str) -> Result<Version, String> {
        if s == "latest" {
            return Ok(Version::Latest);
        }
        let bad = || String::from(r#"must be "latest" or "v1.x""#);
        let minor = s.strip_prefix("v1.").ok_or_else(bad)?;
        if minor.is_empty()
            || minor.len() > 4
            || !minor.bytes().all(|b| b.is_ascii_digit())
            || (minor.len() > 1 && minor.starts_with('0'))
        {
            return Err(bad());
        }
        minor.parse().map(Version::Minor).map_err(|_| bad())
    }

    /// Whether a check that exists since Kubernetes 1.`minor` applies at this version.
    fn at_least(self, minor: u32) -> bool {
        match self {
            Version::Latest => true,
            Version::Minor(m) => m >= minor,
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Version::Latest => f.write_str("latest"),
            Version::Minor(m) => write!(f, "v1.{m}"),
        }
    }
}

/// A level at a version, shown as Kubernetes does: `restricted:latest`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LevelVersion {
    pub level: Level,
    pub version: Version,
}

impl LevelVersion {
    pub const PRIVILEGED: LevelVersion = LevelVersion {
        level: Level::Privileged,
        version: Version::Latest,
    };
}

impl fmt::Display for LevelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.level.as_str(), self.version)
    }
}

/// A namespace's policy: one level per mode (unlabelled modes are `privileged:latest`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub enforce: LevelVersion,
    pub warn: LevelVersion,
    pub audit: LevelVersion,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            enforce: LevelVersion::PRIVILEGED,
            warn: LevelVersion::PRIVILEGED,
            audit: LevelVersion::PRIVILEGED,
        }
    }
}

/// A label that does not parse: its key, value and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelError {
    pub key: String,
    pub value: String,
    pub message: String,
}

impl Policy {
    /// The policy a namespace's labels (`metadata.labels`, a JSON object or null) ask for,
    /// or every label that is wrong: an unknown `pod-security.kubernetes.io/` key, a level
    /// that is not one of the three, a version that is not `latest` or `v1.N`.
    pub fn from_labels(labels: &Value) -> Result<Policy, Vec<LabelError>> {
        let mut policy = Policy::default();
        let mut errors = Vec::new();
        let Some(labels) = labels.as_object() else {
            return Ok(policy);
        };
        for (key, value) in labels {
            let Some(rest) = key.strip_prefix(LABEL_PREFIX) else {
                continue;
            };
            let value_s = value.as_str().unwrap_or_default();
            let err = |message: String| LabelError {
                key: key.clone(),
                value: value_s.to_string(),
                message,
            };
            let (mode, is_version) = match rest.strip_suffix("-version") {
                Some(mode) => (mode, true),
                None => (rest, false),
            };
            let slot = match mode {
                "enforce" => &mut policy.enforce,
                "warn" => &mut policy.warn,
                "audit" => &mut policy.audit,
                _ => {
                    errors.push(err(format!(
                        "unknown Pod Security label; supported: {}",
                        MODES
                            .iter()
                            .flat_map(|m| [
                                format!("{LABEL_PREFIX}{m}"),
                                format!("{LABEL_PREFIX}{m}-version")
                            ])
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                    continue;
                }
            };
            if is_version {
                match Version::parse(value_s) {
                    Ok(v) => slot.version = v,
                    Err(e) => errors.push(err(e)),
                }
            } else {
                match Level::parse(value_s) {
                    Ok(l) => slot.level = l,
                    Err(e) => errors.push(err(e)),
                }
            }
        }
        if errors.is_empty() {
            Ok(policy)
        } else {
            Err(errors)
        }
    }
}

impl Policy {
    /// The policy `labels` ask for; labels that do not parse (written before the check, or by
    /// another path) fail closed, as Kubernetes: `restricted:latest` for every mode.
    pub fn fail_closed(labels: &Value) -> Policy {
        const RESTRICTED: LevelVersion = LevelVersion {
            level: Level::Restricted,
            version: Version::Latest,
        };
        Policy::from_labels(labels).unwrap_or(Policy {
            enforce: RESTRICTED,
            warn: RESTRICTED,
            audit: RESTRICTED,
        })
    }
}

/// One failed check: Kubernetes' `ForbiddenReason` and `ForbiddenDetail`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub reason: String,
    pub detail: String,
}

/// The violations joined as Kubernetes shows them: `reason (detail), reason (detail)`.
pub fn describe(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(|v| {
            if v.detail.is_empty() {
                v.reason.clone()
            } else {
                format!("{} ({})", v.reason, v.detail)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The refusal's text after `pods "NAME" is forbidden: `.
pub fn forbidden_message(lv: LevelVersion, violations: &[Violation]) -> String {
    format!("violates PodSecurity \"{lv}\": {}", describe(violations))
}

/// The warning's text (an HTTP `Warning` header, which kubectl prints as `Warning: …`).
pub fn warning_message(lv: LevelVersion, violations: &[Violation]) -> String {
    format!(
        "would violate PodSecurity \"{lv}\": {}",
        describe(violations)
    )
}

/// One check: its level, whether a restricted check replaces it at `restricted` (Kubernetes'
/// "overlap"), the Kubernetes minor version it exists since, and the check itself.
struct Check {
    level: Level,
    overlap: bool,
    since: u32,
    run: fn(&Pod<'_>, Version) -> Option<Violation>,
}

/// Kubernetes' checks in its order (by check file name), so that messages list the reasons in
/// the same order.
const CHECKS: &[Check] = &[
    Check {
        level: Level::Restricted,
        overlap: false,
        since: 8,
        run: allow_privilege_escalation,
    },
    Check {
        level: Level::Baseline,
        overlap: false,
        since: 0,
        run: app_armor,
    },
    Check {
        level: Level::Baseline,
        overlap: true,
        since: 0,
        run: capabilities_baseline,
    },
    Check {
        level: Level::Restricted,
        overlap: false,
        since: 22,
        run: capabilities_restricted,
    },
    Check {
        level: Level::Baseline,
        overlap: false,
        since: 0,
        run: host_namespaces,
    },
    Check {
        level: Level::Baseline,
        overlap: true,
        since: 0,
        run: host_path_volumes,
    },
    Check {
        level: Level::Baseline,
        overlap: false,
        since: 0,
        run: host_ports,
    },
    Check {
        level: Level::Baseline,
        overlap: false,
        since: 34,
        run: host_probes,
    },
    Check {
        level: Level::Baseline,
        overlap: false,
        since: 0,
        run: privileged,
    },
    Check {
        level: Level::Baseline,
        overlap: false,
        since: 0,
        run: proc_mount,
    },
    Check {
        level: Level::Restricted,
        overlap: false,
        since: 0,
        run: restricted_volumes,
    },
    Check {
        level: Level::Restricted,
        overlap: false,
        since: 0,
        run: run_as_non_root,
    },
    Check {
        level: Level::Restricted,
        overlap: false,
        since: 23,
        run: run_as_user,
    },
    Check {
        level: Level::Baseline,
        overlap: false,
        since: 0,
        run: se_linux_options,
    },
    Check {
        level: Level::Baseline,
        overlap: true,
        since: 0,
        run: seccomp_baseline,
    },
    Check {
        level: Level::Restricted,
        overlap: false,
        since: 19,
        run: seccomp_restricted,
    },
    Check {
        level: Level::Baseline,
        overlap: false,
        since: 0,
        run: sysctls,
    },
    Check {
        level: Level::Baseline,
        overlap: false,
        since: 0,
        run: windows_host_process,
    },
];

/// The violations of pod (`metadata` and `spec` as JSON) at `lv`; empty if it is allowed.
/// `privileged` allows everything. As Kubernetes: `baseline` runs the baseline checks,
/// `restricted` the baseline checks a restricted check does not replace, then the restricted
/// ones.
pub fn evaluate(lv: LevelVersion, metadata: &Value, spec: &Value) -> Vec<Violation> {
    let pod = Pod { metadata, spec };
    let applies = |c: &Check| match lv.level {
        Level::Privileged => false,
        Level::Baseline => c.level == Level::Baseline,
        Level::Restricted => !(c.level == Level::Baseline && c.overlap),
    };
    // Kubernetes runs the non-overlapping baseline checks first, then the rest.
    let (first, rest): (Vec<&Check>, Vec<&Check>) = CHECKS
        .iter()
        .filter(|c| applies(c) && lv.version.at_least(c.since))
        .partition(|c| c.level == Level::Baseline && !c.overlap);
    first
        .into_iter()
        .chain(rest)
        .filter_map(|c| (c.run)(&pod, lv.version))
        .collect()
}

/// The pod being checked.
struct Pod<'a> {
    metadata: &'a Value,
    spec: &'a Value,
}

impl Pod<'_> {
    /// Init containers, containers, ephemeral containers: Kubernetes' visiting order.
    fn containers(&self) -> impl Iterator<Item = &Value> {
        ["initContainers", "containers", "ephemeralContainers"]
            .into_iter()
            .flat_map(|list| self.spec[list].as_array().into_iter().flatten())
    }

    fn pod_sc(&self) -> &Value {
        &self.spec["securityContext"]
    }
}

fn name(c: &Value) -> String {
    c["name"].as_str().unwrap_or_default().to_string()
}

fn join_quote<S: AsRef<str>>(items: &[S]) -> String {
    if items.is_empty() {
        return String::new();
    }
    let quoted: Vec<&str> = items.iter().map(AsRef::as_ref).collect();
    format!("\"{}\"", quoted.join("\", \""))
}

fn pluralize<'a>(singular: &'a str, plural: &'a str, n: usize) -> &'a str {
    if n == 1 {
        singular
    } else {
        plural
    }
}

/// `container "a"` / `containers "a", "b"`.
fn containers_phrase(names: &[String]) -> String {
    format!(
        "{} {}",
        pluralize("container", "containers", names.len()),
        join_quote(names)
    )
}

fn violation(reason: &str, detail: String) -> Option<Violation> {
    Some(Violation {
        reason: reason.into(),
        detail,
    })
}

fn allow_privilege_escalation(pod: &Pod<'_>, _: Version) -> Option<Violation> {
    let bad: Vec<String> = pod
        .containers()
        .filter(|c| c["securityContext"]["allowPrivilegeEscalation"] != Value::Bool(false))
        .map(name)
        .collect();
    if bad.is_empty() {
        return None;
    }
    violation(
        "allowPrivilegeEscalation != false",
        format!(
            "{} must set securityContext.allowPrivilegeEscalation=false",
            containers_phrase(&bad)
        ),
    )
}

fn app_armor(pod: &Pod<'_>, _: Version) -> Option<Violation> {
    const PREFIX: &str = "container.apparmor.security.beta.kubernetes.io/";
    let mut bad = BTreeSet::new();
    if let Some(annotations) = pod.metadata["annotations"].as_object() {
        for (k, v) in annotations {
            let v = v.as_str().unwrap_or_default();
            let allowed = v.is_empty() || v == "runtime/default" || v.starts_with("localhost/");
            if k.starts_with(PREFIX) && !allowed {
                bad.insert(format!("{k}={v:?}"));
            }
        }
    }
    // The field form (Kubernetes 1.30+): `Unconfined` is the only type baseline forbids.
    if pod.pod_sc()["appArmorProfile"]["type"] == "Unconfined" {
        bad.insert(r#"securityContext.appArmorProfile.type="Unconfined""#.to_string());
    }
    for c in pod.containers() {
        if c["securityContext"]["appArmorProfile"]["type"] == "Unconfined" {
            bad.insert(format!(
                r#"containers[{:?}].securityContext.appArmorProfile.type="Unconfined""#,
                name(c)
            ));
        }
    }
    if bad.is_empty() {
        return None;
    }
    let bad: Vec<String> = bad.into_iter().collect();
    violation(
        pluralize(
            "forbidden AppArmor profile",
            "forbidden AppArmor profiles",
            bad.len(),
        ),
        bad.join(", "),
    )
}

/// The capabilities Kubernetes' baseline allows a container to add (the container runtime's
/// default set minus NET_RAW).
const BASELINE_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

fn capabilities_added(c: &Value) -> impl Iterator<Item = &str> {
    c["securityContext"]["capabilities"]["add"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

fn capabilities_baseline(pod: &Pod<'_>, _: Version) -> Option<Violation> {
    let mut bad = Vec::new();
    let mut caps = BTreeSet::new();
    for c in pod.containers() {
        let mut valid = true;
        for cap in capabilities_added(c) {
            if !BASELINE_CAPABILITIES.contains(&cap) {
                valid = false;
                caps.insert(cap.to_string());
            }
        }
        if !valid {
            bad.push(name(c));
        }
    }
    if bad.is_empty() {
        return None;
    }
    let caps: Vec<String> = caps.into_iter().collect();
    violation(
        "non-default capabilities",
        format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers_phrase(&bad),
            join_quote(&caps)
        ),
    )
}

fn capabilities_restricted(pod: &Pod<'_>, _: Version) -> Option<Violation> {
    let mut missing_drop_all = Vec::new();
    let mut adding = Vec::new();
    let mut caps = BTreeSet::new();
    for c in pod.containers() {
        let drops = &c["securityContext"]["capabilities"]["drop"];
        let dropped_all = drops
            .as_array()
            .is_some_and(|d| d.iter().any(|x| x == "ALL"));
        if !dropped_all {
            missing_drop_all.push(name(c));
        }
        let mut forbidden = false;
        for cap in capabilities_added(c) {
            if cap != "NET_BIND_SERVICE" {
                forbidden = true;
                caps.insert(cap.to_string());
            }
        }
        if forbidden {
            adding.push(name(c));
        }
    }
    let mut details = Vec::new();
    if !missing_drop_all.is_empty() {
        details.push(format!(
            r#"{} must set securityContext.capabilities.drop=["ALL"]"#,
            containers_phrase(&missing_drop_all)
        ));
    }
    if !adding.is_empty() {
        let caps: Vec<String> = caps.into_iter().collect();
        details.push(format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers_phrase(&adding),
            join_quote(&caps)
        ));
    }
    if details.is_empty() {
        return None;
    }
    violation("unrestricted capabilities", details.join("; "))
}

fn host_namespaces(pod: &Pod<'_>, _: Version) -> Option<Violation> {
    let mut set = BTreeSet::new();
    for field in ["hostNetwork", "hostPID", "hostIPC"] {
        if pod.spec[field] == Value::Bool(true) {
            set.insert(field);
        }
    }
    if set.is_empty() {
        return None;
    }
    violation(
        "host namespaces",
        set.into_iter().collect::<Vec<_>>().join(", "),
    )
}

fn volumes<'a>(pod: &'a Pod<'_>) -> impl Iterator<Item = &'a Value> {
    pod.spec["volumes"].as_array().into_iter().flatten()
}

fn host_path_volumes(pod: &Pod<'_>, _: Version) -> Option<Violation> {
    let bad: Vec<String> = volumes(pod)
        .filter(|v| v["hostPath"].is_object())
        .map(name)
        .collect();
    if bad.is_empty() {
        return None;
    }
    violation(
        "hostPath volumes",
        format!(
            "{} {}",
            pluralize("volume", "volumes", bad.len()),
            join_quote(&bad)
        ),
    )
}

fn host_ports(pod: &Pod<'_>, _: Version) -> Option<Violation> {
    let mut bad = Vec::new();
    let mut ports = BTreeSet::new();
    for c in pod.containers() {
        let mut valid = true;
        for p in c["ports"].as_array().into_iter().flatten() {
            if let Some(hp) = p["hostPort"].as_i64().filter(|hp| *hp != 0) {
                valid = false;
                // Kubernetes sorts them as strings.
                ports.insert(hp.to_string());
            }
        }
        if !valid {
            bad.push(name(c));
        }
    }
    if bad.is_empty() {
        return None;
    }
    violation(
        "hostPort",
        format!(
            "{} {} {} {}",
            containers_phrase(&bad),
            pluralize("uses", "use", bad.len()),
            pluralize("hostPort", "hostPorts", ports.len()),
            ports.into_iter().collect::<Vec<_>>().join(", ")
        ),
    )
}

fn host_probes(pod: &Pod<'_>, _: Version) -> Option<Violation> {
    let mut bad = BTreeSet::new();
    let mut hosts = BTreeSet::new();
    for c in pod.containers() {
        let handlers = [
            &c["livenessProbe"],
            &c["readinessProbe"],
            &c["startupProbe"],
            &c["lifecycle"]["postStart"],
            &c["lifecycle"]["preStop"],
        ];
        for h in handlers {
            for kind in ["httpGet", "tcpSocket"] {
                if let Some(host) = h[kind]["host"].as_str().filter(|s| !s.is_empty()) {
                    bad.insert(name(c));
                    hosts.insert(host.to_string());
                }
            }
        }
    }
    if bad.is_empty() {
        return None;
    }
    let bad: Vec<String> = bad.into_iter().collect();
    let hosts: Vec<String> = hosts.into_iter().collect();
    violation(
        "probe or lifecycle host",
        format!(
            "{} {} {} {}",
            containers_phrase(&bad),
            pluralize("uses", "use", bad.len()),
            pluralize(
                "probe or lifecycle host",
                "probe or lifecycle hosts",
                hosts.len()
            ),
            join_quote(&hosts)
        ),
    )
}

fn privileged(pod: &Pod<'_>, _: Version) -> Option<Violation> {
    let bad: Vec<String> = pod
        .containers()
        .filter(|c| c["securityContext"]["privileged"] == Value::Bool(true))
        .map(name)
        .collect();
    if bad.is_empty() {
        return None;
    }
    violation(
        "privileged",
        format!(
            "{} must not set securityContext.privileged=true",
            containers_phrase(&bad)
        ),
    )
}

fn proc_mount(pod: &Pod<'_>, _: Version) -> Option<Violation> {
    let mut bad = Vec::new();
    let mut types = BTreeSet::new();
    for c in pod.containers() {
        if let Some(t) = c["securityContext"]["procMount"].as_str() {
            if t != "Default" {
                bad.push(name(c));
                types.insert(t.to_string());
            }
        }
    }
    if bad.is_empty() {
        return None;
    }
    let types: Vec<String> = types.into_iter().collect();
    violation(
        "procMount",
        format!(
            "{} must not set securityContext.procMount to {}",
            containers_phrase(&bad),
            join_quote(&types)
        ),
    )
}

/// The volume types `restricted` allows.
const RESTRICTED_VOLUME_TYPES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

fn restricted_volumes(pod: &Pod<'_>, _: Version) -> Option<Violation> {
    let bad: BTreeSet<String> = volumes(pod)
        .filter(|v| {
            !RESTRICTED_VOLUME_TYPES
                .iter()
                .any(|t| v.get(*t).is_some_and(|x| !x.is_null()))
        })
        .map(name)
        .collect();
    if bad.is_empty() {
        return None;
    }
    // Go's `%q` of a []string: `["a" "b"]`.
    let list: Vec<String> = bad.iter().map(|n| format!("{n:?}")).collect();
    violation(
        "restricted volume types",
        format!("volumes [{}] have restricted types", list.join(" ")),
    )
}

/// Shared by runAsNonRoot and seccompProfile (restricted): the pod's and explicitly bad
/// containers' setters (`pod and containers "a", "b"`).
fn setters(pod_bad: bool, containers: &[String]) -> String {
    let mut out = Vec::new();
    if pod_bad {
        out.push("pod".to_string());
    }
    if !containers.is_empty() {
        out.push(containers_phrase(containers));
    }
    out.join(" and ")
}

fn run_as_non_root(pod: &Pod<'_>, _: Version) -> Option<Violation> {
    let pod_value = &pod.pod_sc()["runAsNonRoot"];
    let pod_bad = *pod_value == Value::Bool(false);
    let pod_ok = *pod_value == Value::Bool(true);
    let mut explicit = Vec::new();
    let mut implicit = Vec::new();
    for c in pod.containers() {
        match c["securityContext"]["runAsNonRoot"].as_bool() {
            Some(false) => explicit.push(name(c)),
            Some(true) => {}
            None if !pod_ok => implicit.push(name(c)),
            None => {}
        }
    }
    if pod_bad || !explicit.is_empty() {
        return violation(
            "runAsNonRoot != true",
            format!(
                "{} must not set securityContext.runAsNonRoot=false",
                setters(pod_bad, &explicit)
            ),
        );
    }
    if !implicit.is_empty() {
        return violation(
            "runAsNonRoot != true",
            format!(
                "pod or {} must set securityContext.runAsNonRoot=true",
                containers_phrase(&implicit)
            ),
        );
    }
    None
}

fn run_as_user(pod: &Pod<'_>, _: Version) -> Option<Violation> {
    let is_zero = |v: &Value| v.as_i64() == Some(0);
    let pod_bad = is_zero(&pod.pod_sc()["runAsUser"]);
    let bad: Vec<String> = pod
        .containers()
        .filter(|c| is_zero(&c["securityContext"]["runAsUser"]))
        .map(name)
        .collect();
    if !pod_bad && bad.is_empty() {
        return None;
    }
    violation(
        "runAsUser=0",
        format!("{} must not set runAsUser=0", setters(pod_bad, &bad)),
    )
}

fn se_linux_options(pod: &Pod<'_>, _: Version) -> Option<Violation> {
    const TYPES: &[&str] = &["", "container_t", "container_init_t", "container_kvm_t"];
    let mut bad_types = BTreeSet::new();
    let (mut set_user, mut set_role) = (false, false);
    let mut valid = |o: &Value| -> bool {
        if !o.is_object() {
            return true;
        }
        let mut ok = true;
        let t = o["type"].as_str().unwrap_or_default();
        if !TYPES.contains(&t) {
            ok = false;
            bad_types.insert(t.to_string());
        }
        if o["user"].as_str().is_some_and(|s| !s.is_empty()) {
            ok = false;
            set_user = true;
        }
        if o["role"].as_str().is_some_and(|s| !s.is_empty()) {
            ok = false;
            set_role = true;
        }
        ok
    };
    let pod_bad = !valid(&pod.pod_sc()["seLinuxOptions"]);
    let bad: Vec<String> = pod
        .containers()
        .filter(|c| !valid(&c["securityContext"]["seLinuxOptions"]))
        .map(name)
        .collect();
    if !pod_bad && bad.is_empty() {
        return None;
    }
    // As Kubernetes: user and role are named only beside a bad type.
    let mut data = Vec::new();
    if !bad_types.is_empty() {
        let types: Vec<String> = bad_types.into_iter().collect();
        data.push(format!(
            "{} {}",
            pluralize("type", "types", types.len()),
            join_quote(&types)
        ));
        if set_user {
            data.push("user may not be set".into());
        }
        if set_role {
            data.push("role may not be set".into());
        }
    }
    violation(
        "seLinuxOptions",
        format!(
            "{} set forbidden securityContext.seLinuxOptions: {}",
            setters(pod_bad, &bad),
            data.join("; ")
        ),
    )
}

fn seccomp_type(sc: &Value) -> Option<&str> {
    let profile = &sc["seccompProfile"];
    profile
        .is_object()
        .then(|| profile["type"].as_str().unwrap_or_default())
}

fn valid_seccomp(t: &str) -> bool {
    t == "RuntimeDefault" || t == "Localhost"
}

fn seccomp_baseline(pod: &Pod<'_>, version: Version) -> Option<Violation> {
    // The annotations (Kubernetes before 1.19 checks only these).
    if !version.at_least(19) {
        const POD: &str = "seccomp.security.alpha.kubernetes.io/pod";
        const PREFIX: &str = "container.seccomp.security.alpha.kubernetes.io/";
        let ok = |v: &str| {
            v == "runtime/default" || v == "docker/default" || v.starts_with("localhost/")
        };
        let annotations = &pod.metadata["annotations"];
        let mut bad = BTreeSet::new();
        if let Some(v) = annotations[POD].as_str().filter(|v| !ok(v)) {
            bad.insert(format!("{POD}={v:?}"));
        }
        for c in pod.containers() {
            let key = format!("{PREFIX}{}", name(c));
            if let Some(v) = annotations[&key].as_str().filter(|v| !ok(v)) {
                bad.insert(format!("{key}={v:?}"));
            }
        }
        if bad.is_empty() {
            return None;
        }
        return violation(
            "seccompProfile",
            format!(
                "forbidden {} {}",
                pluralize("annotation", "annotations", bad.len()),
                bad.into_iter().collect::<Vec<_>>().join(", ")
            ),
        );
    }
    let mut values = BTreeSet::new();
    let pod_bad = match seccomp_type(pod.pod_sc()) {
        Some(t) if !valid_seccomp(t) => {
            values.insert(t.to_string());
            true
        }
        _ => false,
    };
    let mut bad = Vec::new();
    for c in pod.containers() {
        if let Some(t) = seccomp_type(&c["securityContext"]).filter(|t| !valid_seccomp(t)) {
            bad.push(name(c));
            values.insert(t.to_string());
        }
    }
    if !pod_bad && bad.is_empty() {
        return None;
    }
    let values: Vec<String> = values.into_iter().collect();
    violation(
        "seccompProfile",
        format!(
            "{} must not set securityContext.seccompProfile.type to {}",
            setters(pod_bad, &bad),
            join_quote(&values)
        ),
    )
}

fn seccomp_restricted(pod: &Pod<'_>, _: Version) -> Option<Violation> {
    let mut values = BTreeSet::new();
    let (pod_bad, pod_set) = match seccomp_type(pod.pod_sc()) {
        Some(t) if !valid_seccomp(t) => {
            values.insert(t.to_string());
            (true, false)
        }
        Some(_) => (false, true),
        None => (false, false),
    };
    let mut explicit = Vec::new();
    let mut implicit = Vec::new();
    for c in pod.containers() {
        match seccomp_type(&c["securityContext"]) {
            Some(t) if !valid_seccomp(t) => {
                explicit.push(name(c));
                values.insert(t.to_string());
            }
            Some(_) => {}
            None if !pod_set => implicit.push(name(c)),
            None => {}
        }
    }
    if pod_bad || !explicit.is_empty() {
        let values: Vec<String> = values.into_iter().collect();
        return violation(
            "seccompProfile",
            format!(
                "{} must not set securityContext.seccompProfile.type to {}",
                setters(pod_bad, &explicit),
                join_quote(&values)
            ),
        );
    }
    if !implicit.is_empty() {
        return violation(
            "seccompProfile",
            format!(
                r#"pod or {} must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost""#,
                containers_phrase(&implicit)
            ),
        );
    }
    None
}

/// The sysctls baseline allows, by the Kubernetes version that added them.
const SYSCTLS: &[(u32, &str)] = &[
    (0, "kernel.shm_rmid_forced"),
    (0, "net.ipv4.ip_local_port_range"),
    (0, "net.ipv4.tcp_syncookies"),
    (0, "net.ipv4.ping_group_range"),
    (0, "net.ipv4.ip_unprivileged_port_start"),
    (27, "net.ipv4.ip_local_reserved_ports"),
    (29, "net.ipv4.tcp_keepalive_time"),
    (29, "net.ipv4.tcp_fin_timeout"),
    (29, "net.ipv4.tcp_keepalive_intvl"),
    (29, "net.ipv4.tcp_keepalive_probes"),
    (32, "net.ipv4.tcp_rmem"),
    (32, "net.ipv4.tcp_wmem"),
];

fn sysctls(pod: &Pod<'_>, version: Version) -> Option<Violation> {
    let bad: Vec<&str> = pod.pod_sc()["sysctls"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str())
        .filter(|n| {
            !SYSCTLS
                .iter()
                .any(|(since, allowed)| allowed == n && version.at_least(*since))
        })
        .collect();
    if bad.is_empty() {
        return None;
    }
    violation("forbidden sysctls", bad.join(", "))
}

fn windows_host_process(pod: &Pod<'_>, _: Version) -> Option<Violation> {
    let host_process = |sc: &Value| sc["windowsOptions"]["hostProcess"] == Value::Bool(true);
    let pod_bad = host_process(pod.pod_sc());
    let bad: Vec<String> = pod
        .containers()
        .filter(|c| host_process(&c["securityContext"]))
        .map(name)
        .collect();
    if !pod_bad && bad.is_empty() {
        return None;
    }
    violation(
        "hostProcess",
        format!(
            "{} must not set securityContext.windowsOptions.hostProcess=true",
            setters(pod_bad, &bad)
        ),
    )
}

#[cfg(test)]
mod tests;
