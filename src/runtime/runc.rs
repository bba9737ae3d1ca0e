//! The OCI runtime driver: `runc` (or anything with its command line) run as a child process
//! with this node's `--root`, behind the narrow [`OciRuntime`] trait so tests can use a
//! recording fake, or `/bin/true` / `/bin/false` in place of runc. Also the cgroup path rules.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;

use super::RuntimeError;

/// Most bytes of runtime output kept (error messages, `list` output).
const MAX_OUTPUT: usize = 4 << 20;

/// One container in `runc list`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ListEntry {
    pub id: String,
    #[serde(default)]
    pub pid: i32,
    #[serde(default)]
    pub status: String,
}

/// What the agent asks of the runtime. Creation and start run in the shim (see `shim.rs`),
/// through [`RuncCli::create_command`] / [`RuncCli::start`].
pub trait OciRuntime: Send + Sync {
    /// `kill ID SIGNAL`.
    fn kill(&self, id: &str, signal: &str) -> Result<(), RuntimeError>;
    /// `delete [--force] ID`; a missing container is not an error.
    fn delete(&self, id: &str, force: bool) -> Result<(), RuntimeError>;
    /// `list --format json`.
    fn list(&self) -> Result<Vec<ListEntry>, RuntimeError>;
}

/// The runtime binary with its `--root`.
#[derive(Clone, Debug)]
pub struct RuncCli {
    pub binary: PathBuf,
    pub root: PathBuf,
}

impl RuncCli {
    pub fn new(binary: impl Into<PathBuf>, root: impl Into<PathBuf>) -> Self {
        RuncCli {
            binary: binary.into(),
            root: root.into(),
        }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root").arg(&self.root).stdin(Stdio::null());
        cmd
    }

    /// Runs `args`; error with the runtime's stderr on failure.
    fn run(&self, args: &[&str]) -> Result<Vec<u8>, RuntimeError> {
        let out = self
            .command()
            .args(args)
            .output()
            .map_err(|e| RuntimeError::Runc(format!("{}: {e}", self.binary.display())))?;
        if out.status.success() {
            let mut stdout = out.stdout;
            stdout.truncate(MAX_OUTPUT);
            Ok(stdout)
        } else {
            let mut err = String::from_utf8_lossy(&out.stderr).trim().to_string();
            err.truncate(4096);
            Err(RuntimeError::Runc(format!(
                "{} {}: {} {err}",
                self.binary.display(),
                args.join(" "),
                out.status
            )))
        }
    }

    /// `runc --root R --log L --log-format json create --bundle B --pid-file P ID`, stdio
    /// left to the caller (the container inherits it).
    pub fn create_command(&self, bundle: &Path, pid_file: &Path, log: &Path, id: &str) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root")
            .arg(&self.root)
            .arg("--log")
            .arg(log)
            .arg("--log-format")
            .arg("json")
            .arg("create")
            .arg("--bundle")
            .arg(bundle)
            .arg("--pid-file")
            .arg(pid_file)
            .arg(id);
        cmd
    }

    /// `runc start ID`.
    pub fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.run(&["start", id]).map(|_| ())
    }
}

impl OciRuntime for RuncCli {
    fn kill(&self, id: &str, signal: &str) -> Result<(), RuntimeError> {
        self.run(&["kill", id, signal]).map(|_| ())
    }

    fn delete(&self, id: &str, force: bool) -> Result<(), RuntimeError> {
        // What exec probes kept open into it (its namespaces, root, cgroups) closes now.
        super::nsexec::detach(&self.root, id);
        let result = if force {
            self.run(&["delete", "--force", id])
        } else {
            self.run(&["delete", id])
        };
        match result {
            Ok(_) => Ok(()),
            Err(RuntimeError::Runc(m))
                if m.contains("does not exist") || m.contains("not found") =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn list(&self) -> Result<Vec<ListEntry>, RuntimeError> {
        let out = self.run(&["list", "--format", "json"])?;
        parse_list(&out)
    }
}

/// `runc list --format json` prints `null` when empty; `/bin/true` prints nothing.
pub fn parse_list(out: &[u8]) -> Result<Vec<ListEntry>, RuntimeError> {
    let text = String::from_utf8_lossy(out);
    let text = text.trim();
    if text.is_empty() || text == "null" {
        return Ok(Vec::new());
    }
    serde_json::from_str(text).map_err(|e| RuntimeError::Runc(format!("runc list: {e}")))
}

/// The last `"level":"error"` message in a runc `--log-format json` log.
pub fn last_error(log: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Line {
        level: String,
        msg: String,
    }
    log.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Line>(l).ok())
        .find(|l| l.level == "error" || l.level == "fatal")
        .map(|l| l.msg)
}

/// cgroup (v1 and v2) mount points on this host (`runtime::mountinfo`).
pub fn cgroup_mounts() -> Vec<PathBuf> {
    super::mountinfo::read()
        .into_iter()
        .filter(|m| m.fstype == "cgroup" || m.fstype == "cgroup2")
        .map(|m| m.mount_point)
        .collect()
}

/// A cgroup parent as runc wants it in `linux.cgroupsPath`: relative to the hierarchy root.
/// An absolute cgroupfs path (`/sys/fs/cgroup/unified/shoal-testnet/n1`) loses its mount point
/// (the longest of `mounts` it lies under); any other path is taken as already relative.
pub fn cgroup_relative(parent: &str, mounts: &[PathBuf]) -> String {
    let path = Path::new(parent);
    let best = mounts
        .iter()
        .filter(|m| path.starts_with(m) && m.as_os_str().len() > 1)
        .max_by_key(|m| m.as_os_str().len());
    let rel = match best {
        Some(m) => path.strip_prefix(m).unwrap_or(path).to_path_buf(),
        None => path.to_path_buf(),
    };
    let s = rel.to_string_lossy().trim_matches('/').to_string();
    format!("/{s}")
}

/// `linux.cgroupsPath` of one container: `<parent>/pod-<key>/<container>`.
pub fn container_cgroup(parent: &str, pod_key: &str, container: &str) -> String {
    format!("{}/pod-{pod_key}/{container}", parent.trim_end_matches('/'))
}

/// Removes a pod's cgroup (`<parent>/pod-<key>`, now empty of processes) from every mounted
/// hierarchy, leaves first. Best effort: a busy or missing directory is left alone.
pub fn remove_pod_cgroups(parent: &str, pod_key: &str) {
    let rel = format!("{}/pod-{pod_key}", parent.trim_matches('/'));
    for mount in cgroup_mounts() {
        let dir = mount.join(&rel);
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
        let _ = std::fs::remove_dir(&dir);
    }
}

/// Whether runc can cap memory+swap per cgroup on this host (`root`: `/sys/fs/cgroup`): a v2
/// host (runc writes `memory.swap.max`, and ignores a missing file when the value is 0), or a
/// v1 memory controller with swap accounting (`memory.memsw.limit_in_bytes`, absent when the
/// kernel runs with `swapaccount=0`; runc 1.1 refuses a swap limit then). A hybrid host is v1
/// for runc.
pub fn swap_accounting(root: &Path) -> bool {
    root.join("cgroup.controllers").exists()
        || root.join("memory/memory.memsw.limit_in_bytes").exists()
}

/// Whether `cgroupsPath` recorded an OOM kill (v1 `memory.oom_control` or v2 `memory.events`).
pub fn oom_killed(cgroups_path: &str) -> bool {
    let rel = cgroups_path.trim_start_matches('/');
    cgroup_mounts().iter().any(|m| {
        ["memory.events", "memory.oom_control"].iter().any(|f| {
            std::fs::read_to_string(m.join(rel).join(f)).is_ok_and(|text| {
                text.lines().any(|l| {
                    l.strip_prefix("oom_kill ")
                        .and_then(|n| n.trim().parse::<u64>().ok())
                        .is_some_and(|n| n > 0)
                })
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_parent_relative_to_its_hierarchy() {
        let mounts = vec![
            PathBuf::from("/sys/fs/cgroup"),
            PathBuf::from("/sys/fs/cgroup/unified"),
            PathBuf::from("/sys/fs/cgroup/freezer"),
        ];
        assert_eq!(
            cgroup_relative("/sys/fs/cgroup/unified/shoal-testnet/n1", &mounts),
            "/shoal-testnet/n1"
        );
        assert_eq!(
            cgroup_relative("/sys/fs/cgroup/freezer/shoal-testnet/n2/", &mounts),
            "/shoal-testnet/n2"
        );
        assert_eq!(cgroup_relative("/sys/fs/cgroup/x", &mounts), "/x");
        assert_eq!(cgroup_relative("shoal/n1", &mounts), "/shoal/n1");
        assert_eq!(
            container_cgroup("/shoal-testnet/n1", "b1", "web"),
            "/shoal-testnet/n1/pod-b1/web"
        );
    }

    #[test]
    fn list_output() {
        assert_eq!(parse_list(b"").unwrap(), vec![]);
        assert_eq!(parse_list(b"null\n").unwrap(), vec![]);
        let l = parse_list(br#"[{"id":"a","pid":5,"status":"running","bundle":"/b"}]"#).unwrap();
        assert_eq!(l[0].id, "a");
        assert_eq!(l[0].pid, 5);
        assert!(parse_list(b"{not json").is_err());
    }

    #[test]
    fn last_error_of_a_runc_log() {
        let log = "{\"level\":\"info\",\"msg\":\"x\"}\n{\"level\":\"error\",\"msg\":\"exec: \\\"nope\\\": executable file not found in $PATH\"}\nnot json\n";
        assert_eq!(
            last_error(log).as_deref(),
            Some("exec: \"nope\": executable file not found in $PATH")
        );
        assert_eq!(last_error("{\"level\":\"info\",\"msg\":\"x\"}"), None);
    }

    #[test]
    fn true_and_false_stand_in_for_runc() {
        let ok = RuncCli::new("/bin/true", "/nonexistent");
        assert!(ok.kill("c", "TERM").is_ok());
        assert_eq!(ok.list().unwrap(), vec![]);
        assert!(ok.start("c").is_ok());
        let bad = RuncCli::new("/bin/false", "/nonexistent");
        let err = bad.kill("c", "TERM").unwrap_err().to_string();
        assert!(err.contains("kill c TERM"), "{err}");
        assert!(bad.list().is_err());
        assert!(bad.delete("c", true).is_err());
        let missing = RuncCli::new("/nonexistent/runc", "/x");
        assert!(missing
            .list()
            .unwrap_err()
            .to_string()
            .contains("/nonexistent/runc"));
    }
}
