//! Unit and property tests of the Job controller: exact completions under random pod
//! outcomes, parallelism, one pod per index, back-off and backoffLimit, deadline, suspend, ttl,
//! idempotence, and two leaders' plans merged giving one pod per (index, attempt).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;
use serde_json::{json, Value};

use super::fixtures::{cluster_of, key, leader_ctx, node, t0};
use super::job::{self, index_of, Params};
use super::*;

fn job(name: &str, spec: Value) -> Value {
    let mut spec = spec;
    spec["template"] = json!({
        "metadata": {"labels": {"job-name": name}},
        "spec": {"restartPolicy": "Never",
                 "containers": [{"name": "c", "image": "shoal.test/busybox:1"}]},
    });
    json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": "default", "uid": format!("j-{name}"),
                     "creationTimestamp": "2025-01-01T00:00:00Z"},
        "spec": spec,
    })
}

fn cluster(jobs: Vec<Value>) -> Snapshot {
    Snapshot {
        jobs,
        ..cluster_of(vec![node("n0"), node("n1"), node("n2")])
    }
}

/// Active pods (not finished) of the snapshot.
fn active(s: &Snapshot) -> Vec<&Value> {
    s.pods
        .iter()
        .filter(|p| !s.finished.contains_key(&key(p)))
        .collect()
}

/// The Job's state as the API would serve it.
fn state_of(s: &Snapshot, j: &Value, now: DateTime<Utc>) -> job::JobState {
    let pods: Vec<job::JobPod> = s
        .pods
        .iter()
        .filter(|p| p["metadata"]["ownerReferences"][0]["uid"] == j["metadata"]["uid"])
        .map(|p| {
            let (index, attempt) = index_of(p).unwrap();
            let (outcome, failure) = job::outcome_of(s.finished.get(&key(p)), false);
            job::JobPod {
                key: key(p),
                index,
                attempt,
                created: None,
                outcome,
                failure,
                ready: false,
            }
        })
        .collect();
    job::state(j, &Params::of(j).unwrap(), &pods, now)
}

fn finish(s: &mut Snapshot, pod: &PodKey, succeeded: bool, at: DateTime<Utc>) {
    s.finished.insert(
        pod.clone(),
        Finished {
            succeeded,
            at: Some(at),
            ..Finished::default()
        },
    );
}

/// Reconciles (one round, then asserts a second round plans nothing new).
fn round(s: &Snapshot, now: DateTime<Utc>, seed: u64) -> Snapshot {
    let plan = reconcile(s, &leader_ctx("n0", now, seed));
    let next = s.after(&plan);
    let again = reconcile(&next, &leader_ctx("n0", now, seed + 1));
    assert!(
        again.writes.is_empty(),
        "not idempotent: {:?}",
        again.writes
    );
    next
}

#[test]
fn completions_and_parallelism_exactly() {
    let j = job("batch", json!({"completions": 5, "parallelism": 2}));
    let mut s = cluster(vec![j.clone()]);
    let mut now = t0();
    for step in 0..20 {
        s = round(&s, now, step);
        let act = active(&s);
        assert!(act.len() <= 2, "parallelism exceeded: {}", act.len());
        // Every pod is placed (bound) in the round that made it.
        for p in &act {
            assert!(s.bindings.contains_key(&key(p)));
        }
        now += Duration::seconds(1);
        let first = act.first().map(|p| key(p));
        if let Some(k) = first {
            finish(&mut s, &k, true, now);
        }
    }
    let st = state_of(&s, &j, now);
    assert_eq!(st.succeeded, 5);
    assert_eq!(s.pods.len(), 5, "exactly one pod per completion");
    assert_eq!(st.ending.as_ref().unwrap().condition, "Complete");
    assert!(active(&s).is_empty());
}

#[test]
fn indexed_jobs_get_every_index_once_with_its_env() {
    let j = job(
        "idx",
        json!({"completions": 4, "parallelism": 4, "completionMode": "Indexed"}),
    );
    let s = round(&cluster(vec![j]), t0(), 1);
    let mut seen = BTreeSet::new();
    for p in &s.pods {
        let i = p["metadata"]["annotations"][job::COMPLETION_INDEX]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(p["metadata"]["labels"][job::COMPLETION_INDEX], json!(i));
        assert!(p["metadata"]["name"]
            .as_str()
            .unwrap()
            .starts_with(&format!("idx-{i}-")));
        let env = &p["spec"]["containers"][0]["env"];
        assert_eq!(env[0], json!({"name": "JOB_COMPLETION_INDEX", "value": i}));
        seen.insert(i);
    }
    assert_eq!(seen.len(), 4);
}

#[test]
fn failures_back_off_and_exceeding_the_limit_fails_the_job() {
    let j = job("flaky", json!({"completions": 1, "backoffLimit": 2}));
    let mut s = round(&cluster(vec![j.clone()]), t0(), 1);
    let mut now = t0();
    for failures in 1..=3 {
        let pod = key(active(&s)[0]);
        finish(&mut s, &pod, false, now);
        // No retry before the back-off (10 s, 20 s, ...).
        let plan = reconcile(&s, &leader_ctx("n0", now + Duration::seconds(1), 9));
        let created = plan.counts().0;
        if failures <= 2 {
            assert_eq!(created, 0, "retry before the back-off");
            assert_eq!(plan.wake, Some(now + job::backoff(failures)));
            now += job::backoff(failures);
            s = round(&s, now, failures as u64);
            let (_, attempt) = index_of(active(&s)[0]).unwrap();
            assert_eq!(attempt, failures as u32);
        } else {
            let st = state_of(&s, &j, now);
            let end = st.ending.unwrap();
            assert_eq!(
                (end.condition, end.reason),
                ("Failed", "BackoffLimitExceeded")
            );
            assert_eq!(st.failed, 3);
            assert_eq!(created, 0);
        }
    }
}

/// Ends `pod` as Failed with container `main` exiting `code` (and the pod's `conditions`).
fn fail_with(
    s: &mut Snapshot,
    pod: &PodKey,
    code: i32,
    conditions: &[(&str, &str)],
    at: DateTime<Utc>,
) {
    s.finished.insert(
        pod.clone(),
        Finished {
            succeeded: false,
            at: Some(at),
            failure: job::Failure {
                exits: vec![("main".into(), code)],
                conditions: conditions
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            },
        },
    );
}

#[test]
fn pod_failure_policy_fails_the_job_ignores_or_counts() {
    let policy = json!({"rules": [
        {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        {"action": "Count", "onExitCodes": {"operator": "NotIn", "values": [1, 2]}},
    ]});
    let j = job(
        "pfp",
        json!({"completions": 1, "backoffLimit": 1, "podFailurePolicy": policy}),
    );
    // An ignored failure: not counted, replaced at once (no back-off).
    let mut s = round(&cluster(vec![j.clone()]), t0(), 1);
    let first = key(active(&s)[0]);
    fail_with(&mut s, &first, 137, &[("DisruptionTarget", "True")], t0());
    let st = state_of(&s, &j, t0());
    assert_eq!((st.failed, st.ending.is_none()), (0, true), "{st:?}");
    s = round(&s, t0(), 2);
    assert_eq!(active(&s).len(), 1, "replaced without back-off");
    // Exit code 42 of container main: FailJob, whatever the backoffLimit.
    let second = key(active(&s)[0]);
    fail_with(&mut s, &second, 42, &[], t0() + Duration::seconds(1));
    let st = state_of(&s, &j, t0() + Duration::seconds(1));
    let end = st.ending.expect("failed");
    assert_eq!((end.condition, end.reason), ("Failed", "PodFailurePolicy"));
    assert_eq!(
        end.message,
        format!(
            "Container main for pod default/{} failed with exit code 42 matching FailJob rule at index 0",
            second.1
        )
    );
    assert_eq!(st.failed, 1);
    // No rule matches exit code 1 (NotIn [1, 2] excludes it): counted as without a policy.
    let j2 = job(
        "pfp2",
        json!({"completions": 1, "backoffLimit": 0, "podFailurePolicy": {"rules": [
        {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [42]}}]}}),
    );
    let mut s = round(&cluster(vec![j2.clone()]), t0(), 1);
    let pod = key(active(&s)[0]);
    fail_with(&mut s, &pod, 1, &[], t0());
    let end = state_of(&s, &j2, t0()).ending.expect("failed");
    assert_eq!(end.reason, "BackoffLimitExceeded");
}

#[test]
fn backoff_limit_per_index_fails_indexes_not_the_job() {
    let j = job(
        "per",
        json!({"completions": 3, "parallelism": 3, "completionMode": "Indexed",
               "backoffLimitPerIndex": 1, "podFailurePolicy": {"rules": [
                   {"action": "FailIndex", "onExitCodes": {"operator": "In", "values": [3]}}]}}),
    );
    let mut now = t0();
    let mut s = round(&cluster(vec![j.clone()]), now, 1);
    let index_pod = |s: &Snapshot, i: &str| -> PodKey {
        key(active(s)
            .into_iter()
            .find(|p| p["metadata"]["annotations"][job::COMPLETION_INDEX] == i)
            .unwrap())
    };
    // Index 0 fails twice (limit 1): failed for good; index 1 fails once with exit 3 (FailIndex).
    let p0 = index_pod(&s, "0");
    fail_with(&mut s, &p0, 1, &[], now);
    let p1 = index_pod(&s, "1");
    fail_with(&mut s, &p1, 3, &[], now);
    // Index 0's retry waits for its own back-off; index 2 keeps running.
    let plan = reconcile(&s, &leader_ctx("n0", now, 5));
    assert_eq!(plan.counts().0, 0, "no retry before the back-off");
    now += job::backoff(1);
    s = round(&s, now, 6);
    let st = state_of(&s, &j, now);
    assert_eq!(st.failed_indexes, BTreeSet::from([1]), "{st:?}");
    assert!(st.ending.is_none());
    let retry = index_pod(&s, "0");
    assert_eq!(
        index_of(s.pods.iter().find(|p| key(p) == retry).unwrap())
            .unwrap()
            .1,
        1
    );
    fail_with(&mut s, &retry, 1, &[], now);
    let p2 = index_pod(&s, "2");
    finish(&mut s, &p2, true, now);
    s = round(&s, now + Duration::seconds(60), 7);
    assert!(active(&s).is_empty(), "failed indexes are not run again");
    let st = state_of(&s, &j, now);
    assert_eq!(st.failed_indexes, BTreeSet::from([0, 1]));
    assert_eq!(st.completed, BTreeSet::from([2]));
    let end = st.ending.expect("ended");
    assert_eq!((end.condition, end.reason), ("Failed", "FailedIndexes"));

    // maxFailedIndexes 0: the first failed index fails the Job.
    let j = job(
        "capped",
        json!({"completions": 2, "parallelism": 2, "completionMode": "Indexed",
               "backoffLimitPerIndex": 0, "maxFailedIndexes": 0}),
    );
    let mut s = round(&cluster(vec![j.clone()]), t0(), 1);
    let p = key(active(&s)[0]);
    fail_with(&mut s, &p, 1, &[], t0());
    let end = state_of(&s, &j, t0()).ending.expect("ended");
    assert_eq!(end.reason, "MaxFailedIndexesExceeded");
    s = round(&s, t0(), 2);
    assert!(active(&s).is_empty(), "the ended Job's pods are stopped");
}

#[test]
fn deadline_fails_and_stops_active_pods_and_ttl_deletes_the_job() {
    let j = job(
        "slow",
        json!({"completions": 3, "parallelism": 3, "activeDeadlineSeconds": 30,
               "ttlSecondsAfterFinished": 60}),
    );
    let s = round(&cluster(vec![j.clone()]), t0(), 1);
    assert_eq!(active(&s).len(), 3);
    let plan = reconcile(&s, &leader_ctx("n0", t0() + Duration::seconds(5), 2));
    assert_eq!(plan.wake, Some(t0() + Duration::seconds(30)));
    let at = t0() + Duration::seconds(31);
    let s = s.after(&reconcile(&s, &leader_ctx("n0", at, 3)));
    assert!(
        s.pods.is_empty(),
        "active pods are deleted when the deadline passes"
    );
    let end = state_of(&s, &j, at).ending.unwrap();
    assert_eq!(end.reason, "DeadlineExceeded");
    assert_eq!(end.at, t0() + Duration::seconds(30));
    let plan = reconcile(&s, &leader_ctx("n0", at, 4));
    assert_eq!(plan.wake, Some(t0() + Duration::seconds(90)));
    let plan = reconcile(&s, &leader_ctx("n0", t0() + Duration::seconds(90), 5));
    assert!(s.after(&plan).jobs.is_empty(), "ttl deletes the Job");
}

#[test]
fn suspend_deletes_active_pods_and_resume_starts_them_again() {
    let j = job("sus", json!({"completions": 2, "parallelism": 2}));
    let mut s = round(&cluster(vec![j.clone()]), t0(), 1);
    let done = key(active(&s)[0]);
    finish(&mut s, &done, true, t0());
    let mut suspended = j.clone();
    suspended["spec"]["suspend"] = json!(true);
    s.jobs = vec![suspended];
    let s2 = round(&s, t0(), 2);
    assert_eq!(
        s2.pods.len(),
        1,
        "the succeeded pod stays, the active one goes"
    );
    assert!(active(&s2).is_empty());
    let mut s3 = s2.clone();
    s3.jobs = vec![j.clone()];
    let s3 = round(&s3, t0(), 3);
    assert_eq!(active(&s3).len(), 1, "only the unfinished index runs again");
}

#[test]
fn pods_of_a_deleted_job_are_collected() {
    let j = job("gone", json!({"completions": 2, "parallelism": 2}));
    let mut s = round(&cluster(vec![j]), t0(), 1);
    s.jobs.clear();
    let s = s.after(&reconcile(&s, &leader_ctx("n0", t0(), 2)));
    assert!(s.pods.is_empty() && s.bindings.is_empty());
}

#[test]
fn finished_pods_on_a_dead_node_stay_and_take_no_room() {
    let j = job("done", json!({"completions": 2, "parallelism": 2}));
    let mut s = round(&cluster(vec![j]), t0(), 1);
    let pods: Vec<PodKey> = s.pods.iter().map(key).collect();
    finish(&mut s, &pods[0], true, t0());
    let node0 = s.bindings[&pods[0]].node.clone();
    s.liveness.insert(node0.clone(), Liveness::Dead);
    let plan = reconcile(&s, &leader_ctx("n0", t0(), 2));
    assert!(
        !plan
            .writes
            .iter()
            .any(|w| matches!(w, Write::PutBinding { pod, .. } if *pod == pods[0].1)),
        "a finished pod is never moved"
    );
}

/// A step of the property test: which pod ends, how, and which leader acts.
#[derive(Clone, Debug)]
enum Step {
    End {
        pick: usize,
        ok: bool,
    },
    Round,
    /// Two leaders reconcile the same snapshot apart (a partition) and their writes merge.
    Split {
        pick: usize,
        ok: bool,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (any::<usize>(), prop::bool::weighted(0.8)).prop_map(|(pick, ok)| Step::End { pick, ok }),
        2 => Just(Step::Round),
        1 => (any::<usize>(), prop::bool::weighted(0.8)).prop_map(|(pick, ok)| Step::Split { pick, ok }),
    ]
}

fn end_one(s: &mut Snapshot, pick: usize, ok: bool, now: DateTime<Utc>) {
    let act: Vec<PodKey> = active(s).into_iter().map(key).collect();
    if !act.is_empty() {
        finish(s, &act[pick % act.len()], ok, now);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the pods do, and across concurrent leaders: never more active pods than
    /// `parallelism`, never two active pods of one index after a round, and the Job ends with
    /// exactly `completions` succeeded indexes or more failures than `backoffLimit`.
    #[test]
    fn jobs_end_exactly(
        completions in 1i64..12,
        parallelism in 1i64..5,
        backoff_limit in 0i64..8,
        indexed in any::<bool>(),
        steps in prop::collection::vec(step(), 1..80),
    ) {
        let mode = if indexed { "Indexed" } else { "NonIndexed" };
        let j = job("p", json!({"completions": completions, "parallelism": parallelism,
                                "backoffLimit": backoff_limit, "completionMode": mode}));
        let mut s = cluster(vec![j.clone()]);
        let mut now = t0();
        let mut seed = 0;
        // Then enough rounds that every pod ends successfully.
        let tail = (0..(completions as usize * 2 + 2)).flat_map(|_| {
            [Step::Round, Step::End { pick: 0, ok: true }]
        });
        for st in steps.into_iter().chain(tail) {
            now += Duration::seconds(400); // past any back-off
            seed += 2;
            match st {
                Step::End { pick, ok } => end_one(&mut s, pick, ok, now),
                Step::Round => s = round(&s, now, seed),
                Step::Split { pick, ok } => {
                    // Leader A sees one more pod end than leader B; both act; writes merge
                    // (the document keeps one value per key: pods are the same object).
                    let mut a = s.clone();
                    end_one(&mut a, pick, ok, now);
                    let plan_a = reconcile(&a, &leader_ctx("n0", now, seed));
                    let plan_b = reconcile(&s, &leader_ctx("n0", now, seed + 1));
                    let mut merged = a.after(&plan_a).after(&plan_b);
                    merged.finished = a.finished.clone();
                    s = merged;
                    // Same names give the same objects up to timestamps.
                    for w in plan_a.writes.iter().chain(&plan_b.writes) {
                        if let Write::PutObject { object, .. } = w {
                            let uid = object["metadata"]["uid"].as_str().unwrap();
                            let name = object["metadata"]["name"].as_str().unwrap();
                            prop_assert_eq!(uid, hash::derived_uid("Pod", "j-p", name));
                        }
                    }
                }
            }
            let st = state_of(&s, &j, now);
            if st.ending.is_some() {
                break;
            }
        }
        s = round(&s, now, seed + 100);
        let st = state_of(&s, &j, now);
        let per_index: BTreeMap<usize, usize> = active(&s).iter().fold(BTreeMap::new(), |mut m, p| {
            *m.entry(index_of(p).unwrap().0).or_default() += 1;
            m
        });
        prop_assert!(per_index.values().all(|n| *n == 1), "{per_index:?}");
        prop_assert!(active(&s).len() as i64 <= parallelism);
        let end = st.ending.clone().expect("the job ended");
        if end.condition == "Complete" {
            prop_assert_eq!(st.succeeded, completions);
        } else {
            prop_assert_eq!(end.reason, "BackoffLimitExceeded");
            prop_assert!(st.failed > backoff_limit);
        }
        prop_assert!(active(&s).is_empty(), "no pod runs after the Job ended");
        // Each (index, attempt) is one pod.
        let ids: BTreeSet<(usize, u32)> = s.pods.iter().map(|p| index_of(p).unwrap()).collect();
        prop_assert_eq!(ids.len(), s.pods.len());
    }
}
