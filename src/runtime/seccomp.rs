//! shoal's default seccomp profile (`RuntimeDefault`): allow by default, with an explicit list
//! of denied system calls — the kernel interfaces containers have no business using, and those
//! whose only legitimate use needs a capability the container was not given. Pure: the profile
//! is a function of the container's capability set. Rationale and the full list: docs/security.md.
//!
//! Why not Docker's allowlist: it names some 350 calls per architecture and must grow with every
//! kernel; a missing new call breaks ordinary programs (glibc's `clone3`, `faccessat2`...). The
//! calls it leaves out that matter for escapes are the ones denied here, with the same
//! capability gates Docker's profile uses (a container given `CAP_SYS_ADMIN` may `mount`).

use std::collections::BTreeSet;

use oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder,
    LinuxSeccompBuilder, LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};

use super::RuntimeError;

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

/// Denied unless the container holds the capability (`None`: always denied).
pub const DENIED: &[(Option<Capability>, &[&str])] = &[
    (
        None,
        &[
            // The kernel keyring is not namespaced.
            "keyctl",
            "add_key",
            "request_key",
            // A long record of use-after-free exploits; no ordinary workload needs it.
            "userfaultfd",
            "lookup_dcookie",
            // Obsolete or removed interfaces.
            "nfsservctl",
            "get_kernel_syms",
            "query_module",
            "create_module",
            "uselib",
            "ustat",
            "sysfs",
            "_sysctl",
            "vm86",
            "vm86old",
            // io_uring bypasses seccomp for the operations it performs (containerd 2.0 and
            // Docker 25 removed it from their profiles too).
            "io_uring_setup",
            "io_uring_enter",
            "io_uring_register",
        ],
    ),
    (
        Some(Capability::SysAdmin),
        &[
            "mount",
            "umount",
            "umount2",
            "pivot_root",
            "move_mount",
            "open_tree",
            "fsopen",
            "fsconfig",
            "fsmount",
            "fspick",
            "mount_setattr",
            "setns",
            "swapon",
            "swapoff",
            "quotactl",
            "quotactl_fd",
            "fanotify_init",
            "bpf",
            "perf_event_open",
        ],
    ),
    (
        Some(Capability::DacReadSearch),
        &["open_by_handle_at", "name_to_handle_at"],
    ),
    (
        Some(Capability::SysPtrace),
        &[
            "ptrace",
            "process_vm_readv",
            "process_vm_writev",
            "kcmp",
            "pidfd_getfd",
        ],
    ),
    (
        Some(Capability::SysModule),
        &["init_module", "finit_module", "delete_module"],
    ),
    (
        Some(Capability::SysBoot),
        &["reboot", "kexec_load", "kexec_file_load"],
    ),
    (
        Some(Capability::SysTime),
        &["settimeofday", "stime", "clock_settime", "clock_adjtime"],
    ),
    (Some(Capability::Syslog), &["syslog"]),
    (Some(Capability::SysRawio), &["iopl", "ioperm"]),
    (Some(Capability::SysPacct), &["acct"]),
    (Some(Capability::SysTtyConfig), &["vhangup"]),
];

/// Namespace flags of `clone`/`unshare` (`CLONE_NEWNS`, `NEWCGROUP`, `NEWUTS`, `NEWIPC`,
/// `NEWUSER`, `NEWPID`, `NEWNET`, `NEWTIME`): denied without `CAP_SYS_ADMIN`. `CLONE_NEWUSER`
/// is the one that matters: it needs no capability and opens every namespaced kernel path
/// (mount, netfilter, bpf...) to an unprivileged user.
pub const NAMESPACE_FLAGS: &[u64] = &[
    0x0002_0000,
    0x0200_0000,
    0x0400_0000,
    0x0800_0000,
    0x1000_0000,
    0x2000_0000,
    0x4000_0000,
    0x0000_0080,
];

/// `personality(2)` flags denied: they turn off ASLR or make data executable. The query
/// `personality(0xffffffff)` (all bits set) stays allowed.
pub const PERSONALITY_FLAGS: &[u64] = &[
    0x0004_0000, // ADDR_NO_RANDOMIZE
    0x0010_0000, // MMAP_PAGE_ZERO
    0x0040_0000, // READ_IMPLIES_EXEC
];
const PERSONALITY_QUERY: u64 = 0xffff_ffff;

fn err(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Invalid {
        what: "seccomp profile".into(),
        reason: e.to_string(),
    }
}

fn deny(names: &[&str], errno: u32) -> Result<LinuxSyscall, RuntimeError> {
    LinuxSyscallBuilder::default()
        .names(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(errno)
        .build()
        .map_err(err)
}

/// `name` denied when argument `index` has every bit of `flag` set (and, with `unless`, is
/// not that exact value).
fn deny_flag(
    name: &str,
    index: usize,
    flag: u64,
    unless: Option<u64>,
) -> Result<LinuxSyscall, RuntimeError> {
    let mut args = vec![LinuxSeccompArgBuilder::default()
        .index(index)
        .value(flag)
        .value_two(flag)
        .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
        .build()
        .map_err(err)?];
    if let Some(v) = unless {
        args.push(
            LinuxSeccompArgBuilder::default()
                .index(index)
                .value(v)
                .op(LinuxSeccompOperator::ScmpCmpNe)
                .build()
                .map_err(err)?,
        );
    }
    LinuxSyscallBuilder::default()
        .names(vec![name.to_string()])
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(EPERM)
        .args(args)
        .build()
        .map_err(err)
}

fn architectures() -> Vec<Arch> {
    if cfg!(target_arch = "x86_64") {
        vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    } else if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
    } else {
        vec![Arch::ScmpArchNative]
    }
}

/// The system calls denied to a container holding `caps`, by name (for tests and docs).
pub fn denied_names(caps: &BTreeSet<String>) -> Vec<&'static str> {
    DENIED
        .iter()
        .filter(|(cap, _)| cap.is_none_or(|c| !caps.contains(&format!("CAP_{c}"))))
        .flat_map(|(_, names)| names.iter().copied())
        .collect()
}

/// The default profile for a container holding `caps` (capability names as `CAP_…`).
pub fn default_profile(caps: &BTreeSet<String>) -> Result<LinuxSeccomp, RuntimeError> {
    let sys_admin = caps.contains("CAP_SYS_ADMIN");
    let mut syscalls = vec![deny(&denied_names(caps), EPERM)?];
    if !sys_admin {
        // glibc and musl fall back to clone(2) on ENOSYS; clone3's flags sit behind a pointer
        // that seccomp cannot read, so it cannot be filtered by flag.
        syscalls.push(deny(&["clone3"], ENOSYS)?);
        for &flag in NAMESPACE_FLAGS {
            // x86_64, arm64: flags are clone's first argument (s390x would be the second).
            syscalls.push(deny_flag("clone", 0, flag, None)?);
            syscalls.push(deny_flag("unshare", 0, flag, None)?);
        }
    }
    for &flag in PERSONALITY_FLAGS {
        syscalls.push(deny_flag("personality", 0, flag, Some(PERSONALITY_QUERY))?);
    }
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .architectures(architectures())
        .syscalls(syscalls)
        .build()
        .map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn rules_for<'a>(p: &'a LinuxSeccomp, name: &str) -> Vec<&'a LinuxSyscall> {
        p.syscalls()
            .iter()
            .flatten()
            .filter(|s| s.names().iter().any(|n| n == name))
            .collect()
    }

    #[test]
    fn default_profile_denies_escapes_and_allows_the_rest() {
        let p = default_profile(&caps(&["CAP_CHOWN", "CAP_KILL"])).unwrap();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActAllow);
        for name in [
            "mount",
            "kexec_load",
            "init_module",
            "bpf",
            "keyctl",
            "ptrace",
            "setns",
            "open_by_handle_at",
            "reboot",
            "userfaultfd",
        ] {
            let rules = rules_for(&p, name);
            assert_eq!(rules.len(), 1, "{name}");
            assert_eq!(rules[0].action(), LinuxSeccompAction::ScmpActErrno);
            assert!(rules[0].args().is_none(), "{name} is denied outright");
        }
        assert!(rules_for(&p, "read").is_empty());
        assert_eq!(rules_for(&p, "clone3")[0].errno_ret(), Some(ENOSYS));
        let clone = rules_for(&p, "clone");
        assert_eq!(clone.len(), NAMESPACE_FLAGS.len());
        let newuser: Vec<_> = clone
            .iter()
            .flat_map(|r| r.args().iter().flatten())
            .filter(|a| a.value() == 0x1000_0000)
            .collect();
        assert_eq!(newuser.len(), 1);
        assert_eq!(newuser[0].op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
        assert_eq!(rules_for(&p, "unshare").len(), NAMESPACE_FLAGS.len());
        let personality = rules_for(&p, "personality");
        assert_eq!(personality.len(), PERSONALITY_FLAGS.len());
        assert!(personality.iter().all(|r| r
            .args()
            .iter()
            .flatten()
            .any(|a| a.op() == LinuxSeccompOperator::ScmpCmpNe && a.value() == PERSONALITY_QUERY)));
    }

    #[test]
    fn capabilities_open_their_calls() {
        let admin = default_profile(&caps(&["CAP_SYS_ADMIN"])).unwrap();
        for name in ["mount", "setns", "bpf", "clone3"] {
            assert!(rules_for(&admin, name).is_empty(), "{name}");
        }
        assert!(rules_for(&admin, "clone").is_empty());
        assert_eq!(rules_for(&admin, "ptrace").len(), 1);
        let tracer = default_profile(&caps(&["CAP_SYS_PTRACE"])).unwrap();
        assert!(rules_for(&tracer, "ptrace").is_empty());
        assert_eq!(rules_for(&tracer, "mount").len(), 1);
        assert_eq!(rules_for(&tracer, "keyctl").len(), 1, "never allowed");
    }

    #[test]
    fn serializes_as_runc_expects() {
        let p = default_profile(&BTreeSet::new()).unwrap();
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["defaultAction"], "SCMP_ACT_ALLOW");
        assert!(!json["architectures"].as_array().unwrap().is_empty());
        let clone = json["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["names"][0] == "clone")
            .unwrap();
        assert_eq!(clone["action"], "SCMP_ACT_ERRNO");
        assert_eq!(clone["errnoRet"], 1);
        assert_eq!(clone["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
        assert!(clone["args"][0]["valueTwo"].is_u64());
    }
}
