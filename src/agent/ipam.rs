//! The pod-CIDR shell: once this node's record is in the cluster document, keeps exactly one
//! `podcidr/<index>` claim of its own (the pure decision is `model::ipam::plan`), re-checking
//! after document changes (at most every [`MIN_INTERVAL`]) — a claim lost to a concurrent
//! claimer is replaced by a new one.

use std::sync::Arc;
use std::time::Duration;

use crate::model::ipam;
use crate::state::Shared;

/// At most one round this often, however fast the document changes.
const MIN_INTERVAL: Duration = Duration::from_millis(500);
/// A round at least this often, even without changes.
const TICK: Duration = Duration::from_secs(10);

/// What the last round saw, so each state is logged once.
#[derive(Default)]
struct Logged {
    cidr: Option<String>,
    problem: Option<String>,
}

/// One round: plan from the current document, and apply the plan (re-planned under the write
/// lock, so a change merged in between is never overwritten by a stale decision).
fn round(shared: &Shared, logged: &mut Logged) {
    let me = shared.node_name.as_str();
    let planned = shared.read(|doc| {
        let config = doc.pod_cidr_config()?;
        // None: not registered yet.
        let uid = doc.node(me).ok().flatten().map(|r| r.uid)?;
        let (claims, nodes) = doc.pod_cidr_inputs();
        let plan = ipam::plan(&config, &claims, &nodes, me, &uid);
        Some((config, uid, plan))
    });
    let Some((config, uid, mut plan)) = planned else {
        return;
    };
    if plan.has_writes() {
        let written = shared.write(|d| {
            let (claims, nodes) = d.pod_cidr_inputs();
            let plan = ipam::plan(&config, &claims, &nodes, me, &uid);
            d.apply_pod_cidr_plan(&plan, me, &uid)?;
            Ok(plan)
        });
        match written {
            Ok(p) => plan = p,
            Err(e) => {
                tracing::error!(%e, "writing the pod-CIDR claim failed");
                return;
            }
        }
    }
    match (&plan.index, &plan.exhausted) {
        (Some(index), _) => {
            let cidr = config.subnet(*index).unwrap_or_default();
            if logged.cidr.as_deref() != Some(cidr.as_str()) {
                match &logged.cidr {
                    None => tracing::info!(%cidr, "pod CIDR claimed"),
                    Some(old) => {
                        tracing::warn!(%old, %cidr, "pod CIDR claim lost to another node; claimed another")
                    }
                }
                logged.cidr = Some(cidr);
            }
            logged.problem = None;
        }
        (None, Some(why)) => {
            if logged.problem.as_deref() != Some(why.as_str()) {
                tracing::error!(space = %config, "{why}");
                logged.problem = Some(why.clone());
            }
            logged.cidr = None;
        }
        (None, None) => {}
    }
}

/// Runs until `stop` resolves.
pub async fn run(shared: Arc<Shared>, stop: impl std::future::Future<Output = ()>) {
    let mut logged = Logged::default();
    super::rounds(&shared, stop, MIN_INTERVAL, TICK, || {
        round(&shared, &mut logged);
        std::future::ready(())
    })
    .await;
}
