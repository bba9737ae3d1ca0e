//! The kubelet's side of local-path volumes that is not mounting (`config::claim_source`
//! resolves those): reclaiming. This node alone removes the directories of its own volumes,
//! and only those `storage::reclaimable` names (policy `Delete`, claim deleted, no pod here
//! mounting it); then it deletes the PersistentVolume object, still the same one. A crash in
//! between leaves the volume, and the next pass finishes (removing a missing directory is
//! not an error).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::plan::DesiredPod;
use crate::model::storage::{self, Volume, PVCS, PVS};
use crate::state::shared::Shared;

/// How often volumes are looked at for reclaiming.
const RECLAIM_EVERY: Duration = Duration::from_secs(5);

pub struct Reclaimer {
    root: PathBuf,
    last: Option<Instant>,
}

impl Reclaimer {
    pub fn new(root: PathBuf) -> Self {
        Reclaimer { root, last: None }
    }

    /// Looks for volumes to reclaim (at most every [`RECLAIM_EVERY`]) and removes them in a
    /// blocking task.
    pub fn tick(&mut self, shared: &Arc<Shared>, desired: &BTreeMap<String, DesiredPod>) {
        if self.last.is_some_and(|t| t.elapsed() < RECLAIM_EVERY) {
            return;
        }
        self.last = Some(Instant::now());
        let node = shared.node_name.clone();
        let (volumes, claim_uids) = shared.read(|d| {
            let volumes: Vec<Volume> = d
                .list_objects(PVS, None)
                .into_iter()
                .filter_map(|(_, v)| Volume::of(&v))
                .filter(|v| v.node == node)
                .collect();
            let uids: BTreeSet<String> = d
                .list_objects(PVCS, None)
                .into_iter()
                .filter_map(|(_, c)| c["metadata"]["uid"].as_str().map(str::to_string))
                .collect();
            (volumes, uids)
        });
        if volumes.is_empty() {
            return;
        }
        let mounted: BTreeSet<(String, String)> = desired
            .values()
            .flat_map(|d| {
                let ns = d.namespace();
                super::objects::claim_names(&d.pod)
                    .into_iter()
                    .map(move |c| (ns.clone(), c))
            })
            .collect();
        let uids: BTreeSet<&str> = claim_uids.iter().map(String::as_str).collect();
        let doomed: Vec<Volume> = storage::reclaimable(&node, &volumes, &uids, &mounted)
            .into_iter()
            .filter(|v| storage::is_plain_component(&v.dir_name()))
            .cloned()
            .collect();
        if doomed.is_empty() {
            return;
        }
        let root = self.root.clone();
        let shared = shared.clone();
        tokio::task::spawn_blocking(move || {
            for v in doomed {
                reclaim(&shared, &root, &v);
            }
        });
    }
}

fn reclaim(shared: &Shared, root: &std::path::Path, v: &Volume) {
    let dir = root.join(v.dir_name());
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(volume = %v.name, dir = %dir.display(), %e, "removing a released volume");
            return;
        }
    }
    let deleted = shared.write(|d| {
        let same = d
            .get_object(PVS, None, &v.name)?
            .and_then(|o| Volume::of(&o))
            .is_some_and(|o| o.node == v.node && o.claim_uid == v.claim_uid);
        if same {
            d.delete_object(PVS, None, &v.name)
        } else {
            Ok(false)
        }
    });
    match deleted {
        Ok(true) => {
            tracing::info!(volume = %v.name, dir = %dir.display(), "released volume deleted (reclaim policy Delete)")
        }
        Ok(false) => {}
        Err(e) => tracing::warn!(volume = %v.name, %e, "deleting a released volume"),
    }
}
