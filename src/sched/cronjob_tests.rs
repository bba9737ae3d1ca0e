//! Tests of the CronJob controller: schedules and macros, time zones, missed-schedule rules,
//! concurrency policies, history limits, suspend, and two leaders creating the same Job.

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::{json, Value};

use super::cronjob::{self, parse_schedule, scheduled_time, CronParams};
use super::fixtures::leader_ctx;
use super::*;
use crate::model::workload::EventReason;

fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 1, h, m, s).unwrap()
}

fn cronjob(schedule: &str, extra: Value) -> Value {
    let mut cj = json!({
        "apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": "tick", "namespace": "default", "uid": "cj-1",
                     "creationTimestamp": "2025-03-01T10:00:00Z"},
        "spec": {
            "schedule": schedule,
            "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "c", "image": "shoal.test/busybox:1"}]}}}},
        },
    });
    if let Some(m) = extra.as_object() {
        for (k, v) in m {
            cj["spec"][k] = v.clone();
        }
    }
    cj
}

fn snapshot(cj: Value) -> Snapshot {
    Snapshot {
        cronjobs: vec![cj],
        ..Snapshot::default()
    }
}

/// Reconciles at `now` and returns the next snapshot.
fn step(s: &Snapshot, now: DateTime<Utc>) -> (Snapshot, Plan) {
    let plan = reconcile(s, &leader_ctx("n0", now, 1));
    (s.after(&plan), plan)
}

fn job_names(s: &Snapshot) -> Vec<String> {
    let mut names: Vec<String> = s
        .jobs
        .iter()
        .map(|j| j["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// Marks every pod of `job` as finished (succeeded or not).
fn finish_job(s: &mut Snapshot, job: &str, ok: bool, when: DateTime<Utc>) {
    let uid = s
        .jobs
        .iter()
        .find(|j| j["metadata"]["name"] == job)
        .map(|j| j["metadata"]["uid"].clone())
        .unwrap();
    let keys: Vec<PodKey> = s
        .pods
        .iter()
        .filter(|p| p["metadata"]["ownerReferences"][0]["uid"] == uid)
        .map(|p| {
            (
                "default".to_string(),
                p["metadata"]["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(!keys.is_empty(), "the job has pods");
    for k in keys {
        s.finished.insert(
            k,
            Finished {
                succeeded: ok,
                at: Some(when),
                ..Finished::default()
            },
        );
    }
}

#[test]
fn schedules_macros_and_refusals() {
    let t = at(10, 0, 30);
    let every5 = parse_schedule("*/5 * * * *", None).unwrap();
    assert_eq!(every5.next_after(t), Some(at(10, 5, 0)));
    let hourly = parse_schedule("@hourly", None).unwrap();
    assert_eq!(hourly.next_after(t), Some(at(11, 0, 0)));
    let daily = parse_schedule("@daily", None).unwrap();
    assert_eq!(
        daily.next_after(t),
        Some(Utc.with_ymd_and_hms(2025, 3, 2, 0, 0, 0).unwrap())
    );
    let named = parse_schedule("30 9 * JAN-DEC MON-FRI", None).unwrap();
    // 2025-03-01 is a Saturday: next weekday is Monday the 3rd.
    assert_eq!(
        named.next_after(t),
        Some(Utc.with_ymd_and_hms(2025, 3, 3, 9, 30, 0).unwrap())
    );
    // 09:00 in Berlin is 08:00 UTC in winter.
    let berlin = parse_schedule("0 9 * * *", Some("Europe/Berlin")).unwrap();
    assert_eq!(
        berlin.next_after(t),
        Some(Utc.with_ymd_and_hms(2025, 3, 2, 8, 0, 0).unwrap())
    );
    for bad in [
        "* * * *",
        "0 * * * * *",
        "@every 5m",
        "CRON_TZ=UTC 0 * * * *",
        "61 * * * *",
        "0 0 L * *",
        "0 0 * * 5#2",
    ] {
        assert!(parse_schedule(bad, None).is_err(), "{bad} is refused");
    }
    assert!(parse_schedule("* * * * *", Some("Mars/Olympus")).is_err());
}

#[test]
fn starts_on_time_with_a_name_from_the_scheduled_time_and_two_leaders_agree() {
    let s = snapshot(cronjob("* * * * *", json!({})));
    let (s1, plan) = step(&s, at(10, 0, 30));
    assert_eq!(
        job_names(&s1),
        Vec::<String>::new(),
        "nothing due before 10:01"
    );
    assert_eq!(plan.wake, Some(at(10, 1, 0)));
    let (s2, _) = step(&s1, at(10, 1, 2));
    let minutes = at(10, 1, 0).timestamp() / 60;
    assert_eq!(job_names(&s2), vec![format!("tick-{minutes}")]);
    let job = &s2.jobs[0];
    assert_eq!(scheduled_time(job), Some(at(10, 1, 0)));
    assert_eq!(
        job["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
        job["metadata"]["uid"]
    );
    // The Job's pods are made in the same round.
    assert_eq!(s2.pods.len(), 1);
    // Another leader, at another instant of the same minute, writes the same Job.
    let other = reconcile(&s1, &leader_ctx("n0", at(10, 1, 40), 9));
    let a = reconcile(&s1, &leader_ctx("n0", at(10, 1, 2), 1));
    let job_of = |p: &Plan| {
        p.writes
            .iter()
            .find_map(|w| match w {
                Write::PutObject {
                    resource, object, ..
                } if *resource == crate::model::workload::JOBS => Some(object.clone()),
                _ => None,
            })
            .unwrap()
    };
    let (mut x, mut y) = (job_of(&a), job_of(&other));
    for v in [&mut x, &mut y] {
        v["metadata"]["creationTimestamp"] = json!(null);
        v["metadata"]["resourceVersion"] = json!(null);
    }
    assert_eq!(x, y);
    // Idempotent.
    assert!(reconcile(&s2, &leader_ctx("n0", at(10, 1, 3), 2))
        .writes
        .is_empty());
}

#[test]
fn forbid_waits_replace_replaces_allow_overlaps() {
    for (policy, expect) in [("Forbid", 1), ("Replace", 1), ("Allow", 2)] {
        let s = snapshot(cronjob("* * * * *", json!({"concurrencyPolicy": policy})));
        let (s, _) = step(&s, at(10, 1, 1));
        let (s, _) = step(&s, at(10, 2, 1));
        assert_eq!(s.jobs.len(), expect, "{policy}");
        if policy == "Replace" {
            assert_eq!(
                scheduled_time(&s.jobs[0]),
                Some(at(10, 2, 0)),
                "the running one was replaced"
            );
        }
        if policy == "Forbid" {
            // Once the running Job ends, the most recent missed time starts.
            let mut s = s.clone();
            let name = job_names(&s)[0].clone();
            finish_job(&mut s, &name, true, at(10, 2, 30));
            let (s, _) = step(&s, at(10, 2, 40));
            assert_eq!(s.jobs.len(), 2);
            assert!(s
                .jobs
                .iter()
                .any(|j| scheduled_time(j) == Some(at(10, 2, 0))));
        }
    }
}

#[test]
fn missed_schedules_start_only_the_most_recent_within_the_deadline() {
    // Down from 10:00 to 12:00: one Job, for 12:00.
    let s = snapshot(cronjob("*/10 * * * *", json!({})));
    let (s1, _) = step(&s, at(12, 0, 20));
    assert_eq!(s1.jobs.len(), 1);
    assert_eq!(scheduled_time(&s1.jobs[0]), Some(at(12, 0, 0)));
    // With a 60 s starting deadline, a time missed by more is skipped.
    let s = snapshot(cronjob(
        "*/10 * * * *",
        json!({"startingDeadlineSeconds": 60}),
    ));
    let (s2, plan) = step(&s, at(12, 5, 0));
    assert!(s2.jobs.is_empty());
    assert_eq!(plan.wake, Some(at(12, 10, 0)));
    // More than 100 missed: a warning, and the most recent one still starts.
    let s = snapshot(cronjob("* * * * *", json!({})));
    let (s3, plan) = step(&s, at(13, 0, 5));
    assert_eq!(scheduled_time(&s3.jobs[0]), Some(at(13, 0, 0)));
    assert!(plan
        .events
        .iter()
        .any(|e| e.reason == EventReason::TooManyMissedTimes));
}

#[test]
fn history_limits_keep_the_newest_and_suspend_stops_new_jobs() {
    let mut cj = cronjob(
        "* * * * *",
        json!({"successfulJobsHistoryLimit": 0, "failedJobsHistoryLimit": 1}),
    );
    // One failed pod fails its Job (the default backoffLimit of 6 would retry it instead).
    cj["spec"]["jobTemplate"]["spec"]["backoffLimit"] = json!(0);
    let mut s = snapshot(cj);
    for minute in 1..=4 {
        let (next, _) = step(&s, at(10, minute, 1));
        s = next;
        let newest = job_names(&s).last().unwrap().clone();
        finish_job(&mut s, &newest, minute % 2 == 0, at(10, minute, 30));
    }
    let (s, _) = step(&s, at(10, 4, 40));
    // 10:01 and 10:03 failed, 10:02 and 10:04 succeeded: no successful one is kept but the
    // newest (the schedule's memory), one failed one.
    let kept: Vec<Option<DateTime<Utc>>> = s.jobs.iter().map(scheduled_time).collect();
    assert_eq!(kept, vec![Some(at(10, 3, 0)), Some(at(10, 4, 0))]);
    let mut suspended = s.clone();
    suspended.cronjobs[0]["spec"]["suspend"] = json!(true);
    let (after, _) = step(&suspended, at(10, 9, 1));
    assert_eq!(after.jobs.len(), s.jobs.len(), "no new Job while suspended");
    // A deleted CronJob takes its Jobs and their pods along.
    let mut gone = s.clone();
    gone.cronjobs.clear();
    let (gone, _) = step(&gone, at(10, 5, 0));
    assert!(gone.jobs.is_empty() && gone.pods.is_empty());
    assert!(CronParams::of(&cronjob("bad", json!({}))).is_none());
    let _ = cronjob::job_name("x", at(0, 0, 0));
    let _ = Duration::zero();
}
