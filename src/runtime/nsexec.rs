//! Exec into a running container by joining it directly — the exec probes' and hooks' path.
//! `runc exec` starts a Go runtime, re-reads the container's state, and re-executes itself to
//! join the namespaces: 17.7 ms of CPU per call here, so 100 pods with a 1 s exec probe took
//! 1.5 cores (docs/benchmarks.md, "Probes"). This path does what `runc exec` does for the
//! containers shoal makes: a child cloned sharing the agent's memory until it execs (as
//! `posix_spawn` does: no copy of the agent's page tables, no copy-on-write faults after) and
//! born in the container's pid namespace joins the container's cgroups, enters its other
//! namespaces, its root and working directory, takes its user, groups, capability sets,
//! `no_new_privs` and seccomp filter (compiled by libseccomp from the same profile, as runc
//! compiles it), and execs with its environment.
//!
//! The functional core is [`plan`]: from runc's `state.json` and the bundle's `config.json` it
//! decides what to join, or refuses ([`Refused`]) a container this path cannot reproduce
//! exactly (an AppArmor or SELinux label, a user namespace, a seccomp listener, ...):
//! the caller then uses `runc exec`, so a probe never runs with less confinement than the
//! container. [`spawn`] is the shell: it opens what the plan names and starts the process.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::model::security_context::ALL_CAPABILITIES;

/// What joining one container takes; made by [`plan`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Join {
    /// The container's init process (runc's `init_process_pid`) and its start time in clock
    /// ticks since boot (`/proc/<pid>/stat` field 22), which tells a reused pid apart.
    pub pid: i32,
    pub start: u64,
    /// Directories of the container's cgroups (one per v1 hierarchy, or the v2 one).
    pub cgroups: BTreeSet<PathBuf>,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub umask: Option<u32>,
    pub caps: Caps,
    pub no_new_privs: bool,
    /// `KEY=value` entries.
    pub env: Vec<String>,
    pub cwd: String,
    /// `(resource, soft, hard)`, set as runc exec sets them.
    pub rlimits: Vec<(u32, u64, u64)>,
    /// The container's seccomp profile, loaded last (or before the user changes when
    /// `no_new_privs` is off, as runc does: loading then needs `CAP_SYS_ADMIN`).
    pub seccomp: Option<Seccomp>,
}

/// Capability sets as masks (bit n: capability n, the kernel's numbering).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Caps {
    pub bounding: u64,
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
}

/// Why a container is left to `runc exec`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("exec through runc: {0}")]
pub struct Refused(pub String);

fn refused(why: impl Into<String>) -> Refused {
    Refused(why.into())
}

#[derive(Deserialize)]
struct State {
    init_process_pid: i32,
    init_process_start: u64,
    #[serde(default)]
    cgroup_paths: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    rootless: bool,
}

#[derive(Deserialize)]
struct Config {
    process: Process,
    #[serde(default)]
    linux: Linux,
}

/// Every field of an OCI `process`: one this path does not reproduce must be absent or empty
/// (checked in [`plan`]), and a field it does not know refuses the container.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Process {
    #[serde(default)]
    terminal: bool,
    #[serde(default)]
    console_size: Option<IgnoredAny>,
    user: User,
    #[serde(default, rename = "args")]
    _args: Option<IgnoredAny>,
    #[serde(default, rename = "commandLine")]
    _command_line: Option<IgnoredAny>,
    #[serde(default)]
    env: Vec<String>,
    cwd: String,
    #[serde(default)]
    capabilities: Option<CapNames>,
    #[serde(default)]
    rlimits: Option<Vec<Rlimit>>,
    #[serde(default)]
    no_new_privileges: bool,
    #[serde(default)]
    apparmor_profile: Option<String>,
    #[serde(default)]
    oom_score_adj: Option<i32>,
    #[serde(default)]
    selinux_label: Option<String>,
    #[serde(default)]
    io_priority: Option<IgnoredAny>,
    #[serde(default)]
    scheduler: Option<IgnoredAny>,
    #[serde(default, rename = "execCPUAffinity")]
    exec_cpu_affinity: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rlimit {
    #[serde(rename = "type")]
    kind: String,
    hard: u64,
    soft: u64,
}

/// `RLIMIT_*` names in the kernel's numbering (asm-generic, x86 and arm64 alike).
const RLIMITS: &[&str] = &[
    "RLIMIT_CPU",
    "RLIMIT_FSIZE",
    "RLIMIT_DATA",
    "RLIMIT_STACK",
    "RLIMIT_CORE",
    "RLIMIT_RSS",
    "RLIMIT_NPROC",
    "RLIMIT_NOFILE",
    "RLIMIT_MEMLOCK",
    "RLIMIT_AS",
    "RLIMIT_LOCKS",
    "RLIMIT_SIGPENDING",
    "RLIMIT_MSGQUEUE",
    "RLIMIT_NICE",
    "RLIMIT_RTPRIO",
    "RLIMIT_RTTIME",
];

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct User {
    #[serde(default)]
    uid: u32,
    #[serde(default)]
    gid: u32,
    #[serde(default)]
    umask: Option<u32>,
    #[serde(default)]
    additional_gids: Vec<u32>,
    #[serde(default, rename = "username")]
    _username: Option<IgnoredAny>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct CapNames {
    bounding: Vec<String>,
    effective: Vec<String>,
    inheritable: Vec<String>,
    permitted: Vec<String>,
    ambient: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Linux {
    namespaces: Vec<Namespace>,
    seccomp: Option<Seccomp>,
    personality: Option<IgnoredAny>,
}

/// An OCI seccomp profile (`linux.seccomp`), the parts runc reads. Compiled by [`compile`]
/// with libseccomp, as runc compiles it.
#[derive(Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Seccomp {
    pub default_action: String,
    #[serde(default)]
    pub default_errno_ret: Option<u32>,
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default)]
    pub flags: Vec<String>,
    #[serde(default)]
    pub listener_path: Option<String>,
    #[serde(default)]
    pub listener_metadata: Option<String>,
    #[serde(default)]
    pub syscalls: Vec<SeccompRule>,
}

#[derive(Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeccompRule {
    pub names: Vec<String>,
    pub action: String,
    #[serde(default)]
    pub errno_ret: Option<u32>,
    #[serde(default)]
    pub args: Vec<SeccompArg>,
}

#[derive(Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeccompArg {
    pub index: u32,
    pub value: u64,
    #[serde(default)]
    pub value_two: u64,
    pub op: String,
}

#[derive(Deserialize)]
struct Namespace {
    #[serde(rename = "type")]
    kind: String,
}

fn mask(names: &[String]) -> Result<u64, Refused> {
    names.iter().try_fold(0u64, |m, name| {
        let n = ALL_CAPABILITIES
            .iter()
            .position(|c| c == name)
            .ok_or_else(|| refused(format!("unknown capability {name}")))?;
        Ok(m | (1u64 << n))
    })
}

/// The container's bundle directory, from runc's `state.json` (`config.labels`:
/// `bundle=<dir>`).
pub fn bundle_of(state: &[u8]) -> Result<PathBuf, Refused> {
    #[derive(Deserialize)]
    struct Labels {
        config: LabelConfig,
    }
    #[derive(Deserialize)]
    struct LabelConfig {
        #[serde(default)]
        labels: Vec<String>,
    }
    let labels: Labels =
        serde_json::from_slice(state).map_err(|e| refused(format!("runc state: {e}")))?;
    labels
        .config
        .labels
        .iter()
        .find_map(|l| l.strip_prefix("bundle="))
        .map(PathBuf::from)
        .ok_or_else(|| refused("runc state names no bundle"))
}

/// Pure: what joining the container of runc's `state` (its `state.json`) with the bundle's
/// `config` (`config.json`) takes, or why this path must not be used for it.
pub fn plan(state: &[u8], config: &[u8]) -> Result<Join, Refused> {
    let state: State =
        serde_json::from_slice(state).map_err(|e| refused(format!("runc state: {e}")))?;
    let config: Config =
        serde_json::from_slice(config).map_err(|e| refused(format!("config.json: {e}")))?;
    let (p, linux) = (config.process, config.linux);
    let unsupported = [
        (
            "a seccomp notify listener or filter flags",
            linux.seccomp.as_ref().is_some_and(|s| {
                s.listener_path.is_some() || s.listener_metadata.is_some() || !s.flags.is_empty()
            }),
        ),
        ("a personality", linux.personality.is_some()),
        ("a terminal", p.terminal || p.console_size.is_some()),
        (
            "an AppArmor profile",
            p.apparmor_profile.as_ref().is_some_and(|s| !s.is_empty()),
        ),
        (
            "an SELinux label",
            p.selinux_label.as_ref().is_some_and(|s| !s.is_empty()),
        ),
        ("oomScoreAdj", p.oom_score_adj.is_some()),
        ("ioPriority", p.io_priority.is_some()),
        ("a scheduler", p.scheduler.is_some()),
        ("execCPUAffinity", p.exec_cpu_affinity.is_some()),
        ("a rootless runc", state.rootless),
        (
            "a user namespace",
            linux.namespaces.iter().any(|n| n.kind == "user"),
        ),
    ];
    if let Some((what, _)) = unsupported.iter().find(|(_, has)| *has) {
        return Err(refused(format!("the container has {what}")));
    }
    if state.init_process_pid <= 0 {
        return Err(refused("no init process"));
    }
    let caps = p.capabilities.unwrap_or_default();
    let caps = Caps {
        bounding: mask(&caps.bounding)?,
        effective: mask(&caps.effective)?,
        permitted: mask(&caps.permitted)?,
        inheritable: mask(&caps.inheritable)?,
        ambient: mask(&caps.ambient)?,
    };
    let rlimits = p
        .rlimits
        .unwrap_or_default()
        .into_iter()
        .map(|r| {
            let n = RLIMITS
                .iter()
                .position(|k| *k == r.kind)
                .ok_or_else(|| refused(format!("unknown rlimit {}", r.kind)))?;
            Ok((n as u32, r.soft, r.hard))
        })
        .collect::<Result<Vec<_>, Refused>>()?;
    if state.cgroup_paths.is_empty() {
        return Err(refused("runc state names no cgroup"));
    }
    let cgroups = state
        .cgroup_paths
        .values()
        .filter(|p| !p.is_empty())
        .map(|p| {
            let path = PathBuf::from(p);
            match path.is_absolute() && !p.contains("..") {
                true => Ok(path),
                false => Err(refused(format!("cgroup path {p} is not absolute"))),
            }
        })
        .collect::<Result<BTreeSet<_>, _>>()?;
    if !p.cwd.starts_with('/') {
        return Err(refused(format!("cwd {} is not absolute", p.cwd)));
    }
    if p.env.iter().any(|e| !e.contains('=')) {
        return Err(refused("an env entry without '='"));
    }
    Ok(Join {
        pid: state.init_process_pid,
        start: state.init_process_start,
        cgroups,
        uid: p.user.uid,
        gid: p.user.gid,
        groups: p.user.additional_gids,
        umask: p.user.umask,
        caps,
        no_new_privs: p.no_new_privileges,
        env: p.env,
        cwd: p.cwd,
        seccomp: linux.seccomp,
        rlimits,
    })
}

/// The home directory of `uid` in an `/etc/passwd` text (`name:pw:uid:gid:gecos:home:shell`).
pub fn home_of(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() >= 7 && fields[2].parse() == Ok(uid) && !fields[5].is_empty())
            .then(|| fields[5].to_string())
    })
}

/// `HOME` as runc exec sets it when the container's env has none: the user's entry in the
/// container's `/etc/passwd` (opened inside its root: a symlink cannot lead out), else `/`.
fn home(root: &OwnedFd, uid: u32) -> String {
    use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
    use std::io::Read;
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let mut text = String::new();
    let read = openat2(root, "etc/passwd", how).map(std::fs::File::from);
    if let Ok(f) = read {
        let _ = f.take(1 << 20).read_to_string(&mut text);
    }
    home_of(&text, uid).unwrap_or_else(|| "/".to_string())
}

/// Reads the [`Join`] of runc container `id` under `runc_root` (its `state.json` and its
/// bundle's `config.json`, each bounded). `Err`: use `runc exec`.
pub fn read(runc_root: &Path, id: &str) -> Result<Join, Refused> {
    if id.is_empty() || id.contains('/') || id.starts_with('.') {
        return Err(refused(format!("bad container id {id:?}")));
    }
    let state = read_small(&runc_root.join(id).join("state.json"))?;
    let config = read_small(&bundle_of(&state)?.join("config.json"))?;
    plan(&state, &config)
}

fn read_small(path: &Path) -> Result<Vec<u8>, Refused> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(super::MAX_STATE_FILE).read_to_end(&mut bytes))
        .map_err(|e| refused(format!("{}: {e}", path.display())))?;
    Ok(bytes)
}

/// libseccomp's errno when a rule names none (`SCMP_ACT_ERRNO` without `errnoRet`), as runc.
const EPERM: u32 = 1;

/// Compiles `profile` to classic BPF with libseccomp, as runc 1.1 does: the listed
/// architectures beside the native one, names libseccomp does not know skipped, rules whose
/// action is the default skipped, a rule whose conditions test one argument twice split into
/// one rule per condition (libseccomp cannot AND them; runc does the same), masked-equal
/// comparisons as `(value, valueTwo)`. Shell (it calls libseccomp); cached by profile.
pub fn compile(profile: &Seccomp) -> io::Result<Arc<Vec<nix::libc::sock_filter>>> {
    static CACHE: Mutex<BTreeMap<Seccomp, Arc<Vec<nix::libc::sock_filter>>>> =
        Mutex::new(BTreeMap::new());
    let cached = CACHE
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(profile)
        .cloned();
    if let Some(filter) = cached {
        return Ok(filter);
    }
    let filter = Arc::new(compile_uncached(profile)?);
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if cache.len() >= 64 {
        cache.clear();
    }
    cache.insert(profile.clone(), filter.clone());
    Ok(filter)
}

fn compile_uncached(profile: &Seccomp) -> io::Result<Vec<nix::libc::sock_filter>> {
    use libseccomp::ScmpSyscall;
    use libseccomp::{ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext};
    let bad = |e: libseccomp::error::SeccompError| io::Error::other(format!("seccomp: {e}"));
    let action = |name: &str, errno: Option<u32>| -> io::Result<ScmpAction> {
        Ok(match name {
            "SCMP_ACT_ALLOW" => ScmpAction::Allow,
            "SCMP_ACT_ERRNO" => ScmpAction::Errno(errno.unwrap_or(EPERM) as i32),
            "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => ScmpAction::KillThread,
            "SCMP_ACT_KILL_PROCESS" => ScmpAction::KillProcess,
            "SCMP_ACT_TRAP" => ScmpAction::Trap,
            "SCMP_ACT_LOG" => ScmpAction::Log,
            other => {
                return Err(io::Error::other(format!(
                    "seccomp action {other} unsupported"
                )))
            }
        })
    };
    let default = action(&profile.default_action, profile.default_errno_ret)?;
    let mut ctx = ScmpFilterContext::new(default).map_err(bad)?;
    for arch in &profile.architectures {
        ctx.add_arch(arch.parse::<ScmpArch>().map_err(bad)?)
            .map_err(bad)?;
    }
    for rule in &profile.syscalls {
        let act = action(&rule.action, rule.errno_ret)?;
        if act == default {
            continue;
        }
        let conds = rule
            .args
            .iter()
            .map(|a| {
                Ok(match a.op.as_str() {
                    "SCMP_CMP_MASKED_EQ" => ScmpArgCompare::new(
                        a.index,
                        ScmpCompareOp::MaskedEqual(a.value),
                        a.value_two,
                    ),
                    op => ScmpArgCompare::new(a.index, op.parse().map_err(bad)?, a.value),
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
        let indexes: BTreeSet<u32> = rule.args.iter().map(|a| a.index).collect();
        let split = indexes.len() < rule.args.len();
        for name in &rule.names {
            let Ok(call) = ScmpSyscall::from_name(name) else {
                continue;
            };
            match (conds.is_empty(), split) {
                (true, _) => ctx.add_rule(act, call).map(drop),
                (false, false) => ctx.add_rule_conditional(act, call, &conds).map(drop),
                (false, true) => conds
                    .iter()
                    .try_for_each(|c| ctx.add_rule_conditional(act, call, &[*c]).map(drop)),
            }
            .map_err(bad)?;
        }
    }
    let memfd = nix::sys::memfd::memfd_create(c"seccomp", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .map_err(io::Error::from)?;
    ctx.export_bpf(&memfd).map_err(bad)?;
    let mut file = std::fs::File::from(memfd);
    let mut bytes = Vec::new();
    {
        use std::io::{Read, Seek};
        file.seek(io::SeekFrom::Start(0))?;
        file.read_to_end(&mut bytes)?;
    }
    if bytes.is_empty() || bytes.len() % 8 != 0 || bytes.len() / 8 > usize::from(u16::MAX) {
        return Err(io::Error::other(format!(
            "seccomp: a BPF program of {} bytes",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|c| nix::libc::sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect())
}

/// Namespaces the child joins, in order; the mount namespace last (after it, host paths mean
/// nothing). The pid namespace is not among them: the spawner thread enters it (for its
/// children) before the clone, so the child is born inside.
const NAMESPACES: &[(&str, i32)] = &[
    ("ipc", nix::libc::CLONE_NEWIPC),
    ("uts", nix::libc::CLONE_NEWUTS),
    ("net", nix::libc::CLONE_NEWNET),
    ("cgroup", nix::libc::CLONE_NEWCGROUP),
    ("mnt", nix::libc::CLONE_NEWNS),
];

/// `PATH` when the container's environment has none (containerd's and CRI-O's default).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What joining one container takes that does not change while its init process lives:
/// opened and encoded once ([`attach`]) and shared by every exec into it, so a probe costs no
/// path walks under `/proc` and the cgroup file systems, no re-reading of runc's files.
/// Holds the container's namespaces, root and cgroups open (about 20 descriptors).
pub struct Attached {
    /// A pidfd of the container's init process: readable once it has exited.
    init: OwnedFd,
    /// v1's `tasks` of each v1 hierarchy: moving the writing thread alone skips the kernel's
    /// global threadgroup lock (the child is single-threaded, so the whole process moves).
    cgroup_tasks: Vec<OwnedFd>,
    /// The v2 cgroup: its directory (the child is cloned straight into it,
    /// `CLONE_INTO_CGROUP`, without a migration under the global lock) and its `cgroup.procs`
    /// (written by the child where `clone3` is refused).
    cgroup_v2: Option<(OwnedFd, OwnedFd)>,
    /// The container's pid namespace, when it is not the agent's.
    pid_ns: Option<OwnedFd>,
    namespaces: Vec<(OwnedFd, i32)>,
    root: OwnedFd,
    cwd: CString,
    uid: u32,
    gid: u32,
    groups: Vec<nix::libc::gid_t>,
    umask: Option<u32>,
    caps: Caps,
    last_cap: u32,
    no_new_privs: bool,
    rlimits: Vec<(u32, u64, u64)>,
    seccomp: Option<Arc<Vec<nix::libc::sock_filter>>>,
    envp: Vec<CString>,
    /// The container's `PATH`, if its environment sets one.
    path: Option<String>,
}

impl Attached {
    /// Whether the container's init process has exited (its namespaces may be gone or
    /// reused: attach again).
    pub fn exited(&self) -> bool {
        let mut poll = nix::libc::pollfd {
            fd: self.init.as_raw_fd(),
            events: nix::libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no wait.
        let n = unsafe { nix::libc::poll(&mut poll, 1, 0) };
        n != 0
    }
}

/// Everything the child needs, opened and encoded before the clone: the child shares the
/// agent's memory until it execs, so it only makes system calls on this (no allocation, no
/// locks, no glibc wrapper that signals the agent's other threads). The container's part is
/// shared ([`Attached`], reached through `Deref`); the call's own part is here.
struct Prepared {
    attached: Arc<Attached>,
    /// Where to look for the program, in order (its `PATH` expanded).
    candidates: Vec<CString>,
    argv: Vec<CString>,
    /// stdin (`/dev/null`), stdout and stderr (the write ends of two pipes).
    stdio: [OwnedFd; 3],
}

impl std::ops::Deref for Prepared {
    type Target = Attached;
    fn deref(&self) -> &Attached {
        &self.attached
    }
}

/// Opens `path` for reading, or write-only (close-on-exec, as std opens every file).
fn open(path: &Path, write: bool) -> io::Result<OwnedFd> {
    std::fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .open(path)
        .map(OwnedFd::from)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// Whether process `proc` (`/proc/<pid>`) is in the agent's own namespace `name`.
fn same_namespace(proc: &Path, name: &str) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let theirs = std::fs::metadata(proc.join("ns").join(name))?;
    let ours = std::fs::metadata(Path::new("/proc/self/ns").join(name))?;
    Ok((theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()))
}

/// The paths `program` is tried at: itself when it names a path, else each directory of
/// `path` (the container's `PATH`), as `execvp` and runc's lookup do.
pub fn candidates(program: &str, path: Option<&str>) -> Vec<String> {
    if program.contains('/') {
        return vec![program.to_string()];
    }
    path.unwrap_or(DEFAULT_PATH)
        .split(':')
        .map(|dir| match dir {
            "" => program.to_string(),
            dir => format!("{}/{program}", dir.trim_end_matches('/')),
        })
        .collect()
}

fn cstring(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte"))
}

/// A pipe whose read end is the agent's (non-blocking) and whose write end is the child's.
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    nix::fcntl::fcntl(
        &read,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    Ok((read, write))
}

/// A pidfd of process `pid`.
fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a pid and flags; a non-negative result is a new fd we own.
    match unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, 0) } {
        -1 => Err(io::Error::last_os_error()),
        fd => Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) }),
    }
}

/// Opens what joining the container of `join` takes (see [`Attached`]).
pub fn attach(join: &Join) -> io::Result<Arc<Attached>> {
    let proc = PathBuf::from(format!("/proc/{}", join.pid));
    let init = pidfd_open(join.pid)?;
    if !same_namespace(&proc, "user")? {
        return Err(io::Error::other(
            "the container is in another user namespace",
        ));
    }
    let mut namespaces = Vec::new();
    for (name, flag) in NAMESPACES {
        if !same_namespace(&proc, name)? {
            namespaces.push((open(&proc.join("ns").join(name), false)?, *flag));
        }
    }
    let pid_ns = match same_namespace(&proc, "pid")? {
        true => None,
        false => Some(open(&proc.join("ns/pid"), false)?),
    };
    let root = open(&proc.join("root"), false)?;
    let (mut cgroup_tasks, mut cgroup_v2) = (Vec::new(), None);
    for dir in &join.cgroups {
        match dir.join("tasks") {
            v1 if v1.exists() => cgroup_tasks.push(open(&v1, true)?),
            _ if cgroup_v2.is_none() => {
                cgroup_v2 = Some((open(dir, false)?, open(&dir.join("cgroup.procs"), true)?))
            }
            _ => {
                return Err(io::Error::other(format!(
                    "two cgroup v2 directories ({})",
                    dir.display()
                )))
            }
        }
    }
    // Opened first, checked after: a pid reused in between shows another start time.
    let init_record = super::ProcessRecord {
        pid: join.pid,
        start_time: join.start,
    };
    if !init_record.alive() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "the container's init process is gone",
        ));
    }
    let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40u32);
    let mut env = join.env.clone();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", home(&root, join.uid)));
    }
    let path = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .map(str::to_string);
    Ok(Arc::new(Attached {
        init,
        cgroup_tasks,
        cgroup_v2,
        pid_ns,
        namespaces,
        root,
        cwd: cstring(&join.cwd)?,
        uid: join.uid,
        gid: join.gid,
        groups: join.groups.clone(),
        umask: join.umask,
        caps: join.caps,
        last_cap,
        no_new_privs: join.no_new_privs,
        rlimits: join.rlimits.clone(),
        seccomp: join.seccomp.as_ref().map(compile).transpose()?,
        envp: env.iter().map(|e| cstring(e)).collect::<io::Result<_>>()?,
        path,
    }))
}

/// The attached containers, by runc root and id: one [`Attached`] per live container.
static ATTACHED: Mutex<BTreeMap<(PathBuf, String), Arc<Attached>>> = Mutex::new(BTreeMap::new());
/// Most containers kept attached: at most 512, and their descriptors (about 20 each) at
/// most a quarter of the agent's soft limit of open files (which containers inherit, so the
/// agent does not raise it); past it, the first by id are dropped (they attach per call).
fn max_attached() -> usize {
    static MAX: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *MAX.get_or_init(|| {
        let mut limit = nix::libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit fills the struct it is given.
        let soft = match unsafe { nix::libc::getrlimit(nix::libc::RLIMIT_NOFILE, &mut limit) } {
            0 => limit.rlim_cur,
            _ => 1024,
        };
        (soft / 4 / 20).min(512) as usize
    })
}

/// The [`Attached`] of runc container `id`: the one kept from an earlier call while the
/// container's init lives, else read ([`read`]) and attached anew. `Err(Ok(refused))`: this
/// path cannot join it (use `runc exec`); `Err(Err(e))`: opening it failed.
pub fn attached(runc_root: &Path, id: &str) -> Result<Arc<Attached>, Result<Refused, io::Error>> {
    let key = (runc_root.to_path_buf(), id.to_string());
    let kept = ATTACHED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&key)
        .cloned();
    if let Some(a) = kept.filter(|a| !a.exited()) {
        return Ok(a);
    }
    let join = read(runc_root, id).map_err(Ok)?;
    let a = attach(&join).map_err(Err)?;
    let mut all = ATTACHED.lock().unwrap_or_else(|p| p.into_inner());
    // A miss is a container's first exec (or its restart): the moment to close what exited
    // containers held (one poll each).
    all.retain(|_, a| !a.exited());
    while !all.is_empty() && all.len() >= max_attached() {
        all.pop_first();
    }
    if max_attached() > 0 {
        all.insert(key, a.clone());
    }
    Ok(a)
}

/// Forgets the [`Attached`] of runc container `id` (it was deleted): its descriptors close
/// once no exec into it runs.
pub fn detach(runc_root: &Path, id: &str) {
    ATTACHED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&(runc_root.to_path_buf(), id.to_string()));
}

fn prepare(attached: &Arc<Attached>, argv: &[String]) -> io::Result<(Prepared, [OwnedFd; 2])> {
    let Some(program) = argv.first() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty command"));
    };
    let (out_read, out_write) = pipe()?;
    let (err_read, err_write) = pipe()?;
    let prepared = Prepared {
        attached: attached.clone(),
        candidates: candidates(program, attached.path.as_deref())
            .iter()
            .map(|c| cstring(c))
            .collect::<io::Result<_>>()?,
        argv: argv.iter().map(|a| cstring(a)).collect::<io::Result<_>>()?,
        stdio: [open(Path::new("/dev/null"), false)?, out_write, err_write],
    };
    Ok((prepared, [out_read, err_read]))
}

/// Why [`spawn`] failed: before the program ran (the container could not be joined: the
/// caller may use `runc exec` instead), or at its exec (the program is missing or not
/// executable: `runc exec` would fail alike).
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("joining the container: {0}")]
    Join(io::Error),
    #[error("{0}")]
    Exec(io::Error),
}

/// A process [`spawn`] started inside a container. Dropped before [`Child::wait`] returned,
/// it is killed (its spawner thread reaps it).
pub struct Child {
    pid: i32,
    pidfd: OwnedFd,
    exited: Option<tokio::sync::oneshot::Receiver<io::Result<std::process::ExitStatus>>>,
    pub stdout: Option<tokio::net::unix::pipe::Receiver>,
    pub stderr: Option<tokio::net::unix::pipe::Receiver>,
}

impl Child {
    /// The process id, in the agent's pid namespace.
    pub fn id(&self) -> i32 {
        self.pid
    }

    /// Waits for the process to exit (its spawner thread reaps it).
    pub async fn wait(&mut self) -> io::Result<std::process::ExitStatus> {
        let Some(exited) = self.exited.as_mut() else {
            return Err(io::Error::other("already reaped"));
        };
        let status = exited
            .await
            .unwrap_or_else(|_| Err(io::Error::other("the spawner thread stopped")));
        self.exited = None;
        status
    }
}

/// SIGKILL through a pidfd (which cannot reach a reused pid).
fn kill(pidfd: &OwnedFd) {
    // SAFETY: a pidfd we own; a null siginfo.
    unsafe {
        nix::libc::syscall(
            nix::libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            nix::libc::SIGKILL,
            std::ptr::null::<nix::libc::siginfo_t>(),
            0u32,
        );
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.exited.is_some() {
            kill(&self.pidfd);
        }
    }
}

/// `waitpid` on our child `pid`: its status once it has exited (`None` if `WNOHANG` and not yet).
fn reap(pid: i32, flags: i32) -> io::Result<Option<std::process::ExitStatus>> {
    use std::os::unix::process::ExitStatusExt;
    let mut status = 0;
    loop {
        // SAFETY: a valid pointer to a local.
        match unsafe { nix::libc::waitpid(pid, &mut status, flags) } {
            -1 if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => continue,
            -1 => return Err(io::Error::last_os_error()),
            0 => return Ok(None),
            _ => return Ok(Some(std::process::ExitStatus::from_raw(status))),
        }
    }
}

/// Runs `argv` inside the container `join` describes, with stdin from `/dev/null` and stdout
/// and stderr piped. The process is cloned sharing the agent's memory until it execs
/// (`CLONE_VM | CLONE_VFORK`, as `posix_spawn` does), so a call costs no copy of the agent's
/// page tables and no copy-on-write faults afterwards, which a `fork` of a 50 MiB agent costs
/// on every exec probe; it is born inside the container's pid namespace (the spawner thread
/// enters it for its children), so no waiting process stays outside.
pub async fn spawn(join: &Join, argv: &[String]) -> Result<Child, SpawnError> {
    let attached = attach(join).map_err(SpawnError::Join)?;
    spawn_in(&attached, argv).await
}

/// [`spawn`] into a container already attached (see [`attached`]).
pub async fn spawn_in(attached: &Arc<Attached>, argv: &[String]) -> Result<Child, SpawnError> {
    let (prepared, [out, err]) = prepare(attached, argv).map_err(SpawnError::Join)?;
    let (reply, answer) = tokio::sync::oneshot::channel();
    let (exit, exited) = tokio::sync::oneshot::channel();
    let asked = std::time::Instant::now();
    spawner::submit(spawner::Request {
        prepared,
        reply,
        exit,
    })
    .map_err(SpawnError::Join)?;
    let answered = answer.await;
    if asked.elapsed() > std::time::Duration::from_millis(250) {
        tracing::warn!(
            ms = asked.elapsed().as_millis() as u64,
            "nsexec: a slow answer from the spawner thread"
        );
    }
    let (pid, pidfd) = answered
        .map_err(|_| SpawnError::Join(io::Error::other("the spawner thread stopped")))??;
    let mut child = Child {
        pid,
        pidfd,
        exited: Some(exited),
        stdout: None,
        stderr: None,
    };
    let pipes = || -> io::Result<_> {
        Ok((
            tokio::net::unix::pipe::Receiver::from_owned_fd(out)?,
            tokio::net::unix::pipe::Receiver::from_owned_fd(err)?,
        ))
    };
    let (stdout, stderr) = pipes().map_err(SpawnError::Join)?;
    child.stdout = Some(stdout);
    child.stderr = Some(stderr);
    Ok(child)
}

/// One thread per process started: it enters the container's pid namespace for its
/// children, clones the child (blocked until the child execs: joining the cgroups can take
/// hundreds of milliseconds on a busy host, so threads are not shared and a burst of probes
/// is not queued behind one), then waits for the child's exit and reaps it. Its signals are all
/// blocked (so the child starts with none delivered until it has reset their handlers), and it
/// lives as long as the child, so the child's parent-death signal fires only when the agent
/// dies (or the thread, which never ends before the child).
mod spawner {
    use super::*;
    use std::sync::atomic::{AtomicI32, Ordering};

    pub(super) struct Request {
        pub(super) prepared: Prepared,
        pub(super) reply: tokio::sync::oneshot::Sender<Result<(i32, OwnedFd), SpawnError>>,
        pub(super) exit: tokio::sync::oneshot::Sender<io::Result<std::process::ExitStatus>>,
    }

    /// Starts a thread for `request`.
    pub(super) fn submit(request: Request) -> io::Result<()> {
        std::thread::Builder::new()
            .name("shoal-nsexec".into())
            .stack_size(256 * 1024)
            .spawn(move || serve(request))
            .map(drop)
    }

    /// Stack of the cloned child until it execs (system calls only; `exec` keeps its argument
    /// and environment arrays there).
    const STACK: usize = 128 * 1024;

    fn serve(request: Request) {
        let Request {
            prepared,
            reply,
            exit,
        } = request;
        // SAFETY: a full signal set for this thread only.
        unsafe {
            let mut all: nix::libc::sigset_t = std::mem::zeroed();
            nix::libc::sigfillset(&mut all);
            nix::libc::pthread_sigmask(nix::libc::SIG_BLOCK, &all, std::ptr::null_mut());
        }
        let mut stack = vec![0u8; STACK];
        let result = clone_into(&prepared, &mut stack);
        drop(prepared); // the child's ends of the pipes, its namespace fds
        let (pid, killer) = match result {
            Ok((pid, pidfd)) => match pidfd.try_clone() {
                Ok(mine) => match reply.send(Ok((pid, pidfd))) {
                    Ok(()) => (pid, None),
                    // The caller gave up before the answer: the process is nobody's.
                    Err(_) => (pid, Some(mine)),
                },
                Err(e) => {
                    kill(&pidfd);
                    let _ = reap(pid, 0);
                    let _ = reply.send(Err(SpawnError::Join(e)));
                    return;
                }
            },
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        if let Some(pidfd) = killer {
            kill(&pidfd);
        }
        let status = reap(pid, 0).and_then(|s| s.ok_or_else(|| io::Error::other("not exited")));
        let _ = exit.send(status);
    }

    /// What the child reports through the shared memory when it fails before its exec.
    struct Failure {
        step: AtomicI32,
        errno: AtomicI32,
        /// CLOCK_MONOTONIC nanoseconds at which each step began (index = step number).
        began: [std::sync::atomic::AtomicU64; STEPS.len()],
    }

    struct Context<'a> {
        prepared: &'a Prepared,
        failure: &'a Failure,
        /// The child was cloned into its v2 cgroup (it writes only the v1 ones).
        in_v2: bool,
    }

    /// `clone3`'s arguments (`struct clone_args`, version 2: with `cgroup`).
    #[cfg(target_arch = "x86_64")]
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }

    /// `CLONE_INTO_CGROUP` (linux/sched.h: 0x200000000; libc's constant is an overflowing
    /// `c_int`).
    #[cfg(target_arch = "x86_64")]
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

    /// Whether `clone3` with `CLONE_INTO_CGROUP` works here (cleared at its first refusal:
    /// an older kernel, or a seccomp filter around the agent).
    static CLONE3: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

    /// `clone3(args)`; in the child, `f(arg)` on the stack `args` names, then `exit` with its
    /// result. Returns the child's pid, or `-errno`. (libc has no `clone3` wrapper that runs a
    /// function on the new stack, and a raw system call cannot return into Rust code there.)
    ///
    /// # Safety
    /// `args.stack` must be a stack no one else uses until the child execs or exits, and
    /// `arg` valid for `f` as long; with `CLONE_VM` the child shares this process's memory.
    #[cfg(target_arch = "x86_64")]
    unsafe fn clone3(
        args: &CloneArgs,
        f: extern "C" fn(*mut nix::libc::c_void) -> nix::libc::c_int,
        arg: *mut nix::libc::c_void,
    ) -> i64 {
        let ret: i64;
        // The child starts after `syscall` with rax = 0 and rsp = the top of its stack (16-byte
        // aligned, so `call` leaves the callee its ABI alignment), every other register as
        // the parent had it: r12 and r13 carry `f` and `arg` across.
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r13",
            "call r12",
            "mov edi, eax",
            "mov eax, 60", // exit
            "syscall",
            "ud2",
            "2:",
            inlateout("rax") nix::libc::SYS_clone3 => ret,
            in("rdi") args as *const CloneArgs,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") f,
            in("r13") arg,
            lateout("rcx") _,
            lateout("r11") _,
        );
        ret
    }

    /// Clones the child (this thread stays in the container's pid namespace for its
    /// children: it clones nothing else).
    fn clone_into(p: &Prepared, stack: &mut [u8]) -> Result<(i32, OwnedFd), SpawnError> {
        use nix::libc;
        let join_err = |what: &str| {
            let e = io::Error::last_os_error();
            SpawnError::Join(io::Error::new(e.kind(), format!("{what}: {e}")))
        };
        if let Some(ns) = &p.pid_ns {
            // SAFETY: a namespace fd; affects this thread's future children only.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWPID) } == -1 {
                return Err(join_err("setns(pid)"));
            }
        }
        let failure = Failure {
            step: AtomicI32::new(0),
            errno: AtomicI32::new(0),
            began: Default::default(),
        };
        let started = std::time::Instant::now();
        let mut context = Context {
            prepared: p,
            failure: &failure,
            in_v2: false,
        };
        let mut pidfd: libc::c_int = -1;
        let top = (stack.as_mut_ptr() as usize + stack.len()) & !15;
        let mut pid = -1;
        #[cfg(target_arch = "x86_64")]
        if let Some((dir, _)) = p
            .cgroup_v2
            .as_ref()
            .filter(|_| CLONE3.load(Ordering::Relaxed))
        {
            context.in_v2 = true;
            let args = CloneArgs {
                flags: (libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD) as u64
                    | CLONE_INTO_CGROUP,
                pidfd: &mut pidfd as *mut libc::c_int as u64,
                exit_signal: libc::SIGCHLD as u64,
                stack: stack.as_mut_ptr() as u64,
                stack_size: (top - stack.as_mut_ptr() as usize) as u64,
                cgroup: dir.as_raw_fd() as u64,
                ..CloneArgs::default()
            };
            // SAFETY: as for clone below; `args` and `context` outlive the child's use of
            // them (this thread resumes only once the child has exec'd or exited).
            let r = unsafe { clone3(&args, child, (&mut context as *mut Context).cast()) };
            match r {
                r if r >= 0 => pid = r as i32,
                r if [libc::ENOSYS, libc::EINVAL, libc::E2BIG, libc::EPERM]
                    .contains(&(-r as i32)) =>
                {
                    CLONE3.store(false, Ordering::Relaxed);
                    context.in_v2 = false;
                    tracing::info!(
                        error = %io::Error::from_raw_os_error(-r as i32),
                        "nsexec: clone3 into a cgroup refused; children join their cgroup v2 by cgroup.procs"
                    );
                }
                r => {
                    let e = io::Error::from_raw_os_error(-r as i32);
                    return Err(SpawnError::Join(io::Error::new(
                        e.kind(),
                        format!("clone3: {e}"),
                    )));
                }
            }
        }
        if pid == -1 {
            // SAFETY: the child runs `child` on its own stack (`stack`, unused by anyone else
            // while this thread is suspended by CLONE_VFORK) and only makes system calls on
            // `context`, which outlives it (this thread resumes only once the child has
            // exec'd or exited).
            pid = unsafe {
                libc::clone(
                    child,
                    top as *mut libc::c_void,
                    libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD,
                    (&mut context as *mut Context).cast(),
                    &mut pidfd as *mut libc::c_int,
                )
            };
        }
        let cloned = match pid {
            -1 => Err(join_err("clone")),
            // SAFETY: CLONE_PIDFD stored a new fd we own.
            pid => Ok((pid, unsafe {
                <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(pidfd)
            })),
        };
        let took = started.elapsed();
        if took > std::time::Duration::from_millis(250) {
            let began: Vec<u64> = failure
                .began
                .iter()
                .map(|b| b.load(Ordering::SeqCst))
                .collect();
            let slowest = (1..STEPS.len())
                .filter(|&i| began[i] != 0)
                .map(|i| {
                    let next = began[i + 1..].iter().copied().find(|&b| b != 0);
                    (next.unwrap_or(began[i]).saturating_sub(began[i]), STEPS[i])
                })
                .max();
            tracing::warn!(
                ms = took.as_millis() as u64,
                slowest_step = slowest.map_or("", |s| s.1),
                slowest_ms = slowest.map_or(0, |s| s.0 / 1_000_000),
                "nsexec: a slow start into a container"
            );
        }
        cloned.and_then(|(pid, pidfd)| match failure.step.load(Ordering::SeqCst) {
            0 => Ok((pid, pidfd)),
            step => {
                let _ = reap(pid, 0);
                let e = io::Error::from_raw_os_error(failure.errno.load(Ordering::SeqCst));
                let step = STEPS.get(step as usize).copied().unwrap_or("?");
                Err(match step {
                    "exec" => SpawnError::Exec(e),
                    step => SpawnError::Join(io::Error::new(e.kind(), format!("{step}: {e}"))),
                })
            }
        })
    }

    /// The steps of the child, for the error a failure reports (index = step number).
    const STEPS: &[&str] = &[
        "",
        "signals",
        "cgroup",
        "setns",
        "root",
        "cwd",
        "stdio",
        "rlimit",
        "capabilities",
        "seccomp",
        "user",
        "exec",
    ];

    fn step(name: &str) -> i32 {
        STEPS.iter().position(|s| *s == name).unwrap_or(0) as i32
    }

    /// In the child: step `name` begins (its time kept for the slow-start warning).
    fn mark(f: &Failure, at: &mut i32, name: &str) {
        *at = step(name);
        let mut now = nix::libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid pointer; clock_gettime is the vDSO, no allocation.
        unsafe { nix::libc::clock_gettime(nix::libc::CLOCK_MONOTONIC, &mut now) };
        f.began[*at as usize].store(
            now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64,
            Ordering::SeqCst,
        );
    }

    /// The cloned child: runs on its own stack in the agent's memory until it execs.
    extern "C" fn child(arg: *mut nix::libc::c_void) -> nix::libc::c_int {
        // SAFETY: `arg` is the `Context` the parent thread keeps alive until we exec or exit.
        let context = unsafe { &*(arg as *const Context) };
        let mut at = 0;
        let result = enter(context.prepared, context.failure, context.in_v2, &mut at);
        let errno = match result {
            Ok(never) => match never {},
            Err(e) => e.raw_os_error().unwrap_or(nix::libc::EINVAL),
        };
        context.failure.errno.store(errno, Ordering::SeqCst);
        context.failure.step.store(at, Ordering::SeqCst);
        // SAFETY: leaves the child only (its own thread group).
        unsafe { nix::libc::_exit(127) }
    }

    /// In the child: reset signals, join, set the container's limits and credentials, exec.
    /// Returns only on failure, with `at` the step that failed.
    fn enter(
        p: &Prepared,
        f: &Failure,
        in_v2: bool,
        at: &mut i32,
    ) -> io::Result<std::convert::Infallible> {
        use nix::libc;
        // SAFETY (whole function): plain system calls on valid fds, NUL-terminated strings
        // and NULL-terminated pointer arrays prepared before the clone; every credential change
        // is the raw system call (glibc's wrappers would change every thread of the agent).
        unsafe {
            mark(f, at, "signals");
            for signal in 1..=64 {
                if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                    let mut action: libc::sigaction = std::mem::zeroed();
                    action.sa_sigaction = libc::SIG_DFL;
                    // glibc's internal signals refuse; the rest go back to their defaults.
                    libc::sigaction(signal, &action, std::ptr::null_mut());
                }
            }
            mark(f, at, "cgroup");
            // "0" moves the writing thread (v1 `tasks`) or process (v2 `cgroup.procs`).
            let v2 = p
                .cgroup_v2
                .as_ref()
                .filter(|_| !in_v2)
                .map(|(_, procs)| procs);
            for fd in p.cgroup_tasks.iter().chain(v2) {
                check(libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) as libc::c_long)?;
            }
            mark(f, at, "setns");
            for (fd, kind) in &p.namespaces {
                check(libc::setns(fd.as_raw_fd(), *kind).into())?;
            }
            mark(f, at, "root");
            check(libc::fchdir(p.root.as_raw_fd()).into())?;
            check(libc::chroot(c".".as_ptr()).into())?;
            mark(f, at, "cwd");
            check(libc::chdir(p.cwd.as_ptr()).into())?;
            mark(f, at, "stdio");
            for (target, fd) in p.stdio.iter().enumerate() {
                check(libc::dup2(fd.as_raw_fd(), target as libc::c_int).into())?;
            }
            // Whatever else is open (every fd of the agent's is close-on-exec already).
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            mark(f, at, "rlimit");
            for &(resource, soft, hard) in &p.rlimits {
                let limit = libc::rlimit64 {
                    rlim_cur: soft,
                    rlim_max: hard,
                };
                check(libc::prlimit64(0, resource as _, &limit, std::ptr::null_mut()).into())?;
            }
            // The container's bounding set (needs CAP_SETPCAP, still held), then its user and
            // groups keeping the capabilities, then its capability sets.
            mark(f, at, "capabilities");
            for cap in 0..=p.last_cap.min(63) {
                if p.caps.bounding & (1u64 << cap) == 0 {
                    check(
                        libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0).into(),
                    )?;
                }
            }
            // As runc: without no_new_privs, loading a filter needs CAP_SYS_ADMIN, so it is
            // loaded before the user changes; with it, as late as possible (just before exec).
            if !p.no_new_privs {
                mark(f, at, "seccomp");
                load_seccomp(p)?;
            }
            mark(f, at, "user");
            check(libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0).into())?;
            check(libc::syscall(
                libc::SYS_setgroups,
                p.groups.len(),
                p.groups.as_ptr(),
            ))?;
            check(libc::syscall(libc::SYS_setresgid, p.gid, p.gid, p.gid))?;
            check(libc::syscall(libc::SYS_setresuid, p.uid, p.uid, p.uid))?;
            mark(f, at, "capabilities");
            capset(&p.caps)?;
            check(libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0).into())?;
            check(
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                    0,
                    0,
                    0,
                )
                .into(),
            )?;
            for cap in 0..=p.last_cap.min(63) {
                if p.caps.ambient & (1u64 << cap) != 0 {
                    // As runc: an ambient capability outside permitted ∩ inheritable is skipped.
                    libc::prctl(
                        libc::PR_CAP_AMBIENT,
                        libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                        cap as libc::c_ulong,
                        0,
                        0,
                    );
                }
            }
            if p.no_new_privs {
                check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0).into())?;
            }
            if let Some(mask) = p.umask {
                libc::umask(mask as libc::mode_t);
            }
            // Set after the credentials change (which clears it): the spawner thread lives
            // as long as the agent, so the agent's death kills the process.
            check(
                libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                )
                .into(),
            )?;
            if p.no_new_privs {
                mark(f, at, "seccomp");
                load_seccomp(p)?;
            }
            mark(f, at, "exec");
            exec(p)
        }
    }

    /// `execve` of each candidate path in turn, with the container's arguments and environment
    /// (null-terminated arrays on this stack: no allocation). Returns the error: `EACCES` if
    /// any candidate was denied, else the last one's.
    unsafe fn exec(p: &Prepared) -> io::Result<std::convert::Infallible> {
        use nix::libc;
        const MAX_ARGS: usize = 1024;
        if p.argv.len() >= MAX_ARGS || p.envp.len() >= MAX_ARGS {
            return Err(io::Error::from_raw_os_error(libc::E2BIG));
        }
        let mut argv = [std::ptr::null::<libc::c_char>(); MAX_ARGS];
        let mut envp = [std::ptr::null::<libc::c_char>(); MAX_ARGS];
        for (slot, a) in argv.iter_mut().zip(&p.argv) {
            *slot = a.as_ptr();
        }
        for (slot, e) in envp.iter_mut().zip(&p.envp) {
            *slot = e.as_ptr();
        }
        let (mut denied, mut last) = (false, libc::ENOENT);
        // Signals were blocked since the clone; their handlers are the defaults by now.
        libc::sigprocmask(
            libc::SIG_SETMASK,
            &std::mem::zeroed::<libc::sigset_t>(),
            std::ptr::null_mut(),
        );
        for path in &p.candidates {
            libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
            last = *libc::__errno_location();
            match last {
                libc::EACCES => denied = true,
                libc::ENOENT | libc::ENOTDIR => {}
                _ => break,
            }
        }
        Err(io::Error::from_raw_os_error(if denied {
            libc::EACCES
        } else {
            last
        }))
    }
}

fn check(rc: nix::libc::c_long) -> io::Result<()> {
    match rc {
        -1 => Err(io::Error::last_os_error()),
        _ => Ok(()),
    }
}

/// Loads the prepared filter into the calling thread (the child; system calls only).
fn load_seccomp(p: &Prepared) -> io::Result<()> {
    use nix::libc;
    let Some(filter) = &p.seccomp else {
        return Ok(());
    };
    let prog = libc::sock_fprog {
        // compile checked that the length fits.
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: `prog` points at a BPF program the kernel copies during the call.
    check(
        unsafe {
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                &prog as *const libc::sock_fprog as libc::c_ulong,
                0,
                0,
            )
        }
        .into(),
    )
}

/// `capset(2)` of the effective, permitted and inheritable sets (version 3: 64 bits).
fn capset(caps: &Caps) -> io::Result<()> {
    use nix::libc;
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let half = |m: u64, hi: bool| if hi { (m >> 32) as u32 } else { m as u32 };
    let data = [false, true].map(|hi| Data {
        effective: half(caps.effective, hi),
        permitted: half(caps.permitted, hi),
        inheritable: half(caps.inheritable, hi),
    });
    // SAFETY: the header and the two data structs are the kernel's v3 layout.
    check(unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(extra: &str) -> String {
        format!(
            r#"{{"id":"c1","init_process_pid":4242,"init_process_start":3559115,
            "cgroup_paths":{{"":"/sys/fs/cgroup/unified/p/c1","cpu":"/sys/fs/cgroup/cpu/p/c1",
            "cpuacct":"/sys/fs/cgroup/cpu/p/c1"}},"rootless":false{extra},
            "config":{{"labels":["bundle=/data/pods/k/containers/c/0"]}}}}"#
        )
    }

    fn config(process: &str, linux: &str) -> String {
        format!(
            r#"{{"ociVersion":"1.0.2","process":{{"user":{{"uid":1000,"gid":1000,
            "additionalGids":[5]}},"args":["sleep","1"],"env":["PATH=/bin","A=b=c"],"cwd":"/w",
            "capabilities":{{"bounding":["CAP_KILL","CAP_NET_BIND_SERVICE"],
            "effective":["CAP_KILL"],"permitted":["CAP_KILL"],"ambient":[]}},
            "noNewPrivileges":true{process}}},"linux":{{"namespaces":[{{"type":"pid"}},
            {{"type":"mount"}}]{linux}}}}}"#
        )
    }

    #[test]
    fn a_plain_container_is_joined_as_runc_would() {
        let join = plan(state("").as_bytes(), config("", "").as_bytes()).unwrap();
        assert_eq!((join.pid, join.start), (4242, 3559115));
        assert_eq!(
            join.cgroups
                .iter()
                .map(|p| p.to_str().unwrap())
                .collect::<Vec<_>>(),
            ["/sys/fs/cgroup/cpu/p/c1", "/sys/fs/cgroup/unified/p/c1"],
            "one write per distinct directory"
        );
        assert_eq!(
            (join.uid, join.gid, join.groups.clone()),
            (1000, 1000, vec![5])
        );
        // CAP_KILL is 5, CAP_NET_BIND_SERVICE 10.
        assert_eq!(join.caps.bounding, (1 << 5) | (1 << 10));
        assert_eq!((join.caps.effective, join.caps.inheritable), (1 << 5, 0));
        assert!(join.no_new_privs);
        assert_eq!(join.env, ["PATH=/bin", "A=b=c"]);
        assert_eq!(join.cwd, "/w");
        let limited = config(
            r#","rlimits":[{"type":"RLIMIT_NOFILE","hard":2048,"soft":1024}]"#,
            "",
        );
        let join2 = plan(state("").as_bytes(), limited.as_bytes()).unwrap();
        assert_eq!(join2.rlimits, [(7, 1024, 2048)]);
        assert_eq!(
            bundle_of(state("").as_bytes()).unwrap(),
            Path::new("/data/pods/k/containers/c/0")
        );
    }

    #[test]
    fn what_this_path_cannot_reproduce_goes_to_runc_exec() {
        let cases = [
            (
                "",
                r#","seccomp":{"defaultAction":"SCMP_ACT_ALLOW","listenerPath":"/x"}"#,
                "listener",
            ),
            (
                "",
                r#","seccomp":{"defaultAction":"SCMP_ACT_ALLOW","flags":["SECCOMP_FILTER_FLAG_LOG"]}"#,
                "flags",
            ),
            (
                r#","rlimits":[{"type":"RLIMIT_NOPE","hard":1,"soft":1}]"#,
                "",
                "rlimit",
            ),
            (r#","apparmorProfile":"x""#, "", "AppArmor"),
            (r#","selinuxLabel":"x""#, "", "SELinux"),
            (r#","oomScoreAdj":5"#, "", "oomScoreAdj"),
            (r#","terminal":true"#, "", "terminal"),
            (r#","someFutureField":1"#, "", "unknown field"),
        ];
        for (process, linux, why) in cases {
            let err = plan(state("").as_bytes(), config(process, linux).as_bytes()).unwrap_err();
            assert!(err.0.contains(why), "{why}: {err}");
        }
        let userns = config("", "").replace(r#"{"type":"pid"}"#, r#"{"type":"user"}"#);
        assert!(plan(state("").as_bytes(), userns.as_bytes()).is_err());
        let unknown_cap = config("", "").replace("CAP_KILL\"]", "CAP_NOPE\"]");
        assert!(plan(state("").as_bytes(), unknown_cap.as_bytes()).is_err());
        let relative = state("").replace("/sys/fs/cgroup/cpu/p/c1", "../../etc");
        assert!(plan(relative.as_bytes(), config("", "").as_bytes()).is_err());
        assert!(plan(b"{", config("", "").as_bytes()).is_err());
        assert!(plan(state("").as_bytes(), b"null").is_err());
        assert!(bundle_of(br#"{"config":{"labels":[]}}"#).is_err());
    }

    #[test]
    fn shoals_default_profile_compiles_as_runc_would() {
        let caps = BTreeSet::from(["CAP_KILL".to_string()]);
        let oci = super::super::seccomp::default_profile(&caps).unwrap();
        let profile: Seccomp = serde_json::from_value(serde_json::to_value(&oci).unwrap()).unwrap();
        let filter = compile(&profile).unwrap();
        assert!(filter.len() > 20, "{} instructions", filter.len());
        assert!(Arc::ptr_eq(&filter, &compile(&profile).unwrap()), "cached");
        // A name libseccomp does not know is skipped (runc warns and goes on).
        let mut odd = profile.clone();
        odd.syscalls[0].names.push("no_such_call".into());
        assert!(compile(&odd).is_ok());
        let mut notify = profile.clone();
        notify.syscalls[0].action = "SCMP_ACT_NOTIFY".into();
        assert!(compile(&notify).is_err());
        let mut arch = profile;
        arch.architectures.push("SCMP_ARCH_NOPE".into());
        assert!(compile(&arch).is_err());
    }

    #[test]
    fn home_comes_from_the_users_passwd_entry() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\nweb:x:1000:1000::/srv/web:/bin/sh\nbad line\n";
        assert_eq!(home_of(passwd, 0).as_deref(), Some("/root"));
        assert_eq!(home_of(passwd, 1000).as_deref(), Some("/srv/web"));
        assert_eq!(home_of(passwd, 7), None);
        assert_eq!(home_of("", 0), None);
    }
}
