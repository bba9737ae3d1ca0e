//! The Job controller (batch/v1), pure: from a Job and the outcomes of its pods to the pods it
//! must create or delete, and the status the API computes on read ([`JobState`]). A Job of
//! `completions = N` owns indexes `0..N` (NonIndexed Jobs too, internally); index `i` runs as
//! attempts `0, 1, …`, each a pod whose name, uid and content are functions of (Job uid, `i`,
//! attempt), so two leaders that both start an attempt write the same pod, never two. An index
//! is done once one of its pods succeeded; a failure starts the next attempt after Kubernetes'
//! back-off, until more pods failed than `backoffLimit`. Pods are kept until the Job goes
//! (`ttlSecondsAfterFinished`, or a delete), so the counts stay computable from them.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Value};

use super::hash::{derived_uid, hash64, safe_suffix};
use super::object::{self, controller};
use super::snapshot::{LeaderCtx, PlannedEvent, PodKey, Write};
use super::{Finished, Working};
use crate::model::backoff::Backoff;
use crate::model::workload::{EventReason, EventType, InvolvedObject, JOBS, PODS, SLOT_ANNOTATION};

/// `batch.kubernetes.io/job-completion-index`: annotation and label of an Indexed Job's pods.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
/// The attempt of an index a pod runs (0 for the first).
pub const ATTEMPT_ANNOTATION: &str = "shoal.io/attempt";
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";
pub const CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";
/// Most completions one Job may ask for.
pub const MAX_COMPLETIONS: i64 = 100_000;
/// Kubernetes' pod failure back-off: 10 s, doubled per failure, at most 6 min.
const BACKOFF: Backoff = Backoff {
    initial: 10,
    max: 360,
};

/// The spec fields the controller reads, defaulted as the API does.
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    pub completions: i64,
    pub parallelism: i64,
    pub indexed: bool,
    pub backoff_limit: i64,
    pub active_deadline: Option<i64>,
    pub ttl: Option<i64>,
    pub suspend: bool,
    /// `podFailurePolicy.rules`, in order (the first that matches a failed pod decides).
    pub failure_rules: Vec<Rule>,
    /// `backoffLimitPerIndex` (Indexed Jobs): an index fails after more failures than this.
    pub backoff_limit_per_index: Option<i64>,
    /// `maxFailedIndexes`: the Job fails once more indexes than this failed.
    pub max_failed_indexes: Option<i64>,
}

impl Params {
    /// `None` for a Job the controller cannot run (no template, negative numbers).
    pub fn of(job: &Value) -> Option<Params> {
        let spec = &job["spec"];
        spec["template"].as_object()?;
        let int = |f: &str, default: i64| -> Option<i64> {
            match spec.get(f) {
                None | Some(Value::Null) => Some(default),
                Some(v) => v.as_i64().filter(|n| *n >= 0),
            }
        };
        let opt = |f: &str| spec[f].as_i64().filter(|n| *n >= 0);
        let indexed = spec["completionMode"] == "Indexed";
        let per_index = opt("backoffLimitPerIndex").filter(|_| indexed);
        Some(Params {
            completions: int("completions", 1)?.min(MAX_COMPLETIONS),
            parallelism: int("parallelism", 1)?,
            indexed,
            // Kubernetes: with a per-index limit the Job-wide one defaults to "no limit".
            backoff_limit: int(
                "backoffLimit",
                if per_index.is_some() {
                    i64::from(i32::MAX)
                } else {
                    6
                },
            )?,
            active_deadline: opt("activeDeadlineSeconds"),
            ttl: opt("ttlSecondsAfterFinished"),
            suspend: spec["suspend"].as_bool().unwrap_or(false),
            failure_rules: spec["podFailurePolicy"]["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Rule::of)
                .collect(),
            backoff_limit_per_index: per_index,
            max_failed_indexes: opt("maxFailedIndexes").filter(|_| per_index.is_some()),
        })
    }
}

/// How a pod of a Job ended, if it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Active,
    Succeeded(Option<DateTime<Utc>>),
    Failed(Option<DateTime<Utc>>),
}

/// What a failed pod's status holds that a `podFailurePolicy` rule can match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Failure {
    /// `(container, exit code)` of every terminated container: app containers first, then
    /// init containers (the order Kubernetes searches them in).
    pub exits: Vec<(String, i32)>,
    /// `(type, status)` of the pod's conditions.
    pub conditions: Vec<(String, String)>,
}

/// The action of a `podFailurePolicy` rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// The Job fails at once (reason `PodFailurePolicy`).
    FailJob,
    /// The pod's index fails at once (needs `backoffLimitPerIndex`).
    FailIndex,
    /// The failure is not counted (not in `status.failed`, no back-off): the index runs again.
    Ignore,
    /// Counted, as without a policy.
    Count,
}

/// What a rule matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum On {
    /// `onExitCodes`: a terminated container (of that name, if given) whose non-zero exit code
    /// is (`In`) or is not (`NotIn`) among `values`.
    ExitCodes {
        container: Option<String>,
        not_in: bool,
        values: Vec<i32>,
    },
    /// `onPodConditions`: the pod has one of these `(type, status)` conditions.
    Conditions(Vec<(String, String)>),
}

/// One `podFailurePolicy` rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub action: Action,
    pub on: On,
}

impl Rule {
    /// A rule as the API admitted it (`None` for one it would have refused).
    pub fn of(rule: &Value) -> Option<Rule> {
        let action = match rule["action"].as_str()? {
            "FailJob" => Action::FailJob,
            "FailIndex" => Action::FailIndex,
            "Ignore" => Action::Ignore,
            "Count" => Action::Count,
            _ => return None,
        };
        let codes = &rule["onExitCodes"];
        let on = if codes.is_object() {
            On::ExitCodes {
                container: codes["containerName"].as_str().map(str::to_string),
                not_in: match codes["operator"].as_str()? {
                    "In" => false,
                    "NotIn" => true,
                    _ => return None,
                },
                values: codes["values"]
                    .as_array()?
                    .iter()
                    .filter_map(|v| i32::try_from(v.as_i64()?).ok())
                    .collect(),
            }
        } else {
            On::Conditions(
                rule["onPodConditions"]
                    .as_array()?
                    .iter()
                    .filter_map(|c| {
                        let kind = c["type"].as_str()?.to_string();
                        let status = c["status"].as_str().unwrap_or("True").to_string();
                        Some((kind, status))
                    })
                    .collect(),
            )
        };
        Some(Rule { action, on })
    }

    /// What in `f` this rule matches, as Kubernetes words it in a Job's `Failed` condition
    /// (`Container main for pod ns/p failed with exit code 42`), or `None`.
    fn matches(&self, f: &Failure, pod: &PodKey) -> Option<String> {
        match &self.on {
            On::ExitCodes {
                container,
                not_in,
                values,
            } => f
                .exits
                .iter()
                .find(|(name, code)| {
                    *code != 0
                        && container.as_ref().is_none_or(|c| c == name)
                        && values.contains(code) != *not_in
                })
                .map(|(name, code)| {
                    format!(
                        "Container {name} for pod {}/{} failed with exit code {code}",
                        pod.0, pod.1
                    )
                }),
            On::Conditions(wanted) => f
                .conditions
                .iter()
                .find(|c| wanted.contains(c))
                .map(|(kind, _)| format!("Pod {}/{} has condition {kind}", pod.0, pod.1)),
        }
    }
}

/// The first rule of `rules` matching a failed pod: its action, and the message of a
/// `FailJob`. No rule matching counts the failure (`Count`).
pub fn action_of(rules: &[Rule], pod: &JobPod) -> (Action, Option<String>) {
    for (i, rule) in rules.iter().enumerate() {
        if let Some(what) = rule.matches(&pod.failure, &pod.key) {
            let action = match rule.action {
                Action::FailJob => "FailJob",
                Action::FailIndex => "FailIndex",
                Action::Ignore => "Ignore",
                Action::Count => "Count",
            };
            return (
                rule.action,
                Some(format!("{what} matching {action} rule at index {i}")),
            );
        }
    }
    (Action::Count, None)
}

/// A pod's outcome and failure facts from what ended it (`None`: still running). A pod
/// deleted before it ended (`terminating`) counts as a failure, as Kubernetes counts it.
pub fn outcome_of(finished: Option<&Finished>, terminating: bool) -> (Outcome, Failure) {
    match finished {
        Some(f) if f.succeeded => (Outcome::Succeeded(f.at), Failure::default()),
        Some(f) => (Outcome::Failed(f.at), f.failure.clone()),
        None if terminating => (Outcome::Failed(None), Failure::default()),
        None => (Outcome::Active, Failure::default()),
    }
}

/// One pod of a Job, as the controller (from the snapshot) and the API (from served pods) see it.
#[derive(Clone, Debug)]
pub struct JobPod {
    pub key: PodKey,
    pub index: usize,
    pub attempt: u32,
    pub created: Option<DateTime<Utc>>,
    pub outcome: Outcome,
    /// What its status says, when it failed (for `podFailurePolicy`).
    pub failure: Failure,
    /// The pod is Ready (the API's `status.ready`).
    pub ready: bool,
}

/// How a Job ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Ending {
    /// `Complete` or `Failed`.
    pub condition: &'static str,
    pub reason: &'static str,
    pub message: String,
    pub at: DateTime<Utc>,
}

/// A Job's state, counted over its pods: what the API serves as `status` and what the
/// controller acts on.
#[derive(Clone, Debug, PartialEq)]
pub struct JobState {
    pub succeeded: i64,
    pub failed: i64,
    pub active: i64,
    pub ready: i64,
    pub completed: BTreeSet<usize>,
    /// Indexes that failed for good (`backoffLimitPerIndex`, or a `FailIndex` rule).
    pub failed_indexes: BTreeSet<usize>,
    pub start: Option<DateTime<Utc>>,
    pub ending: Option<Ending>,
    /// The time the Job's decisions change with no other input (deadline, back-off, ttl).
    pub wake: Option<DateTime<Utc>>,
}

/// Kubernetes' back-off before the next pod after `failures` failed pods.
pub fn backoff(failures: i64) -> Duration {
    let failures = u32::try_from(failures.max(0)).unwrap_or(u32::MAX);
    Duration::seconds(BACKOFF.after(failures))
}

fn timestamp(v: &Value) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(v.as_str()?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// From a Kubernetes `PodStatus` (JSON): whether the pod has ended, and when (the latest
/// `finishedAt` of its containers).
pub fn finished(status: &Value) -> Option<Finished> {
    let succeeded = match status["phase"].as_str()? {
        "Succeeded" => true,
        "Failed" => false,
        _ => return None,
    };
    let at = status["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| timestamp(&c["state"]["terminated"]["finishedAt"]))
        .max();
    let mut failure = Failure::default();
    if !succeeded {
        for list in ["containerStatuses", "initContainerStatuses"] {
            for c in status[list].as_array().into_iter().flatten() {
                let code = c["state"]["terminated"]["exitCode"].as_i64();
                if let Some(code) = code.and_then(|c| i32::try_from(c).ok()) {
                    let name = c["name"].as_str().unwrap_or_default().to_string();
                    failure.exits.push((name, code));
                }
            }
        }
        for c in status["conditions"].as_array().into_iter().flatten() {
            if let (Some(kind), Some(st)) = (c["type"].as_str(), c["status"].as_str()) {
                failure.conditions.push((kind.to_string(), st.to_string()));
            }
        }
    }
    Some(Finished {
        succeeded,
        at,
        failure,
    })
}

/// `(index, attempt)` of a pod, from its annotations.
pub fn index_of(pod: &Value) -> Option<(usize, u32)> {
    let a = &pod["metadata"]["annotations"];
    let index = a[SLOT_ANNOTATION].as_str()?.parse().ok()?;
    let attempt = a[ATTEMPT_ANNOTATION].as_str()?.parse().ok()?;
    Some((index, attempt))
}

/// The name of the pod of attempt `attempt` of index `index` of Job `job` (uid `uid`):
/// `<job>-<index>-<suffix>` when Indexed (as Kubernetes), else `<job>-<suffix>`.
pub fn pod_name(job: &str, uid: &str, indexed: bool, index: usize, attempt: u32) -> String {
    let mut prefix = if indexed {
        format!("{job}-{index}-")
    } else {
        format!("{job}-")
    };
    if prefix.len() > 58 {
        let mut cut = 57;
        while !prefix.is_char_boundary(cut) {
            cut -= 1;
        }
        prefix.truncate(cut);
        prefix.push('-');
    }
    let h = hash64(&["shoal-job", uid, &index.to_string(), &attempt.to_string()]);
    format!("{prefix}{}", safe_suffix(h, 5))
}

/// Kubernetes' generated selector (unless `spec.manualSelector` or a selector is given): a
/// selector on the Job's uid, and the pod labels it needs in the template
/// (`batch.kubernetes.io/controller-uid`, `batch.kubernetes.io/job-name`, `controller-uid`,
/// `job-name`). Used by the API on create and by the CronJob controller.
pub fn generate_selector(job: &mut Value) {
    let uid = object::uid(job).to_string();
    let name = object::name(job).to_string();
    let spec = &mut job["spec"];
    if !spec.is_object()
        || spec["manualSelector"].as_bool() == Some(true)
        || !spec["selector"].is_null()
        || !spec["template"].is_object()
        || uid.is_empty()
    {
        return;
    }
    spec["selector"] = json!({"matchLabels": {CONTROLLER_UID_LABEL: uid}});
    if !spec["template"]["metadata"].is_object() {
        spec["template"]["metadata"] = json!({});
    }
    let meta = &mut spec["template"]["metadata"];
    if !meta["labels"].is_object() {
        meta["labels"] = json!({});
    }
    for (k, v) in [
        (CONTROLLER_UID_LABEL, &uid),
        (JOB_NAME_LABEL, &name),
        ("controller-uid", &uid),
        ("job-name", &name),
    ] {
        meta["labels"][k] = json!(v);
    }
}

/// The Job's state from its pods at `now`.
pub fn state(job: &Value, p: &Params, pods: &[JobPod], now: DateTime<Utc>) -> JobState {
    let created = timestamp(&job["metadata"]["creationTimestamp"]);
    let fallback = created.unwrap_or(DateTime::UNIX_EPOCH);
    let mut completed = BTreeSet::new();
    let mut complete_at: Option<DateTime<Utc>> = None;
    let mut failed = 0;
    let mut failures_at: Vec<Option<DateTime<Utc>>> = Vec::new();
    let mut per_index: BTreeMap<usize, i64> = BTreeMap::new();
    let mut failed_indexes = BTreeSet::new();
    let mut fail_job: Option<Ending> = None;
    let mut active = 0;
    let mut ready = 0;
    let n = p.completions as usize;
    for pod in pods {
        match pod.outcome {
            Outcome::Succeeded(at) if pod.index < n => {
                if completed.insert(pod.index) || at > complete_at {
                    complete_at = complete_at.max(at);
                }
            }
            Outcome::Succeeded(_) => {}
            Outcome::Failed(at) => {
                let (action, message) = action_of(&p.failure_rules, pod);
                match action {
                    Action::Ignore => continue,
                    Action::FailJob => {
                        let at = at.unwrap_or(fallback);
                        if fail_job.as_ref().is_none_or(|e| at < e.at) {
                            fail_job = Some(Ending {
                                condition: "Failed",
                                reason: "PodFailurePolicy",
                                message: message.unwrap_or_default(),
                                at,
                            });
                        }
                    }
                    Action::FailIndex if p.backoff_limit_per_index.is_some() => {
                        failed_indexes.insert(pod.index);
                    }
                    Action::FailIndex | Action::Count => {
                        if let Some(limit) = p.backoff_limit_per_index {
                            let count = per_index.entry(pod.index).or_insert(0);
                            *count += 1;
                            if *count > limit {
                                failed_indexes.insert(pod.index);
                            }
                        }
                    }
                }
                failed += 1;
                failures_at.push(at);
            }
            Outcome::Active => {
                active += 1;
                ready += i64::from(pod.ready);
            }
        }
    }
    failed_indexes.retain(|i| *i < n && !completed.contains(i));
    let start = if p.suspend {
        None
    } else {
        pods.iter().filter_map(|p| p.created).min().or(created)
    };
    failures_at.sort();
    let last_failure = failures_at.last().copied().flatten().unwrap_or(fallback);
    let mut endings: Vec<Ending> = fail_job.into_iter().collect();
    if completed.len() == n {
        endings.push(Ending {
            condition: "Complete",
            reason: "CompletionsReached",
            message: "Reached expected number of succeeded pods".into(),
            at: complete_at.unwrap_or(fallback),
        });
    }
    if failed > p.backoff_limit {
        let at = failures_at[p.backoff_limit as usize].unwrap_or(fallback);
        endings.push(Ending {
            condition: "Failed",
            reason: "BackoffLimitExceeded",
            message: "Job has reached the specified backoff limit".into(),
            at,
        });
    }
    if p.max_failed_indexes
        .is_some_and(|max| failed_indexes.len() as i64 > max)
    {
        endings.push(Ending {
            condition: "Failed",
            reason: "MaxFailedIndexesExceeded",
            message: "Job has exceeded the specified maximal number of failed indexes".into(),
            at: last_failure,
        });
    } else if !failed_indexes.is_empty() && completed.len() + failed_indexes.len() == n {
        endings.push(Ending {
            condition: "Failed",
            reason: "FailedIndexes",
            message: "Job has failed indexes".into(),
            at: last_failure,
        });
    }
    let mut wake = None;
    if let (Some(start), Some(deadline)) = (start, p.active_deadline) {
        let at = start + Duration::seconds(deadline);
        if at <= now {
            endings.push(Ending {
                condition: "Failed",
                reason: "DeadlineExceeded",
                message: "Job was active longer than specified deadline".into(),
                at,
            });
        } else {
            wake = Some(at);
        }
    }
    // The earliest ending wins (a completion after the deadline is too late).
    let ending = endings.into_iter().min_by_key(|e| e.at);
    if ending.is_some() {
        wake = None;
    }
    JobState {
        succeeded: completed.len() as i64,
        failed,
        active,
        ready,
        completed,
        failed_indexes,
        start,
        ending,
        wake,
    }
}

/// `completedIndexes` as Kubernetes writes it: `1,3-5,7`.
pub fn index_ranges(indexes: &BTreeSet<usize>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut iter = indexes.iter().copied().peekable();
    while let Some(first) = iter.next() {
        let mut last = first;
        while iter.peek() == Some(&(last + 1)) {
            last = iter.next().unwrap_or(last);
        }
        out.push(if first == last {
            first.to_string()
        } else {
            format!("{first}-{last}")
        });
    }
    out.join(",")
}

fn involved(job: &Value) -> InvolvedObject {
    InvolvedObject {
        api_version: "batch/v1".into(),
        kind: "Job".into(),
        namespace: object::namespace(job).to_string(),
        name: object::name(job).to_string(),
        uid: object::uid(job).to_string(),
    }
}

fn new_pod(
    job: &Value,
    p: &Params,
    name: &str,
    index: usize,
    attempt: u32,
    ctx: &LeaderCtx,
) -> Value {
    let template = &job["spec"]["template"];
    let mut annotations = match &template["metadata"]["annotations"] {
        a @ Value::Object(_) => a.clone(),
        _ => json!({}),
    };
    annotations[SLOT_ANNOTATION] = json!(index.to_string());
    annotations[ATTEMPT_ANNOTATION] = json!(attempt.to_string());
    let mut labels = match &template["metadata"]["labels"] {
        l @ Value::Object(_) => l.clone(),
        _ => json!({}),
    };
    let mut spec = match &template["spec"] {
        s @ Value::Object(_) => s.clone(),
        _ => json!({}),
    };
    if p.indexed {
        annotations[COMPLETION_INDEX] = json!(index.to_string());
        labels[COMPLETION_INDEX] = json!(index.to_string());
        for list in ["initContainers", "containers"] {
            for c in spec[list].as_array_mut().into_iter().flatten() {
                if !c["env"].is_array() {
                    c["env"] = json!([]);
                }
                if let Some(env) = c["env"].as_array_mut() {
                    env.retain(|e| e["name"] != "JOB_COMPLETION_INDEX");
                    env.push(json!({"name": "JOB_COMPLETION_INDEX", "value": index.to_string()}));
                }
            }
        }
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "generateName": format!("{}-", object::name(job)),
            "namespace": object::namespace(job),
            "uid": derived_uid("Pod", object::uid(job), name),
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": object::owner_reference_of(job, "batch/v1", "Job"),
            "creationTimestamp": object::timestamp(ctx.now),
            "resourceVersion": object::resource_version(ctx.now),
            "generation": 1,
        },
        "spec": spec,
    })
}

/// The pods of each Job (by Job uid) with their outcomes, from the working set. A pod being
/// deleted counts as failed at once, unless its Job's `podReplacementPolicy` is `Failed`
/// (`replace_when_failed`: it stays active until it ends).
fn job_pods(
    w: &Working<'_>,
    replace_when_failed: &BTreeSet<&str>,
) -> BTreeMap<String, Vec<JobPod>> {
    let mut out: BTreeMap<String, Vec<JobPod>> = BTreeMap::new();
    for (key, pod) in &w.pods {
        let Some(("Job", owner)) = controller(pod) else {
            continue;
        };
        let Some((index, attempt)) = index_of(pod) else {
            continue;
        };
        // Deleted before it ended: a failure (as Kubernetes counts it), replaced at once.
        let terminating = object::is_terminating(pod) && !replace_when_failed.contains(owner);
        let (outcome, failure) = outcome_of(w.finished.get(key), terminating);
        out.entry(owner.to_string()).or_default().push(JobPod {
            key: key.clone(),
            index,
            attempt,
            created: timestamp(&pod["metadata"]["creationTimestamp"]),
            outcome,
            failure,
            ready: false,
        });
    }
    out
}

/// Runs the Job controller over `jobs`: creates and deletes pods in `w`, deletes Jobs whose
/// `ttlSecondsAfterFinished` passed (except those in `keep`: the newest Job of each CronJob). Returns the earliest time a decision changes by itself.
pub(crate) fn reconcile(
    jobs: &[Value],
    keep: &BTreeSet<String>,
    w: &mut Working<'_>,
    ctx: &LeaderCtx,
    writes: &mut Vec<Write>,
    events: &mut Vec<PlannedEvent>,
) -> Option<DateTime<Utc>> {
    let replace_when_failed: BTreeSet<&str> = jobs
        .iter()
        .filter(|j| j["spec"]["podReplacementPolicy"] == "Failed")
        .map(object::uid)
        .collect();
    let mut by_job = job_pods(w, &replace_when_failed);
    let mut wake: Option<DateTime<Utc>> = None;
    let mut soon = |t: DateTime<Utc>| wake = Some(wake.map_or(t, |w: DateTime<Utc>| w.min(t)));
    let mut deletes: Vec<PodKey> = Vec::new();
    let mut creates: Vec<(PodKey, Value)> = Vec::new();
    for job in jobs.iter().filter(|j| object::is_valid(j)) {
        let Some(p) = Params::of(job) else {
            continue;
        };
        let pods = by_job.remove(object::uid(job)).unwrap_or_default();
        let st = state(job, &p, &pods, ctx.now);
        if let Some(t) = st.wake {
            soon(t);
        }
        let ns = object::namespace(job).to_string();
        if let Some(ending) = &st.ending {
            for pod in pods.iter().filter(|p| p.outcome == Outcome::Active) {
                deletes.push(pod.key.clone());
            }
            if let Some(ttl) = p.ttl.filter(|_| !keep.contains(object::uid(job))) {
                let at = ending.at + Duration::seconds(ttl);
                if at <= ctx.now {
                    writes.push(Write::DeleteObject {
                        resource: JOBS,
                        namespace: ns.clone(),
                        name: object::name(job).to_string(),
                    });
                } else {
                    soon(at);
                }
            }
            continue;
        }
        // One active pod per unfinished index at most (the lowest attempt is kept: two
        // leaders cut off from each other may each have started one); none for a done index.
        let mut running: BTreeMap<usize, u32> = BTreeMap::new();
        let mut last_attempt: BTreeMap<usize, u32> = BTreeMap::new();
        let mut sorted: Vec<&JobPod> = pods.iter().collect();
        sorted.sort_by_key(|p| (p.index, p.attempt));
        let mut last_failure: Option<DateTime<Utc>> = None;
        // Per index (for `backoffLimitPerIndex`): counted failures and the last one.
        let mut index_failures: BTreeMap<usize, (i64, Option<DateTime<Utc>>)> = BTreeMap::new();
        for pod in &sorted {
            let e = last_attempt.entry(pod.index).or_insert(pod.attempt);
            *e = (*e).max(pod.attempt);
            if let Outcome::Failed(at) = pod.outcome {
                if action_of(&p.failure_rules, pod).0 != Action::Ignore {
                    last_failure = last_failure.max(at);
                    let f = index_failures.entry(pod.index).or_default();
                    f.0 += 1;
                    f.1 = f.1.max(at);
                }
            }
            if pod.outcome != Outcome::Active {
                continue;
            }
            let extra = p.suspend
                || pod.index >= p.completions as usize
                || st.completed.contains(&pod.index)
                || st.failed_indexes.contains(&pod.index)
                || running.contains_key(&pod.index);
            if extra {
                deletes.push(pod.key.clone());
            } else {
                running.insert(pod.index, pod.attempt);
            }
        }
        if p.suspend {
            continue;
        }
        let mut active = running.len() as i64;
        if active >= p.parallelism {
            continue;
        }
        // Back-off after failures: no new pod before the last failure plus the delay (per
        // index with `backoffLimitPerIndex`, below).
        if st.failed > 0 && p.backoff_limit_per_index.is_none() {
            let at = last_failure.unwrap_or(DateTime::UNIX_EPOCH) + backoff(st.failed);
            if at > ctx.now {
                soon(at);
                continue;
            }
        }
        let name = object::name(job);
        let uid = object::uid(job);
        for index in 0..p.completions as usize {
            if active >= p.parallelism {
                break;
            }
            if st.completed.contains(&index)
                || st.failed_indexes.contains(&index)
                || running.contains_key(&index)
            {
                continue;
            }
            if p.backoff_limit_per_index.is_some() {
                if let Some((failures, last)) = index_failures.get(&index) {
                    let at = last.unwrap_or(DateTime::UNIX_EPOCH) + backoff(*failures);
                    if at > ctx.now {
                        soon(at);
                        continue;
                    }
                }
            }
            let mut attempt = last_attempt.get(&index).map_or(0, |a| a + 1);
            // A name held by another pod (a hash collision) moves to the next attempt.
            let pod_name = loop {
                let candidate = pod_name(name, uid, p.indexed, index, attempt);
                if !w.pods.contains_key(&(ns.clone(), candidate.clone())) {
                    break Some(candidate);
                }
                attempt += 1;
                if attempt > 1_000_000 {
                    break None;
                }
            };
            let Some(pod_name) = pod_name else { continue };
            let pod = new_pod(job, &p, &pod_name, index, attempt, ctx);
            creates.push(((ns.clone(), pod_name), pod));
            active += 1;
        }
    }
    for key in deletes {
        if w.pods.remove(&key).is_some() {
            writes.push(Write::DeleteObject {
                resource: PODS,
                namespace: key.0.clone(),
                name: key.1.clone(),
            });
        }
    }
    for (key, pod) in creates {
        let job = jobs.iter().find(|j| {
            Some(object::uid(j)) == pod["metadata"]["ownerReferences"][0]["uid"].as_str()
        });
        if let Some(message) = w.refusal(&pod) {
            if let Some(job) = job {
                events.push(Working::failed_create(
                    involved(job),
                    &message,
                    "job-controller",
                ));
            }
            continue;
        }
        if let Some(job) = job {
            events.push(PlannedEvent {
                involved: involved(job),
                event_type: EventType::Normal,
                reason: EventReason::SuccessfulCreate,
                message: format!("Created pod: {}", key.1),
                component: "job-controller",
            });
        }
        w.put_pod(writes, key, pod);
    }
    wake
}
