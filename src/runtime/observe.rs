//! What runs on this node, read back from the pod dirs (the same scan serves every kubelet
//! tick and adoption after an agent restart): each pod's meta, whether its sandbox lives
//! (pid *and* start time, so a reused pid is never ours), and per container the latest attempt
//! (creating, running, or exited with its `exit.json`) and the one before it; the pod's
//! network attachment (`network.json`: its address, adopted as is after a restart).

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};

use super::network::{PodNetwork, NETWORK_RECORD};
use super::sandbox::SANDBOX_RECORD;
use super::shim::{EXIT, SHIM_PID, STARTED};
use super::{read_json, ExitRecord, PodMeta, ProcessRecord, StartedRecord};
pub use crate::model::observed::{AttemptState, ObservedAttempt, ObservedContainer, ObservedPod};

/// Every pod dir under `pods_dir` with a readable `pod.json`; unreadable ones are logged and
/// skipped (the kubelet leaves them alone).
pub fn observe_all(pods_dir: &Path) -> BTreeMap<String, ObservedPod> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(pods_dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        match read_json::<PodMeta>(&dir.join("pod.json")) {
            Ok(Some(meta)) => {
                out.insert(meta.key.clone(), observe_pod(&dir, meta));
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(%e, "skipping a pod dir"),
        }
    }
    out
}

/// What runs on this node of pod `key` alone: `None` when its dir (or its `pod.json`) is gone
/// or belongs to another key.
pub fn observe_one(pods_dir: &Path, key: &str) -> Option<ObservedPod> {
    let dir = pods_dir.join(key);
    match read_json::<PodMeta>(&dir.join("pod.json")) {
        Ok(Some(meta)) if meta.key == key => Some(observe_pod(&dir, meta)),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(%e, "skipping a pod dir");
            None
        }
    }
}

pub fn observe_pod(dir: &Path, meta: PodMeta) -> ObservedPod {
    let sandbox = read_json::<ProcessRecord>(&dir.join(SANDBOX_RECORD))
        .ok()
        .flatten()
        .filter(ProcessRecord::alive);
    let mut containers = BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir(dir.join("containers")) {
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let mut restarts: Vec<u32> = std::fs::read_dir(entry.path())
                .map(|it| {
                    it.flatten()
                        .filter_map(|e| e.file_name().to_str()?.parse().ok())
                        .collect()
                })
                .unwrap_or_default();
            restarts.sort_unstable();
            let attempt = |n: u32| ObservedAttempt {
                restart: n,
                state: attempt_state(&entry.path().join(n.to_string())),
            };
            let Some(&latest) = restarts.last() else {
                continue;
            };
            let previous = restarts.iter().rev().nth(1).map(|&n| attempt(n));
            containers.insert(
                name,
                ObservedContainer {
                    latest: attempt(latest),
                    previous,
                },
            );
        }
    }
    let network = read_json::<PodNetwork>(&dir.join(NETWORK_RECORD))
        .ok()
        .flatten();
    ObservedPod {
        meta,
        sandbox,
        network,
        containers,
    }
}

/// The state of one attempt dir. A shim that died without `exit.json` (its node was killed)
/// leaves an attempt that is reported exited with code 255 (`Unknown`), unless its container
/// still runs.
pub fn attempt_state(dir: &Path) -> AttemptState {
    if let Ok(Some(exit)) = read_json::<ExitRecord>(&dir.join(EXIT)) {
        return AttemptState::Exited(exit);
    }
    let shim_alive = read_json::<ProcessRecord>(&dir.join(SHIM_PID))
        .ok()
        .flatten()
        .is_some_and(|p| p.alive());
    let started = read_json::<StartedRecord>(&dir.join(STARTED))
        .ok()
        .flatten();
    let modified = std::fs::metadata(dir)
        .and_then(|m| m.modified())
        .map(DateTime::<Utc>::from)
        .unwrap_or_default();
    match started {
        Some(s) if shim_alive || Path::new(&format!("/proc/{}", s.pid)).exists() => {
            AttemptState::Running {
                started_at: s.started_at,
            }
        }
        Some(s) => AttemptState::Exited(ExitRecord {
            exit_code: 255,
            signal: None,
            reason: "Unknown".into(),
            message: Some("the container's monitor is gone; its exit status was lost".into()),
            started_at: Some(s.started_at),
            finished_at: modified,
            oom_killed: false,
        }),
        // A fresh attempt dir whose shim has not written its pid yet counts as creating for a
        // short while.
        None if shim_alive || Utc::now() - modified < chrono::Duration::seconds(30) => {
            AttemptState::Creating
        }
        None => AttemptState::Exited(ExitRecord {
            exit_code: super::shim::START_ERROR_CODE,
            signal: None,
            reason: "StartError".into(),
            message: Some("the container's monitor exited before starting it".into()),
            started_at: None,
            finished_at: modified,
            oom_killed: false,
        }),
    }
}
