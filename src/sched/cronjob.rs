//! The CronJob controller (batch/v1), pure: from a CronJob, its Jobs and `now` to the Job to
//! start (if any) and the Jobs to delete, as Kubernetes' `cronjob_controllerv2`. Schedules are
//! standard cron (five fields, names, ranges, steps, `@hourly`…`@yearly` macros, parsed by
//! `croner`) in `timeZone` (IANA, `chrono-tz`) or UTC. Only the most recent missed time is
//! started (with more than 100 missed a warning is recorded), unless `startingDeadlineSeconds`
//! has passed for it. The Job is `<cronjob>-<scheduled unix minutes>` with a uid derived from
//! the CronJob's uid and that name, so two leaders create the same Job, never two; the
//! most recent scheduled time is read back from the Jobs (annotation
//! `batch.kubernetes.io/cronjob-scheduled-timestamp`), and the newest Job is always kept as
//! that memory, whatever the history limits.

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use croner::Cron;
use serde_json::{json, Value};

use super::hash::derived_uid;
use super::job::{self, JobPod, Params};
use super::object::{self, controller};
use super::snapshot::{LeaderCtx, PlannedEvent, PodKey, Write};
use super::Working;
use crate::model::workload::{EventReason, EventType, InvolvedObject, JOBS};

pub const SCHEDULED_ANNOTATION: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// Most missed start times counted before giving up on counting (Kubernetes: 100).
const MAX_MISSED: usize = 100;

/// A parsed `spec.schedule` with its time zone.
#[derive(Clone, Debug)]
pub struct Schedule {
    cron: Cron,
    tz: Tz,
}

/// Why a schedule or time zone is refused (shown in the API's 422).
pub fn parse_schedule(schedule: &str, time_zone: Option<&str>) -> Result<Schedule, String> {
    let tz = match time_zone {
        None => Tz::UTC,
        Some(name) => Tz::from_str(name).map_err(|_| format!("unknown time zone {name}"))?,
    };
    let s = schedule.trim();
    if s.contains("TZ=") {
        return Err("CRON_TZ or TZ used in schedule is not supported, use timeZone".into());
    }
    let pattern = match s {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        other if other.starts_with('@') => return Err(format!("unrecognized descriptor: {other}")),
        other => other,
    };
    let fields: Vec<&str> = pattern.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "expected exactly 5 fields, found {}: {s}",
            fields.len()
        ));
    }
    // Kubernetes' parser (robfig/cron) knows no `L`, `W` or `#`.
    let extension = |f: &str| {
        f.contains('#')
            || f.split(',').any(|t| {
                t == "L"
                    || (t.len() > 1
                        && (t.ends_with('L') || t.ends_with('W'))
                        && t.as_bytes()[t.len() - 2].is_ascii_digit())
            })
    };
    if extension(fields[2]) || extension(fields[4]) {
        return Err(format!("unsupported cron extension (L, W, #) in: {s}"));
    }
    let cron = Cron::from_str(&fields.join(" ")).map_err(|e| format!("{e}: {s}"))?;
    Ok(Schedule { cron, tz })
}

impl Schedule {
    /// The first scheduled time strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = t.with_timezone(&self.tz);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|n| n.with_timezone(&Utc))
    }

    /// The scheduled times in `(after, until]`, the most recent last: at most
    /// [`MAX_MISSED`]` + 1` (then the count is cut short and the last one found is the most
    /// recent that was looked at — the most recent overall is found separately).
    fn between(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> (Option<DateTime<Utc>>, usize) {
        let mut t = after;
        let mut last = None;
        let mut n = 0;
        while let Some(next) = self.next_after(t) {
            if next > until {
                break;
            }
            n += 1;
            last = Some(next);
            t = next;
            if n > MAX_MISSED {
                // Too many: the most recent one is found backwards from `until`.
                let local = until.with_timezone(&self.tz);
                last = self
                    .cron
                    .find_previous_occurrence(&local, true)
                    .ok()
                    .map(|p| p.with_timezone(&Utc))
                    .filter(|p| *p > after);
                break;
            }
        }
        (last, n)
    }
}

/// The spec fields the controller reads.
#[derive(Clone, Debug)]
pub struct CronParams {
    pub schedule: Schedule,
    pub policy: Policy,
    pub starting_deadline: Option<i64>,
    pub successful_limit: usize,
    pub failed_limit: usize,
    pub suspend: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    Allow,
    Forbid,
    Replace,
}

impl CronParams {
    pub fn of(cj: &Value) -> Option<CronParams> {
        let spec = &cj["spec"];
        spec["jobTemplate"]["spec"]["template"].as_object()?;
        let schedule =
            parse_schedule(spec["schedule"].as_str()?, spec["timeZone"].as_str()).ok()?;
        let limit = |f: &str, d: usize| spec[f].as_u64().map_or(d, |n| n.min(10_000) as usize);
        Some(CronParams {
            schedule,
            policy: match spec["concurrencyPolicy"].as_str() {
                Some("Forbid") => Policy::Forbid,
                Some("Replace") => Policy::Replace,
                _ => Policy::Allow,
            },
            starting_deadline: spec["startingDeadlineSeconds"].as_i64().filter(|n| *n >= 0),
            successful_limit: limit("successfulJobsHistoryLimit", 3),
            failed_limit: limit("failedJobsHistoryLimit", 1),
            suspend: spec["suspend"].as_bool().unwrap_or(false),
        })
    }
}

/// `<cronjob>-<minutes since the epoch>` (Kubernetes' `getJobName`).
pub fn job_name(cronjob: &str, scheduled: DateTime<Utc>) -> String {
    format!("{cronjob}-{}", scheduled.timestamp().div_euclid(60))
}

/// When a Job of a CronJob was scheduled (its annotation).
pub fn scheduled_time(job: &Value) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(job["metadata"]["annotations"][SCHEDULED_ANNOTATION].as_str()?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn created(v: &Value) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(v["metadata"]["creationTimestamp"].as_str()?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// A Job of a CronJob with how it ended (if it did).
#[derive(Clone, Debug)]
pub struct ChildJob<'a> {
    pub job: &'a Value,
    pub scheduled: Option<DateTime<Utc>>,
    /// `Some(true)`: Complete; `Some(false)`: Failed; `None`: active.
    pub ended: Option<(bool, DateTime<Utc>)>,
}

/// What the controller decides for one CronJob.
#[derive(Debug, Default)]
pub struct Decision {
    /// The scheduled time to start a Job for.
    pub start: Option<DateTime<Utc>>,
    /// Jobs to delete (Replace, history limits).
    pub delete: Vec<String>,
    pub events: Vec<(EventType, EventReason, String)>,
    pub wake: Option<DateTime<Utc>>,
}

/// The controller's decision for `cj` with its `jobs` at `now`.
pub fn decide(cj: &Value, p: &CronParams, jobs: &[ChildJob<'_>], now: DateTime<Utc>) -> Decision {
    let mut d = Decision::default();
    // History: finished Jobs beyond the limits go, oldest first; the newest Job stays.
    let newest = jobs
        .iter()
        .filter_map(|j| j.scheduled.map(|t| (t, object::name(j.job))))
        .max();
    for (ok, limit) in [(true, p.successful_limit), (false, p.failed_limit)] {
        let mut finished: Vec<(DateTime<Utc>, &str)> = jobs
            .iter()
            .filter(|j| j.ended.is_some_and(|(s, _)| s == ok))
            .map(|j| {
                (
                    j.scheduled
                        .or(created(j.job))
                        .unwrap_or(DateTime::UNIX_EPOCH),
                    object::name(j.job),
                )
            })
            .collect();
        finished.sort();
        let excess = finished.len().saturating_sub(limit);
        for (_, name) in finished.into_iter().take(excess) {
            if newest.map(|n| n.1) != Some(name) {
                d.delete.push(name.to_string());
            }
        }
    }
    if p.suspend {
        return d;
    }
    let earliest = newest.map(|n| n.0).or_else(|| created(cj)).unwrap_or(now);
    let earliest = match p.starting_deadline {
        Some(s) => earliest.max(now - Duration::seconds(s)),
        None => earliest,
    };
    let (missed, count) = p.schedule.between(earliest, now);
    d.wake = p.schedule.next_after(now);
    let Some(at) = missed else {
        return d;
    };
    if count > MAX_MISSED {
        d.events.push((
            EventType::Warning,
            EventReason::TooManyMissedTimes,
            "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew".into(),
        ));
    }
    let active: Vec<&ChildJob<'_>> = jobs.iter().filter(|j| j.ended.is_none()).collect();
    if jobs.iter().any(|j| j.scheduled == Some(at)) {
        return d; // already started (by us or another leader)
    }
    match p.policy {
        Policy::Forbid if !active.is_empty() => {
            // Not started; it is still the most recent unmet time once the active Job ends.
            d.events.push((
                EventType::Normal,
                EventReason::JobAlreadyActive,
                "Not starting job because prior execution is running and concurrency policy is Forbid".into(),
            ));
            return d;
        }
        Policy::Replace => {
            for j in active {
                d.delete.push(object::name(j.job).to_string());
            }
        }
        _ => {}
    }
    d.start = Some(at);
    d
}

/// The Job a CronJob starts for `scheduled`: its `jobTemplate`, the selector and labels the
/// API would give it, an owner reference and the scheduled-time annotation.
pub fn new_job(cj: &Value, scheduled: DateTime<Utc>, ctx: &LeaderCtx) -> Value {
    let name = job_name(object::name(cj), scheduled);
    let uid = derived_uid("Job", object::uid(cj), &name);
    let template = &cj["spec"]["jobTemplate"];
    let mut annotations = match &template["metadata"]["annotations"] {
        a @ Value::Object(_) => a.clone(),
        _ => json!({}),
    };
    annotations[SCHEDULED_ANNOTATION] = json!(object::timestamp(scheduled));
    let labels = match &template["metadata"]["labels"] {
        l @ Value::Object(_) => l.clone(),
        _ => json!({}),
    };
    let mut job = json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": object::namespace(cj),
            "uid": uid,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": object::owner_reference_of(cj, "batch/v1", "CronJob"),
            "creationTimestamp": object::timestamp(ctx.now),
            "resourceVersion": object::resource_version(ctx.now),
            "generation": 1,
        },
        "spec": template["spec"].clone(),
    });
    job::generate_selector(&mut job);
    job
}

fn involved(cj: &Value) -> InvolvedObject {
    InvolvedObject {
        api_version: "batch/v1".into(),
        kind: "CronJob".into(),
        namespace: object::namespace(cj).to_string(),
        name: object::name(cj).to_string(),
        uid: object::uid(cj).to_string(),
    }
}

/// How each Job in `jobs` ended, from the working set's pods.
pub(crate) fn endings(
    jobs: &[Value],
    w: &Working<'_>,
    now: DateTime<Utc>,
) -> BTreeMap<String, Option<(bool, DateTime<Utc>)>> {
    let mut pods: BTreeMap<&str, Vec<JobPod>> = BTreeMap::new();
    for (key, pod) in &w.pods {
        let Some(("Job", owner)) = controller(pod) else {
            continue;
        };
        let Some((index, attempt)) = job::index_of(pod) else {
            continue;
        };
        let (outcome, failure) = job::outcome_of(w.finished.get(key), false);
        pods.entry(owner).or_default().push(JobPod {
            key: PodKey::clone(key),
            index,
            attempt,
            created: created(pod),
            outcome,
            failure,
            ready: false,
        });
    }
    jobs.iter()
        .map(|j| {
            let ended = Params::of(j).and_then(|p| {
                let st = job::state(
                    j,
                    &p,
                    pods.get(object::uid(j)).map(Vec::as_slice).unwrap_or(&[]),
                    now,
                );
                st.ending.map(|e| (e.condition == "Complete", e.at))
            });
            (object::uid(j).to_string(), ended)
        })
        .collect()
}

/// Runs the CronJob controller: creates Jobs in `jobs` (they are run by the Job controller in
/// the next round) and deletes the ones history limits and `Replace` drop.
pub(crate) fn reconcile(
    cronjobs: &[Value],
    jobs: &mut Vec<Value>,
    w: &Working<'_>,
    ctx: &LeaderCtx,
    writes: &mut Vec<Write>,
    events: &mut Vec<PlannedEvent>,
) -> Option<DateTime<Utc>> {
    let ended = endings(jobs, w, ctx.now);
    let mut wake: Option<DateTime<Utc>> = None;
    let mut deletes: Vec<(String, String)> = Vec::new();
    let mut creates: Vec<Value> = Vec::new();
    for cj in cronjobs.iter().filter(|c| object::is_valid(c)) {
        let Some(p) = CronParams::of(cj) else {
            continue;
        };
        let ns = object::namespace(cj);
        let children: Vec<ChildJob<'_>> = jobs
            .iter()
            .filter(|j| {
                controller(j) == Some(("CronJob", object::uid(cj))) && object::namespace(j) == ns
            })
            .map(|j| ChildJob {
                job: j,
                scheduled: scheduled_time(j),
                ended: ended.get(object::uid(j)).copied().flatten(),
            })
            .collect();
        let d = decide(cj, &p, &children, ctx.now);
        if let Some(t) = d.wake {
            wake = Some(wake.map_or(t, |w| w.min(t)));
        }
        for name in d.delete {
            events.push(PlannedEvent {
                involved: involved(cj),
                event_type: EventType::Normal,
                reason: EventReason::SuccessfulDelete,
                message: format!("Deleted job {name}"),
                component: "cronjob-controller",
            });
            deletes.push((ns.to_string(), name));
        }
        if let Some(at) = d.start {
            let job = new_job(cj, at, ctx);
            // A Job of that name that is not this CronJob's is left alone.
            if jobs
                .iter()
                .any(|j| object::namespace(j) == ns && object::name(j) == object::name(&job))
            {
                continue;
            }
            events.push(PlannedEvent {
                involved: involved(cj),
                event_type: EventType::Normal,
                reason: EventReason::SuccessfulCreate,
                message: format!("Created job {}", object::name(&job)),
                component: "cronjob-controller",
            });
            creates.push(job);
        }
        for (event_type, reason, message) in d.events {
            events.push(PlannedEvent {
                involved: involved(cj),
                event_type,
                reason,
                message,
                component: "cronjob-controller",
            });
        }
    }
    for (ns, name) in deletes {
        let before = jobs.len();
        jobs.retain(|j| !(object::namespace(j) == ns && object::name(j) == name));
        if jobs.len() != before {
            writes.push(Write::DeleteObject {
                resource: JOBS,
                namespace: ns,
                name,
            });
        }
    }
    for job in creates {
        writes.push(Write::PutObject {
            resource: JOBS,
            namespace: object::namespace(&job).to_string(),
            name: object::name(&job).to_string(),
            object: job.clone(),
        });
        jobs.push(job);
    }
    wake
}

/// For the API: `lastScheduleTime`, `lastSuccessfulTime` and the active Jobs of a CronJob from
/// its Jobs as served (`(job, ended)`).
pub fn last_times(children: &[ChildJob<'_>]) -> (Option<DateTime<Utc>>, Option<DateTime<Utc>>) {
    let last_schedule = children.iter().filter_map(|c| c.scheduled).max();
    let last_success = children
        .iter()
        .filter_map(|c| c.ended.filter(|(ok, _)| *ok).map(|(_, at)| at))
        .max();
    (last_schedule, last_success)
}

/// The uid of the newest Job (by scheduled time) of each CronJob: kept whatever its
/// `ttlSecondsAfterFinished`, as the CronJob's memory of its last scheduled time.
pub fn newest_jobs(cronjobs: &[Value], jobs: &[Value]) -> std::collections::BTreeSet<String> {
    let mut newest: BTreeMap<&str, (DateTime<Utc>, &str)> = BTreeMap::new();
    let owners: std::collections::BTreeSet<&str> = cronjobs.iter().map(object::uid).collect();
    for j in jobs {
        let (Some(("CronJob", owner)), Some(t)) = (controller(j), scheduled_time(j)) else {
            continue;
        };
        if !owners.contains(owner) {
            continue;
        }
        let e = newest.entry(owner).or_insert((t, object::uid(j)));
        if t > e.0 {
            *e = (t, object::uid(j));
        }
    }
    newest
        .into_values()
        .map(|(_, uid)| uid.to_string())
        .collect()
}
