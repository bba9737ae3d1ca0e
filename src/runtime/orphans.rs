//! What this node holds that no pod accounts for, and its removal: pod dirs without a readable
//! `pod.json`, `shoal sandbox` processes whose pod dir is gone (or records another process),
//! `host-local` leases whose container id is no pod of this node, runc containers of unknown
//! pods and their cgroups. The kubelet runs it at start and periodically ([`Runtime::reap`]),
//! so a sandbox attempt that failed half-way or was abandoned never keeps its process, its
//! network namespace (held by that process) or its address.
//!
//! The decision ([`plan`]) is pure over the facts the shell gathers ([`Facts`]); a key is only
//! ever reaped when it is none of `known` (pods desired here, observed pod dirs, actions in
//! flight), so a sandbox being created right now is never touched.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::pods::Runtime;
use super::sandbox::SANDBOX_RECORD;
use super::{read_json, ProcessRecord};
use crate::model::network::CNI_NETWORK;

/// What exists on the node, by pod key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// Pod dirs (by name); `true` when `pod.json` is readable.
    pub dirs: BTreeMap<String, bool>,
    /// Live `shoal sandbox` processes of this node: (pid, the pod key of their `--dir`).
    pub sandboxes: Vec<(i32, String)>,
    /// Start time of each of those processes (so a reused pid is never killed).
    pub started: BTreeMap<i32, u64>,
    /// The pid each pod dir's `sandbox.json` records.
    pub recorded: BTreeMap<String, i32>,
    /// host-local lease files: (file name = address, container id = pod key).
    pub leases: Vec<(String, String)>,
    /// runc containers: (id, pod key it belongs to, if it names one).
    pub containers: Vec<(String, Option<String>)>,
}

/// One removal.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reap {
    /// SIGKILL a sandbox process (its network namespace goes with it).
    Sandbox { pid: i32, key: String },
    /// Release a lease (remove its file under host-local's lock).
    Lease { address: String, key: String },
    /// `runc delete --force`.
    Container { id: String },
    /// Remove a pod dir that has no readable `pod.json` (and the pod's cgroups).
    Dir { key: String },
}

/// The removals `facts` call for, given the pod keys that must not be touched.
pub fn plan(facts: &Facts, known: &BTreeSet<String>) -> Vec<Reap> {
    let mut out = Vec::new();
    // A pod dir with a readable pod.json is an observed pod: the planner stops and removes it.
    let observed = |k: &str| facts.dirs.get(k) == Some(&true);
    let keep = |k: &str| known.contains(k) || observed(k);
    for (pid, key) in &facts.sandboxes {
        let current = facts.recorded.get(key) == Some(pid);
        if !keep(key) || (!current && !known.contains(key)) {
            out.push(Reap::Sandbox {
                pid: *pid,
                key: key.clone(),
            });
        }
    }
    for (address, key) in &facts.leases {
        if !keep(key) {
            out.push(Reap::Lease {
                address: address.clone(),
                key: key.clone(),
            });
        }
    }
    for (id, key) in &facts.containers {
        if key.as_deref().is_none_or(|k| !keep(k)) {
            out.push(Reap::Container { id: id.clone() });
        }
    }
    for (key, readable) in &facts.dirs {
        if !readable && !known.contains(key) {
            out.push(Reap::Dir { key: key.clone() });
        }
    }
    out.sort();
    out
}

/// The pod key a runc container id belongs to: container ids are `<key>-<name>-<restart>`
/// (`pods::container_id`) and keys are uuids (binding ids, or pod uids), 36 characters.
fn container_key(id: &str) -> Option<String> {
    let key = id.get(..36)?;
    (id.as_bytes().get(36) == Some(&b'-')).then(|| key.to_string())
}

impl Runtime {
    /// Gathers the [`Facts`] of this node.
    pub fn orphan_facts(&self) -> Facts {
        let pods_dir = self.config.pods_dir();
        let mut facts = Facts::default();
        if let Ok(entries) = std::fs::read_dir(&pods_dir) {
            for e in entries.flatten() {
                let Some(name) = e.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                let dir = e.path();
                let readable = read_json::<super::PodMeta>(&dir.join("pod.json"))
                    .ok()
                    .flatten()
                    .is_some_and(|m| m.key == name);
                facts.dirs.insert(name.clone(), readable);
                if let Ok(Some(rec)) = read_json::<ProcessRecord>(&dir.join(SANDBOX_RECORD)) {
                    facts.recorded.insert(name, rec.pid);
                }
            }
        }
        facts.sandboxes = sandbox_processes(&self.config.shoal_binary, &pods_dir);
        facts.started = facts
            .sandboxes
            .iter()
            .filter_map(|(pid, _)| Some((*pid, super::proc_start_time(*pid)?)))
            .collect();
        if let Some(cni) = &self.config.cni {
            facts.leases = super::leases::list(&cni.ipam_dir.join(CNI_NETWORK));
        }
        facts.containers = self
            .runc_list_ids()
            .into_iter()
            .map(|id| {
                let key = container_key(&id);
                (id, key)
            })
            .collect();
        facts
    }

    /// Removes what [`plan`] finds orphaned (`known`: pod keys desired here or busy). Returns
    /// what was removed; failures are logged and retried at the next call.
    pub fn reap(&self, known: &BTreeSet<String>) -> Vec<Reap> {
        let facts = self.orphan_facts();
        let reaps = plan(&facts, known);
        for r in &reaps {
            let result = match r {
                Reap::Sandbox { pid, .. } => {
                    // Only the very process we looked at (pid and start time).
                    let same = facts
                        .started
                        .get(pid)
                        .is_some_and(|start| super::proc_start_time(*pid) == Some(*start));
                    if same {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(*pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                    Ok(())
                }
                Reap::Lease { address, key } => match &self.config.cni {
                    Some(cni) => {
                        super::leases::release_lease(&cni.ipam_dir.join(CNI_NETWORK), address, key)
                    }
                    None => Ok(()),
                },
                Reap::Container { id } => self.runc_delete_force(id),
                Reap::Dir { key } => {
                    super::runc::remove_pod_cgroups(&self.config.cgroup_parent, key);
                    self.remove_dir_of(key)
                }
            };
            if let Err(e) = result {
                tracing::warn!(%e, reap = ?r, "removing an orphan");
            }
        }
        reaps
    }
}

/// `shoal sandbox --dir <pods_dir>/<key> …` processes: (pid, key). Matched by the binary's
/// file and this node's pods dir, so another node's (or agent's) sandboxes never match.
fn sandbox_processes(binary: &Path, pods_dir: &Path) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    let binary_name = binary.file_name();
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let mut raw = Vec::new();
        let Ok(f) = std::fs::File::open(e.path().join("cmdline")) else {
            continue;
        };
        if f.take(8192).read_to_end(&mut raw).is_err() {
            continue;
        }
        let args: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
        if args.len() < 4 || args[1] != b"sandbox" || args[2] != b"--dir" {
            continue;
        }
        let exe = Path::new(std::ffi::OsStr::from_bytes(args[0]));
        if exe.file_name() != binary_name {
            continue;
        }
        let dir = PathBuf::from(std::ffi::OsStr::from_bytes(args[3]));
        if dir.parent() != Some(pods_dir) {
            continue;
        }
        if let Some(key) = dir.file_name().and_then(|k| k.to_str()) {
            out.push((pid, key.to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa";
    const B: &str = "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb";
    const C: &str = "cccccccc-cccc-4ccc-8ccc-cccccccccccc";

    fn known(keys: &[&str]) -> BTreeSet<String> {
        keys.iter().map(|k| k.to_string()).collect()
    }

    #[test]
    fn a_pod_that_is_known_or_observed_keeps_everything() {
        let mut f = Facts::default();
        f.dirs.insert(A.into(), true);
        f.recorded.insert(A.into(), 10);
        f.sandboxes.push((10, A.into()));
        f.leases.push(("10.244.0.2".into(), A.into()));
        f.containers
            .push((format!("{A}-app-0"), container_key(&format!("{A}-app-0"))));
        assert_eq!(
            plan(&f, &known(&[])),
            vec![],
            "observed: the planner stops it"
        );
        assert_eq!(plan(&f, &known(&[A])), vec![]);
    }

    #[test]
    fn what_no_pod_accounts_for_is_reaped() {
        let mut f = Facts::default();
        // B: its dir is gone, its sandbox, lease and container were left.
        f.sandboxes.push((20, B.into()));
        f.leases.push(("10.244.0.3".into(), B.into()));
        f.containers
            .push((format!("{B}-app-1"), container_key(&format!("{B}-app-1"))));
        // C: a dir without a readable pod.json.
        f.dirs.insert(C.into(), false);
        f.containers.push(("not-ours".into(), None));
        let got = plan(&f, &known(&[]));
        assert_eq!(
            got,
            vec![
                Reap::Sandbox {
                    pid: 20,
                    key: B.into()
                },
                Reap::Lease {
                    address: "10.244.0.3".into(),
                    key: B.into()
                },
                Reap::Container {
                    id: format!("{B}-app-1")
                },
                Reap::Container {
                    id: "not-ours".into()
                },
                Reap::Dir { key: C.into() },
            ]
        );
    }

    #[test]
    fn a_second_sandbox_of_an_observed_pod_is_reaped_but_not_while_it_is_being_created() {
        let mut f = Facts::default();
        f.dirs.insert(A.into(), true);
        f.recorded.insert(A.into(), 10);
        f.sandboxes.push((10, A.into()));
        f.sandboxes.push((11, A.into()));
        assert_eq!(
            plan(&f, &known(&[])),
            vec![Reap::Sandbox {
                pid: 11,
                key: A.into()
            }]
        );
        // Desired or busy: the creation in flight may not have written its record yet.
        assert_eq!(plan(&f, &known(&[A])), vec![]);
        // A dir being created (no pod.json yet) is left alone while its key is known.
        let mut g = Facts::default();
        g.dirs.insert(B.into(), false);
        assert_eq!(plan(&g, &known(&[B])), vec![]);
    }

    #[test]
    fn container_ids_name_their_pod() {
        assert_eq!(container_key(&format!("{A}-app-0")), Some(A.to_string()));
        assert_eq!(container_key("short-id"), None);
        assert_eq!(container_key(A), None);
    }
}
