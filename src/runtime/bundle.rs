//! OCI runtime configuration (`config.json`) of one container, from the pod, the container's
//! spec and its image's config: Kubernetes' command/args rules, env, workingDir, user, the
//! pod's shared namespaces (joined through the sandbox's `/proc/<pid>/ns/*`), default mounts,
//! the pod's `/etc/hosts` & co, its volumes (prepared by `volumes`), and a conservative
//! security default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod};
use oci_spec::runtime::{
    LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxMemoryBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, Mount,
    MountBuilder, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

use super::volumes::PreparedVolume;
use super::{seccomp, ImageInfo, RuntimeError};
pub use crate::model::container::{literal_env, EnvEntry, ResolvedConfig};
use crate::model::security_context as security;

/// Paths masked in every container (Docker's list).
const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Everything one container's config is made of.
pub struct BundleInput<'a> {
    pub pod: &'a Pod,
    pub container: &'a Container,
    pub image: &'a ImageInfo,
    /// `<data>/pods/<key>`.
    pub pod_dir: &'a Path,
    /// The pod's sandbox process, whose network, IPC and UTS namespaces the container joins.
    pub sandbox_pid: i32,
    /// `linux.cgroupsPath`.
    pub cgroups_path: String,
    /// The node's defaults and what its cgroups support.
    pub limits: NodeLimits,
    /// The container's env as the kubelet resolved it (`kubelet::config`): `envFrom`, then
    /// `env` with `valueFrom` values filled in.
    pub env: &'a [EnvEntry],
    /// The volumes the container mounts, ready on the node (`volumes::prepare`).
    pub volumes: &'a BTreeMap<String, PreparedVolume>,
}

/// Node-wide container limits (`RuntimeConfig::limits`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeLimits {
    /// `linux.resources.pids.limit` of every container (`shoal agent --pod-pids-limit`).
    pub pids_limit: Option<i64>,
    /// Whether the host accounts swap per cgroup (v2, or v1 with `memory.memsw.*`): then a
    /// memory limit also caps memory+swap at the same value, so a container cannot swap past it.
    pub memory_swap_limit: bool,
    /// The agent's capability bounding set (`CapBnd`): containers get nothing outside it
    /// (privileged and `ALL` are cut down to it, as containerd does). `None`: no filter.
    pub capability_bound: Option<u64>,
    /// `shoal agent --deny-privileged`: a privileged container is refused.
    pub deny_privileged: bool,
}

fn invalid(what: &str, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::Invalid {
        what: what.into(),
        reason: reason.into(),
    }
}

/// The process's argv by Kubernetes' rules: `command` replaces the image's entrypoint and
/// drops its cmd; `args` alone replace the cmd.
pub fn process_args(container: &Container, image: &ImageInfo) -> Result<Vec<String>, RuntimeError> {
    let command = container.command.clone().unwrap_or_default();
    let args = container.args.clone().unwrap_or_default();
    let argv: Vec<String> = match (command.is_empty(), args.is_empty()) {
        (false, _) => command.into_iter().chain(args).collect(),
        (true, false) => image.entrypoint.iter().cloned().chain(args).collect(),
        (true, true) => image
            .entrypoint
            .iter()
            .chain(image.cmd.iter())
            .cloned()
            .collect(),
    };
    if argv.is_empty() {
        return Err(invalid(
            "container command",
            format!(
                "container {:?} has no command and image {} has no entrypoint or cmd",
                container.name, image.reference
            ),
        ));
    }
    Ok(argv)
}

/// Image env, then the container's resolved env (later names override earlier; literal values
/// get `$(VAR)` expansion against what is defined before them), `PATH` defaulted, `HOSTNAME`
/// set to the pod's name.
pub fn process_env(env: &[EnvEntry], image: &ImageInfo, hostname: &str) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    let mut values: BTreeMap<String, String> = BTreeMap::new();
    fn set(
        order: &mut Vec<String>,
        values: &mut BTreeMap<String, String>,
        name: String,
        value: String,
    ) {
        if !values.contains_key(&name) {
            order.push(name.clone());
        }
        values.insert(name, value);
    }
    set(
        &mut order,
        &mut values,
        "PATH".into(),
        DEFAULT_PATH["PATH=".len()..].into(),
    );
    set(&mut order, &mut values, "HOSTNAME".into(), hostname.into());
    for kv in &image.env {
        if let Some((k, v)) = kv.split_once('=') {
            set(&mut order, &mut values, k.into(), v.into());
        }
    }
    for var in env {
        let value = match var.expand {
            true => expand(&var.value, &values),
            false => var.value.clone(),
        };
        set(&mut order, &mut values, var.name.clone(), value);
    }
    order
        .into_iter()
        .map(|k| format!("{k}={}", values.get(&k).map(String::as_str).unwrap_or("")))
        .collect()
}

/// Kubernetes' `$(VAR)` expansion against variables defined before; `$$` escapes.
fn expand(value: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("$$") {
            out.push('$');
            rest = t;
        } else if let Some(end) = tail.strip_prefix("$(").and_then(|t| t.find(')')) {
            let name = &tail[2..2 + end];
            match vars.get(name) {
                Some(v) => out.push_str(v),
                None => out.push_str(&tail[..end + 3]),
            }
            rest = &tail[end + 3..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// `(uid, gid)`: the pod/container securityContext's `runAsUser`/`runAsGroup`, else the image's
/// `user` (`uid[:gid]` numeric, or a name looked up in the image's `/etc/passwd`), else root.
pub fn process_user(
    pod: &Pod,
    container: &Container,
    image: &ImageInfo,
) -> Result<(u32, u32), RuntimeError> {
    let csc = container.security_context.as_ref();
    let psc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let run_as_user = csc
        .and_then(|c| c.run_as_user)
        .or(psc.and_then(|p| p.run_as_user));
    let run_as_group = csc
        .and_then(|c| c.run_as_group)
        .or(psc.and_then(|p| p.run_as_group));
    let (mut uid, mut gid) = match image.user.as_deref().filter(|u| !u.is_empty()) {
        None => (0, 0),
        Some(user) => image_user(user, image)?,
    };
    if let Some(u) = run_as_user {
        uid = u32::try_from(u).map_err(|_| invalid("runAsUser", u.to_string()))?;
    }
    if let Some(g) = run_as_group {
        gid = u32::try_from(g).map_err(|_| invalid("runAsGroup", g.to_string()))?;
    }
    Ok((uid, gid))
}

/// Kubernetes' `CreateContainerConfigError` message when `runAsNonRoot` is asked for and the
/// container would run as uid 0 (or its user cannot be determined); `None` otherwise. Cheap
/// when `runAsNonRoot` is not set (the kubelet asks every round).
pub fn non_root_violation(pod: &Pod, container: &Container, image: &ImageInfo) -> Option<String> {
    let psc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let wanted = container
        .security_context
        .as_ref()
        .and_then(|c| c.run_as_non_root)
        .or(psc.and_then(|p| p.run_as_non_root))
        .unwrap_or(false);
    if !wanted {
        return None;
    }
    match process_user(pod, container, image) {
        Ok((0, _)) => Some(security::non_root_message(pod, &container.name)),
        Ok(_) => None,
        Err(e) => Some(format!(
            "container has runAsNonRoot and its user cannot be verified: {e}"
        )),
    }
}

fn image_user(user: &str, image: &ImageInfo) -> Result<(u32, u32), RuntimeError> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = || {
        image
            .layers
            .iter()
            .rev()
            .find_map(|l| std::fs::read_to_string(l.join("etc/passwd")).ok())
            .unwrap_or_default()
    };
    let (uid, default_gid) = match u.parse::<u32>() {
        Ok(uid) => (uid, uid),
        Err(_) => passwd()
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() > 3 && f[0] == u)
            .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
            .ok_or_else(|| {
                invalid(
                    "image user",
                    format!("user {u:?} is not in the image's /etc/passwd"),
                )
            })?,
    };
    let gid = match g {
        None => default_gid,
        Some(g) => g
            .parse()
            .map_err(|_| invalid("image user", format!("group {g:?} is not numeric")))?,
    };
    Ok((uid, gid))
}

fn mount(
    dest: &str,
    typ: &str,
    source: impl Into<PathBuf>,
    options: &[&str],
) -> Result<Mount, RuntimeError> {
    MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source.into())
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(|e| invalid("mount", e.to_string()))
}

/// The default mounts plus the pod's files and volumes.
fn mounts(input: &BundleInput) -> Result<Vec<Mount>, RuntimeError> {
    let pod_dir = input.pod_dir;
    let mut out = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/shm",
            "bind",
            pod_dir.join("shm"),
            &["rbind", "nosuid", "nodev", "noexec", "rw"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        )?,
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        )?,
    ];
    for file in ["hosts", "hostname", "resolv.conf"] {
        out.push(mount(
            &format!("/etc/{file}"),
            "bind",
            pod_dir.join("etc").join(file),
            &["rbind", "rprivate", "rw"],
        )?);
    }
    for (i, vm) in input.container.volume_mounts.iter().flatten().enumerate() {
        let volume = input.volumes.get(&vm.name).ok_or_else(|| {
            invalid(
                "volumeMount",
                format!("volume {:?} is not defined in the pod", vm.name),
            )
        })?;
        let read_only = volume.read_only || vm.read_only == Some(true);
        // subPath mounts bind what the path resolves to now, inside the volume (so they do not
        // follow configMap/secret updates, as in Kubernetes).
        let source = match vm.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => {
                let target = pod_dir
                    .join("subpaths")
                    .join(&input.container.name)
                    .join(i.to_string());
                super::volumes::resolve_sub_path(&volume.source, sub, !read_only, &target)?
            }
            None => volume.source.clone(),
        };
        let ro = if read_only { "ro" } else { "rw" };
        out.push(mount(
            &vm.mount_path,
            "bind",
            source,
            &["rbind", "rprivate", ro],
        )?);
    }
    Ok(out)
}

/// Memory limit (bytes; memory+swap the same where the host accounts swap) and CPU quota (µs
/// per 100 ms period) from `resources.limits`; CPU shares from `resources.requests.cpu` (1024
/// per core, as the kubelet does); the node's pids limit. runc writes them to the v1
/// controllers (`memory.limit_in_bytes`, `memory.memsw.limit_in_bytes`, `cpu.cfs_quota_us`,
/// `cpu.shares`, `pids.max`) or their v2 equivalents (`memory.max`, `memory.swap.max` = 0,
/// `cpu.max`, `cpu.weight`, `pids.max`).
fn resources(
    container: &Container,
    node: NodeLimits,
) -> Result<oci_spec::runtime::LinuxResources, RuntimeError> {
    let limits = container
        .resources
        .as_ref()
        .and_then(|r| r.limits.clone())
        .unwrap_or_default();
    let requests = container
        .resources
        .as_ref()
        .and_then(|r| r.requests.clone())
        .unwrap_or_default();
    let mut builder = LinuxResourcesBuilder::default();
    if let Some(mem) = limits.get("memory") {
        let bytes = crate::model::quantity::parse_units(&mem.0)
            .map_err(|e| invalid("memory limit", e.0))?;
        let limit = i64::try_from(bytes).map_err(|_| invalid("memory limit", mem.0.clone()))?;
        let mut memory = LinuxMemoryBuilder::default().limit(limit);
        if node.memory_swap_limit {
            memory = memory.swap(limit);
        }
        builder = builder.memory(
            memory
                .build()
                .map_err(|e| invalid("memory", e.to_string()))?,
        );
    }
    if let Some(pids) = node.pids_limit.filter(|p| *p > 0) {
        builder = builder.pids(
            LinuxPidsBuilder::default()
                .limit(pids)
                .build()
                .map_err(|e| invalid("pids", e.to_string()))?,
        );
    }
    let mut cpu = LinuxCpuBuilder::default();
    let mut any_cpu = false;
    if let Some(c) = limits.get("cpu") {
        let milli =
            crate::model::quantity::parse_milli(&c.0).map_err(|e| invalid("cpu limit", e.0))?;
        let quota = i64::try_from(milli.saturating_mul(100).max(1000)).unwrap_or(i64::MAX);
        cpu = cpu.quota(quota).period(100_000u64);
        any_cpu = true;
    }
    if let Some(c) = requests.get("cpu").or(limits.get("cpu")) {
        let milli =
            crate::model::quantity::parse_milli(&c.0).map_err(|e| invalid("cpu request", e.0))?;
        cpu = cpu.shares((milli.saturating_mul(1024) / 1000).clamp(2, 262_144));
        any_cpu = true;
    }
    if any_cpu {
        builder = builder.cpu(cpu.build().map_err(|e| invalid("cpu", e.to_string()))?);
    }
    builder
        .build()
        .map_err(|e| invalid("resources", e.to_string()))
}

/// The container's OCI runtime spec (`rootfs/` relative to the bundle).
pub fn build_spec(input: &BundleInput) -> Result<Spec, RuntimeError> {
    let pod_name = input.pod.metadata.name.clone().unwrap_or_default();
    let namespace = input.pod.metadata.namespace.clone().unwrap_or_default();
    let args = process_args(input.container, input.image)?;
    let env = process_env(input.env, input.image, &pod_name);
    let (uid, gid) = process_user(input.pod, input.container, input.image)?;
    let mut settings =
        security::resolve(input.pod, input.container).map_err(|r| invalid(&r.field, r.detail))?;
    if let Some(bound) = input.limits.capability_bound {
        let removed = security::within_bound(&mut settings.capabilities, bound);
        let added = input
            .container
            .security_context
            .as_ref()
            .and_then(|s| s.capabilities.as_ref())
            .and_then(|c| c.add.as_ref());
        if let Some(name) = added
            .into_iter()
            .flatten()
            .find(|n| security::capability_name(n).is_some_and(|c| removed.iter().any(|r| r == c)))
        {
            return Err(invalid(
                "capabilities.add",
                format!("{name} is not in this node's capability bounding set"),
            ));
        }
    }
    if settings.privileged && input.limits.deny_privileged {
        return Err(RuntimeError::Config(security::privileged_denied_message(
            &input.container.name,
        )));
    }
    if settings.run_as_non_root && uid == 0 {
        return Err(RuntimeError::Config(security::non_root_message(
            input.pod,
            &input.container.name,
        )));
    }
    let cwd = input
        .container
        .working_dir
        .clone()
        .filter(|w| !w.is_empty())
        .or_else(|| input.image.working_dir.clone().filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".into());
    // Defence in depth: admission refuses these too, but a spec may predate the rule.
    if let Some(problem) = security::path_problem(&cwd, security::PathUse::WorkingDir) {
        return Err(invalid("workingDir", format!("{cwd:?} {problem}")));
    }
    for vm in input.container.volume_mounts.iter().flatten() {
        let path = &vm.mount_path;
        if let Some(problem) = security::path_problem(path, security::PathUse::MountDestination) {
            return Err(invalid("mountPath", format!("{path:?} {problem}")));
        }
    }
    if let Some(a) = args.iter().chain(env.iter()).find(|a| a.contains('\0')) {
        return Err(invalid(
            "container command or env",
            format!("{a:?} contains a NUL byte"),
        ));
    }
    let caps: oci_spec::runtime::Capabilities = settings
        .capabilities
        .iter()
        .filter_map(|c| security::capability(c))
        .collect();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(oci_spec::runtime::Capabilities::new())
        .ambient(oci_spec::runtime::Capabilities::new())
        .build()
        .map_err(|e| invalid("capabilities", e.to_string()))?;
    let process = ProcessBuilder::default()
        .terminal(false)
        .args(args)
        .env(env)
        .cwd(cwd)
        .user(
            UserBuilder::default()
                .uid(uid)
                .gid(gid)
                .additional_gids(settings.additional_gids.clone())
                .build()
                .map_err(|e| invalid("user", e.to_string()))?,
        )
        .capabilities(capabilities)
        .no_new_privileges(settings.no_new_privileges)
        // No rlimits: the container inherits the agent's (a fixed value can exceed the host's
        // hard limit, which runc refuses).
        .build()
        .map_err(|e| invalid("process", e.to_string()))?;
    let ns = |typ: LinuxNamespaceType, path: Option<String>| {
        let b = LinuxNamespaceBuilder::default().typ(typ);
        match path {
            Some(p) => b.path(p).build(),
            None => b.build(),
        }
        .map_err(|e| invalid("namespace", e.to_string()))
    };
    let sandbox_ns = |name: &str| Some(format!("/proc/{}/ns/{name}", input.sandbox_pid));
    let namespaces = vec![
        ns(LinuxNamespaceType::Pid, None)?,
        ns(LinuxNamespaceType::Mount, None)?,
        ns(LinuxNamespaceType::Network, sandbox_ns("net"))?,
        ns(LinuxNamespaceType::Ipc, sandbox_ns("ipc"))?,
        ns(LinuxNamespaceType::Uts, sandbox_ns("uts"))?,
    ];
    let paths = |list: &[&str]| -> Vec<String> {
        if settings.masked_paths {
            list.iter().map(|s| s.to_string()).collect()
        } else {
            Vec::new()
        }
    };
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(PathBuf::from(&input.cgroups_path))
        .resources(resources(input.container, input.limits)?)
        .masked_paths(paths(MASKED_PATHS))
        .readonly_paths(paths(READONLY_PATHS));
    if settings.seccomp == Some(security::Seccomp::RuntimeDefault) {
        linux = linux.seccomp(seccomp::default_profile(&settings.capabilities)?);
    }
    let linux = linux.build().map_err(|e| invalid("linux", e.to_string()))?;
    let readonly = settings.readonly_root;
    let mut annotations = std::collections::HashMap::new();
    annotations.insert("io.kubernetes.pod.name".to_string(), pod_name);
    annotations.insert("io.kubernetes.pod.namespace".to_string(), namespace);
    annotations.insert(
        "io.kubernetes.container.name".to_string(),
        input.container.name.clone(),
    );
    SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path("rootfs")
                .readonly(readonly)
                .build()
                .map_err(|e| invalid("root", e.to_string()))?,
        )
        .process(process)
        .mounts(mounts(input)?)
        .linux(linux)
        .annotations(annotations)
        .build()
        .map(|mut spec| {
            // The UTS namespace (and its hostname) is the sandbox's.
            spec.set_hostname(None);
            spec
        })
        .map_err(|e| invalid("spec", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(json: serde_json::Value) -> Container {
        serde_json::from_value(json).unwrap()
    }

    fn image() -> ImageInfo {
        ImageInfo {
            reference: "img:1".into(),
            entrypoint: vec!["/entry".into()],
            cmd: vec!["default".into()],
            env: vec!["A=image".into(), "B=image".into()],
            ..Default::default()
        }
    }

    #[test]
    fn kubernetes_command_rules() {
        let img = image();
        let c = container(serde_json::json!({"name": "c"}));
        assert_eq!(process_args(&c, &img).unwrap(), ["/entry", "default"]);
        let c = container(serde_json::json!({"name": "c", "args": ["x"]}));
        assert_eq!(process_args(&c, &img).unwrap(), ["/entry", "x"]);
        let c = container(serde_json::json!({"name": "c", "command": ["sh"]}));
        assert_eq!(process_args(&c, &img).unwrap(), ["sh"]);
        let c = container(serde_json::json!({"name": "c", "command": ["sh"], "args": ["-c", "x"]}));
        assert_eq!(process_args(&c, &img).unwrap(), ["sh", "-c", "x"]);
        let empty = ImageInfo::default();
        let c = container(serde_json::json!({"name": "c"}));
        assert!(process_args(&c, &empty).is_err());
    }

    #[test]
    fn env_overrides_and_expansion() {
        let c = container(serde_json::json!({"name": "c", "env": [
            {"name": "B", "value": "spec"}, {"name": "C", "value": "$(B)-$(A)-$$(A)-$(NOPE)"}
        ]}));
        let env = process_env(&literal_env(&c), &image(), "web-1");
        assert_eq!(
            env,
            [
                DEFAULT_PATH,
                "HOSTNAME=web-1",
                "A=image",
                "B=spec",
                "C=spec-image-$(A)-$(NOPE)"
            ]
        );
    }

    #[test]
    fn user_from_image_or_security_context() {
        let pod: Pod = serde_json::from_value(
            serde_json::json!({"metadata": {"name": "p"}, "spec": {"containers": []}}),
        )
        .unwrap();
        let c = container(serde_json::json!({"name": "c"}));
        let mut img = image();
        assert_eq!(process_user(&pod, &c, &img).unwrap(), (0, 0));
        img.user = Some("1000:50".into());
        assert_eq!(process_user(&pod, &c, &img).unwrap(), (1000, 50));
        img.user = Some("33".into());
        assert_eq!(process_user(&pod, &c, &img).unwrap(), (33, 33));
        let c2 = container(serde_json::json!({"name": "c", "securityContext": {"runAsUser": 7}}));
        assert_eq!(process_user(&pod, &c2, &img).unwrap(), (7, 33));
        img.user = Some("nobody".into());
        assert!(process_user(&pod, &c, &img).is_err());
    }

    #[test]
    fn run_as_non_root_refuses_root_users() {
        let pod = |sc: serde_json::Value| -> Pod {
            serde_json::from_value(
                serde_json::json!({"metadata": {"name": "p", "namespace": "d", "uid": "u"},
                "spec": {"containers": [], "securityContext": sc}}),
            )
            .unwrap()
        };
        let c = container(serde_json::json!({"name": "c"}));
        let mut img = image();
        assert_eq!(
            non_root_violation(&pod(serde_json::json!({})), &c, &img),
            None
        );
        let strict = pod(serde_json::json!({"runAsNonRoot": true}));
        let m = non_root_violation(&strict, &c, &img).unwrap();
        assert!(
            m.starts_with("container has runAsNonRoot and image will run as root"),
            "{m}"
        );
        img.user = Some("1000".into());
        assert_eq!(non_root_violation(&strict, &c, &img), None);
        let as_root =
            container(serde_json::json!({"name": "c", "securityContext": {"runAsUser": 0}}));
        assert!(non_root_violation(&strict, &as_root, &img).is_some());
        img.user = Some("nobody".into());
        assert!(non_root_violation(&strict, &c, &img)
            .unwrap()
            .contains("cannot be verified"));
        img.user = None;
        let spec = build_spec(&BundleInput {
            pod: &strict,
            container: &as_root,
            image: &img,
            pod_dir: Path::new("/d"),
            sandbox_pid: 1,
            cgroups_path: "/x".into(),
            limits: NodeLimits::default(),
            env: &[],
            volumes: &BTreeMap::new(),
        });
        assert!(matches!(spec, Err(RuntimeError::Config(_))));
    }

    #[test]
    fn a_node_that_denies_privileged_containers_refuses_them() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "d"}, "spec": {"containers": []}}))
        .unwrap();
        let privileged =
            container(serde_json::json!({"name": "c", "securityContext": {"privileged": true}}));
        let plain = container(serde_json::json!({"name": "c"}));
        let img = image();
        let build = |c: &Container, deny: bool| {
            build_spec(&BundleInput {
                pod: &pod,
                container: c,
                image: &img,
                pod_dir: Path::new("/d"),
                sandbox_pid: 1,
                cgroups_path: "/x".into(),
                limits: NodeLimits {
                    deny_privileged: deny,
                    ..NodeLimits::default()
                },
                env: &[],
                volumes: &BTreeMap::new(),
            })
        };
        match build(&privileged, true) {
            Err(RuntimeError::Config(m)) => assert_eq!(
                m,
                "container c is privileged and this node refuses privileged containers (shoal agent --deny-privileged)"
            ),
            other => panic!("{other:?}"),
        }
        assert!(build(&privileged, false).is_ok());
        assert!(build(&plain, true).is_ok());
    }

    #[test]
    fn spec_joins_the_sandbox_and_mounts_volumes() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {"containers": [], "volumes": [{"name": "data", "emptyDir": {}}]}
        }))
        .unwrap();
        let c = container(serde_json::json!({"name": "c", "command": ["sh"],
            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            "resources": {"limits": {"memory": "64Mi", "cpu": "500m"}}}));
        let img = image();
        let data_volume = BTreeMap::from([(
            "data".to_string(),
            PreparedVolume {
                source: "/d/pods/b1/volumes/data".into(),
                read_only: false,
            },
        )]);
        let spec = build_spec(&BundleInput {
            pod: &pod,
            container: &c,
            image: &img,
            pod_dir: Path::new("/d/pods/b1"),
            sandbox_pid: 42,
            cgroups_path: "/shoal/n1/pod-b1/c".into(),
            limits: NodeLimits::default(),
            env: &literal_env(&c),
            volumes: &data_volume,
        })
        .unwrap();
        let json = serde_json::to_value(&spec).unwrap();
        let nss = json["linux"]["namespaces"].as_array().unwrap();
        assert!(nss
            .iter()
            .any(|n| n["type"] == "network" && n["path"] == "/proc/42/ns/net"));
        assert!(nss
            .iter()
            .any(|n| n["type"] == "pid" && n.get("path").is_none()));
        assert!(
            json.get("hostname").is_none(),
            "the UTS namespace is the sandbox's"
        );
        let mounts = json["mounts"].as_array().unwrap();
        assert!(mounts
            .iter()
            .any(|m| m["destination"] == "/data" && m["source"] == "/d/pods/b1/volumes/data"));
        assert!(mounts
            .iter()
            .any(|m| m["destination"] == "/dev/shm" && m["source"] == "/d/pods/b1/shm"));
        assert_eq!(json["linux"]["cgroupsPath"], "/shoal/n1/pod-b1/c");
        assert_eq!(
            json["linux"]["resources"]["memory"]["limit"],
            64 * 1024 * 1024
        );
        assert_eq!(json["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(json["process"]["noNewPrivileges"], true);
        assert!(!json["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "CAP_SYS_ADMIN"));

        let bad = container(serde_json::json!({"name": "c", "command": ["sh"],
            "volumeMounts": [{"name": "nope", "mountPath": "/x"}]}));
        let err = build_spec(&BundleInput {
            pod: &pod,
            container: &bad,
            image: &img,
            pod_dir: Path::new("/d"),
            sandbox_pid: 1,
            cgroups_path: "/x".into(),
            limits: NodeLimits::default(),
            env: &[],
            volumes: &data_volume,
        });
        assert!(err.unwrap_err().to_string().contains("nope"));
    }
}
