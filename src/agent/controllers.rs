//! The controllers' shell: while this agent's view names it the scheduler leader (and its
//! membership has settled), runs the pure reconcile (`sched::reconcile`) after every change of
//! the cluster document, the view or pod readiness (status documents), at the time a plan
//! asked to be woken (`Plan::wake`), and at least once a second, and applies the plan — all cluster-document writes in one
//! `Shared::write` (one write-ahead-log append), scheduling records in this node's status
//! document, events through `Shared::record_event`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;

use crate::model::workload::{keys, EventType, SchedulingRecord};
use crate::model::MemberState;
use crate::sched::liveness::{classify_held, ViewState};
use crate::sched::settle::Settle;
use crate::sched::{
    self, LeaderCtx, Liveness, Plan, PodKey, SchedulingWrite, Snapshot, StatusRecords,
};
use crate::state::{Shared, View};

/// Reconcile at least this often while leading.
const TICK: Duration = Duration::from_secs(1);
/// After a change, wait this long for the rest of a burst (an `apply` of many objects).
const DEBOUNCE: Duration = Duration::from_millis(30);
/// Most events recorded per round (warnings first); a burst of placements would otherwise
/// churn the status document with hundreds of events at once.
const MAX_EVENTS_PER_ROUND: usize = 64;

/// The leader's view of every member, damped (`sched::liveness`): a flapping member gets no
/// new pods and keeps its pods until it has stayed dead for a full detection period; a member
/// whose kubelet reports runtime pressure gets no new pods either; a gone member that
/// announced a planned restart keeps its pods while its hold lasts (`sched::liveness::held`).
fn liveness(shared: &Shared, view: &View, me: &str) -> BTreeMap<String, Liveness> {
    let now = Utc::now();
    let pressured = super::backend::pressured_nodes(shared);
    let holds = super::backend::restart_holds(shared);
    let mut out: BTreeMap<String, Liveness> = view
        .members
        .iter()
        .map(|m| {
            let state = match m.state {
                MemberState::Alive => ViewState::Alive,
                MemberState::Suspect => ViewState::Suspect,
                MemberState::Dead | MemberState::Left => ViewState::Gone,
            };
            let recoveries = view.recoveries.get(&m.name).map_or(&[][..], Vec::as_slice);
            let since = view.since.get(&m.name).copied();
            let hold = holds.get(&m.name).map(|h| (h, m.incarnation));
            let mut l = classify_held(state, since, recoveries, hold, now);
            if l == Liveness::Alive && pressured.contains_key(&m.name) {
                l = Liveness::Suspect;
            }
            (m.name.clone(), l)
        })
        .collect();
    let me_live = if pressured.contains_key(me) {
        Liveness::Suspect
    } else {
        Liveness::Alive
    };
    out.insert(me.to_string(), me_live);
    out
}

/// This node's scheduling records (`sched/<ns>/<pod>` in its own status document).
fn own_records(shared: &Shared) -> BTreeMap<PodKey, SchedulingRecord> {
    shared.own_entries(keys::SCHEDULING_PREFIX)
}

/// Every node's pod status records (`pod/<ns>/<name>` of each status document), by pod.
fn status_records(shared: &Shared) -> StatusRecords {
    super::backend::workload_view(shared).pod_status
}

/// What the reconcile reads of the cluster document (every workload object, binding and
/// node), with the liveness and this node's scheduling records it was read with, and the
/// heads it was read at. Status documents change far more often than the cluster document
/// (every pod status write of every node), and of them only pods' readiness and endings are
/// inputs: a change of the status documents alone re-reads only those, against this.
struct Base {
    heads: u64,
    liveness: BTreeMap<String, Liveness>,
    records: BTreeMap<PodKey, SchedulingRecord>,
    snapshot: Snapshot,
}

impl Base {
    /// `cached` if it was read at `heads` with the same liveness and records, else a new read
    /// of the merged document.
    fn at(
        shared: &Shared,
        cached: Option<Base>,
        heads: u64,
        liveness: BTreeMap<String, Liveness>,
    ) -> Base {
        // Each on its own statement: a document guard must be dropped before the next lock.
        let records = own_records(shared);
        match cached {
            Some(c) if c.heads == heads && c.liveness == liveness && c.records == records => c,
            _ => {
                let snapshot =
                    shared.read(|doc| doc.workload_snapshot(liveness.clone(), records.clone()));
                Base {
                    heads,
                    liveness,
                    records,
                    snapshot,
                }
            }
        }
    }
}

/// What a round depends on; an unchanged input gives an empty plan, so the round is skipped.
/// Status documents change often (events, restarts); of them only pod readiness and pods
/// ending are inputs.
#[derive(PartialEq, Eq)]
struct Inputs {
    heads: u64,
    view: u64,
    liveness: BTreeMap<String, Liveness>,
    ready: BTreeMap<PodKey, chrono::DateTime<Utc>>,
    /// Pods that ended (Job pods): an input of the Job controller.
    finished: BTreeMap<PodKey, sched::Finished>,
}

/// Runs until `shutdown` resolves.
pub async fn run(shared: Arc<Shared>, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    let started = Instant::now();
    let mut changes = shared.subscribe();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut settle = Settle::default();
    let mut epoch = (u64::MAX, Instant::now());
    let mut last: Option<Inputs> = None;
    let mut cached: Option<Base> = None;
    // When the last plan said its decisions change with time alone (minReadySeconds).
    let mut wake: Option<chrono::DateTime<Utc>> = None;
    let mut leading = false;
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            changed = changes.changed() => {
                if changed.is_err() {
                    break;
                }
                tokio::time::sleep(DEBOUNCE).await;
                changes.borrow_and_update();
            }
            _ = tick.tick() => {}
        }
        let view = shared.view();
        if view.epoch != epoch.0 {
            epoch = (view.epoch, Instant::now());
        }
        let peers = view
            .members
            .iter()
            .filter(|m| m.name != shared.node_name && m.state == MemberState::Alive)
            .count();
        let settled = settle.may_act(started.elapsed(), epoch.1.elapsed(), peers);
        let leader = view.leader.as_deref() == Some(shared.node_name.as_str());
        if !(leader && settled) {
            if leading {
                tracing::info!(epoch = view.epoch, "no longer the scheduler leader");
                clear_records(&shared);
                leading = false;
                last = None;
                cached = None;
            }
            continue;
        }
        if !leading {
            tracing::info!(epoch = view.epoch, "acting as the scheduler leader");
            leading = true;
        }
        // Take office in the document, so that the others keep us while we live: only from a
        // recorded leader this view knows to be gone (or, after the start-up grace, does not
        // know at all: forgotten long ago), never from one a young, partial view lacks.
        let recorded = shared.read(|d| d.leader_record());
        let may_take_office = match recorded.as_deref() {
            None => true,
            Some(r) if r == shared.node_name => false,
            Some(r) => match view.members.iter().find(|m| m.name == r) {
                Some(m) => m.state.is_gone(),
                None => started.elapsed() >= sched::settle::STARTUP_GRACE,
            },
        };
        if may_take_office {
            let me = shared.node_name.clone();
            if let Err(e) = shared.write(|doc| doc.put_leader_record(&me).map(|_| ())) {
                tracing::warn!(%e, "recording this node as the leader in office");
            }
        }
        // The heads before the snapshot: a change in between makes the next round run again
        // rather than be skipped.
        let heads = shared.heads_digest();
        let live = liveness(&shared, &view, &shared.node_name);
        let base = Base::at(&shared, cached.take(), heads, live);
        let (ready, finished) = base.snapshot.readiness(&status_records(&shared));
        let inputs = Inputs {
            heads,
            view: view.view_hash,
            ready,
            finished,
            liveness: base.liveness.clone(),
        };
        let due = wake.is_some_and(|t| Utc::now() >= t);
        if last.as_ref() == Some(&inputs) && !due {
            cached = Some(base);
            continue;
        }
        let snapshot = Snapshot {
            ready: inputs.ready.clone(),
            finished: inputs.finished.clone(),
            ..base.snapshot.clone()
        };
        cached = Some(base);
        let outcome = round(&shared, &view, snapshot).await;
        wake = outcome.and_then(|w| w);
        // After a failed write the same inputs must be tried again.
        last = outcome.is_some().then_some(inputs);
    }
}

/// One reconcile of `snapshot` and the application of its plan. Returns `None` when something
/// was not written, else the plan's wake-up time.
async fn round(
    shared: &Arc<Shared>,
    view: &View,
    snapshot: Snapshot,
) -> Option<Option<chrono::DateTime<Utc>>> {
    let ctx = LeaderCtx {
        node: shared.node_name.clone(),
        epoch: view.epoch,
        view: view.view_hash,
        now: Utc::now(),
        seed: rand::random(),
    };
    let started = Instant::now();
    shared.metrics.controller_rounds.inc();
    let plan = match tokio::task::spawn_blocking(move || sched::reconcile(&snapshot, &ctx)).await {
        Ok(plan) => plan,
        Err(e) => {
            tracing::error!(%e, "the reconcile failed");
            return None;
        }
    };
    if plan.is_empty() {
        return Some(plan.wake);
    }
    let (puts, deletes, binds, unbinds) = plan.counts();
    tracing::info!(
        puts,
        deletes,
        binds,
        unbinds,
        unschedulable = plan.scheduling.len(),
        took_ms = started.elapsed().as_millis() as u64,
        "reconcile"
    );
    let applied = apply(shared, &plan);
    shared.metrics.reconciled(binds, started.elapsed());
    applied.then_some(plan.wake)
}

fn apply(shared: &Shared, plan: &Plan) -> bool {
    let mut ok = true;
    if !plan.writes.is_empty() {
        if let Err(e) = shared.write(|doc| doc.apply_writes(&plan.writes)) {
            tracing::error!(%e, "applying the controllers' writes failed");
            ok = false;
        }
    }
    if !plan.scheduling.is_empty() {
        let result = shared.write_status(|doc| {
            for w in &plan.scheduling {
                match w {
                    SchedulingWrite::Put {
                        namespace,
                        pod,
                        record,
                    } => {
                        doc.put(&keys::scheduling(namespace, pod), record)?;
                    }
                    SchedulingWrite::Delete { namespace, pod } => {
                        doc.delete(&keys::scheduling(namespace, pod))?;
                    }
                }
            }
            Ok(())
        });
        if let Err(e) = result {
            tracing::error!(%e, "writing scheduling records failed");
            ok = false;
        }
    }
    let mut events: Vec<&sched::PlannedEvent> = plan.events.iter().collect();
    events.sort_by_key(|e| e.event_type != EventType::Warning);
    let dropped = events.len().saturating_sub(MAX_EVENTS_PER_ROUND);
    for e in events.into_iter().take(MAX_EVENTS_PER_ROUND) {
        shared.record_event(&e.involved, e.event_type, e.reason, &e.message, e.component);
    }
    if dropped > 0 {
        tracing::debug!(dropped, "events not recorded this round");
    }
    ok
}

/// A node that stops leading removes its scheduling records: the new leader writes its own.
fn clear_records(shared: &Shared) {
    let stale = own_records(shared);
    if stale.is_empty() {
        return;
    }
    let result = shared.write_status(|doc| {
        for (ns, pod) in stale.keys() {
            doc.delete(&keys::scheduling(ns, pod))?;
        }
        Ok(())
    });
    if let Err(e) = result {
        tracing::warn!(%e, "removing stale scheduling records failed");
    }
}
