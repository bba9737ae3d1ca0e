//! Tests of the planner: start path, back-off schedule, restart policy matrix, adoption without
//! restarts, stopping only on evidence, image-missing and start-error statuses, writes only on
//! change.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::prelude::*;

use super::*;
use crate::runtime::{ExitRecord, ObservedAttempt, ObservedContainer, PodMeta, ProcessRecord};

fn t(secs: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 29, 9, 0, 0).unwrap() + Duration::seconds(secs)
}

fn desired(policy: &str, containers: &[&str]) -> DesiredPod {
    let cs: Vec<_> = containers
        .iter()
        .map(|n| serde_json::json!({"name": n, "image": "img:1"}))
        .collect();
    DesiredPod {
        key: "b1".into(),
        pod: serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u1"},
            "spec": {"restartPolicy": policy, "containers": cs, "terminationGracePeriodSeconds": 5}
        }))
        .unwrap(),
    }
}

fn observed(containers: &[(&str, u32, AttemptState)], sandbox: bool) -> ObservedPod {
    ObservedPod {
        meta: PodMeta {
            key: "b1".into(),
            namespace: "default".into(),
            name: "web".into(),
            uid: "u1".into(),
            grace_seconds: 5,
            created_at: t(0),
            hooks: Vec::new(),
            sidecars: Vec::new(),
            hostname: None,
            subdomain: None,
            host_network: false,
            dns: Default::default(),
        },
        sandbox: sandbox.then_some(ProcessRecord {
            pid: 10,
            start_time: 1,
        }),
        network: None,
        containers: containers
            .iter()
            .map(|(n, r, s)| {
                (
                    n.to_string(),
                    ObservedContainer {
                        latest: ObservedAttempt {
                            restart: *r,
                            state: s.clone(),
                        },
                        previous: None,
                    },
                )
            })
            .collect(),
    }
}

fn exited(code: i32, started: i64, finished: i64) -> AttemptState {
    AttemptState::Exited(ExitRecord {
        exit_code: code,
        signal: None,
        reason: if code == 0 {
            "Completed".into()
        } else {
            "Error".into()
        },
        message: None,
        started_at: Some(t(started)),
        finished_at: t(finished),
        oom_killed: false,
    })
}

fn running(at: i64) -> AttemptState {
    AttemptState::Running { started_at: t(at) }
}

struct World {
    desired: BTreeMap<String, DesiredPod>,
    observed: BTreeMap<String, ObservedPod>,
    /// The image state of every container (`Ready` when `None`).
    image: Option<ImageState>,
    recorded: BTreeMap<(String, String), PodStatusRecord>,
    busy: BTreeSet<String>,
    /// `None`: the pod network is off; `Some(cidr)`: on, with the node's CIDR (if any).
    network: Option<Option<String>>,
    failures: BTreeMap<String, SandboxFailure>,
    probes: probe::Tracker,
}

impl World {
    fn new(d: Option<DesiredPod>, o: Option<ObservedPod>) -> Self {
        World {
            desired: d.into_iter().map(|d| (d.key.clone(), d)).collect(),
            observed: o.into_iter().map(|o| (o.meta.key.clone(), o)).collect(),
            image: None,
            recorded: BTreeMap::new(),
            busy: BTreeSet::new(),
            network: None,
            failures: BTreeMap::new(),
            probes: probe::Tracker::new(),
        }
    }

    /// Plans at `now` and records written statuses (as the shell does).
    fn plan(&mut self, planner: &mut Planner, now: DateTime<Utc>) -> Vec<Action> {
        let images: BTreeMap<(String, String), ImageState> = self
            .desired
            .values()
            .flat_map(|d| {
                d.all_containers()
                    .map(|c| {
                        (
                            (d.key.clone(), c.name.clone()),
                            self.image.clone().unwrap_or(ImageState::Ready),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        let actions = planner.plan(&Inputs {
            desired: &self.desired,
            observed: &self.observed,
            images: &images,
            recorded: &self.recorded,
            busy: &self.busy,
            node_ip: "10.0.0.1",
            pod_network: self.network.is_some(),
            pod_cidr: self.network.as_ref().and_then(|c| c.as_deref()),
            sandbox_failures: &self.failures,
            probes: &self.probes,
            now,
        });
        for a in &actions {
            match a {
                Action::WriteStatus {
                    namespace,
                    name,
                    record,
                } => {
                    self.recorded
                        .insert((namespace.clone(), name.clone()), record.clone());
                }
                Action::DeleteStatus { namespace, name } => {
                    self.recorded.remove(&(namespace.clone(), name.clone()));
                }
                _ => {}
            }
        }
        actions
    }

    fn status(&self) -> &serde_json::Value {
        &self.recorded[&("default".to_string(), "web".to_string())].status
    }
}

fn runtime_actions(actions: &[Action]) -> Vec<&Action> {
    actions
        .iter()
        .filter(|a| {
            !matches!(
                a,
                Action::WriteStatus { .. } | Action::DeleteStatus { .. } | Action::Event { .. }
            )
        })
        .collect()
}

fn starts(actions: &[Action]) -> Vec<(String, u32)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::StartContainer {
                container, restart, ..
            } => Some((container.clone(), *restart)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_new_pod_gets_a_sandbox_then_its_containers() {
    let mut p = Planner::new();
    let mut w = World::new(Some(desired("Always", &["a", "b"])), None);
    let actions = w.plan(&mut p, t(0));
    assert_eq!(
        runtime_actions(&actions),
        [&Action::CreateSandbox { key: "b1".into() }]
    );
    assert_eq!(w.status()["phase"], "Pending");
    assert_eq!(
        w.status()["containerStatuses"][0]["state"]["waiting"]["reason"],
        "ContainerCreating"
    );
    assert_eq!(w.status()["hostIP"], "10.0.0.1");

    w.observed.insert("b1".into(), observed(&[], true));
    let actions = w.plan(&mut p, t(1));
    assert_eq!(
        starts(&actions),
        [("a".to_string(), 0), ("b".to_string(), 0)]
    );

    w.observed.insert(
        "b1".into(),
        observed(&[("a", 0, running(1)), ("b", 0, running(1))], true),
    );
    let actions = w.plan(&mut p, t(2));
    assert!(runtime_actions(&actions).is_empty());
    assert_eq!(w.status()["phase"], "Running");
    assert_eq!(w.status()["containerStatuses"][1]["ready"], true);
    let ready = w.status()["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap()
        .clone();
    assert_eq!(ready["status"], "True");
    // Nothing changed: nothing is written.
    let again = w.plan(&mut p, t(30));
    assert!(again.is_empty(), "{again:?}");
}

#[test]
fn back_off_is_immediate_then_doubles_to_five_minutes() {
    assert_eq!(
        (0..8).map(backoff_for).collect::<Vec<_>>(),
        [0, 10, 20, 40, 80, 160, 300, 300]
    );
    // Simulate a container that crashes 1 s after every start.
    let mut p = Planner::new();
    let mut w = World::new(Some(desired("Always", &["a"])), None);
    let mut now = 0;
    let mut restart = 0;
    let mut waits = Vec::new();
    w.observed
        .insert("b1".into(), observed(&[("a", 0, exited(1, 0, 1))], true));
    now += 1;
    while restart < 8 {
        let actions = w.plan(&mut p, t(now));
        if let Some((_, r)) = starts(&actions).first() {
            waits.push(now - (now_finished(&w)));
            restart = *r;
            w.observed.insert(
                "b1".into(),
                observed(&[("a", restart, exited(1, now, now + 1))], true),
            );
            now += 1;
        } else {
            let st = &w.status()["containerStatuses"][0];
            assert_eq!(st["state"]["waiting"]["reason"], "CrashLoopBackOff");
            assert_eq!(st["lastState"]["terminated"]["exitCode"], 1);
            assert_eq!(st["restartCount"], restart);
            now += 1;
        }
    }
    assert_eq!(waits, [0, 10, 20, 40, 80, 160, 300, 300]);
}

fn now_finished(w: &World) -> i64 {
    match &w.observed["b1"].containers["a"].latest.state {
        AttemptState::Exited(e) => (e.finished_at - t(0)).num_seconds(),
        _ => 0,
    }
}

#[test]
fn back_off_resets_after_ten_minutes_of_running() {
    let mut p = Planner::new();
    let mut w = World::new(
        Some(desired("Always", &["a"])),
        Some(observed(&[("a", 5, exited(1, 0, 700))], true)),
    );
    assert_eq!(starts(&w.plan(&mut p, t(700))), [("a".to_string(), 6)]);
}

#[test]
fn restart_policy_matrix() {
    for (policy, code, restarts, phase) in [
        ("Always", 0, true, "Running"),
        ("Always", 1, true, "Running"),
        ("OnFailure", 0, false, "Succeeded"),
        ("OnFailure", 2, true, "Running"),
        ("Never", 0, false, "Succeeded"),
        ("Never", 3, false, "Failed"),
    ] {
        let mut p = Planner::new();
        let mut w = World::new(
            Some(desired(policy, &["a"])),
            Some(observed(&[("a", 0, exited(code, 0, 1))], true)),
        );
        let actions = w.plan(&mut p, t(1));
        assert_eq!(
            !starts(&actions).is_empty(),
            restarts,
            "{policy} exit {code}"
        );
        if !restarts {
            assert_eq!(w.status()["phase"], phase, "{policy} exit {code}");
            assert_eq!(
                w.status()["containerStatuses"][0]["state"]["terminated"]["exitCode"],
                code
            );
            let reason = if code == 0 { "Completed" } else { "Error" };
            assert_eq!(
                w.status()["containerStatuses"][0]["state"]["terminated"]["reason"],
                reason
            );
        }
    }
}

#[test]
fn adoption_never_restarts_running_containers() {
    // A fresh planner (the agent just restarted) over running containers: no action but status.
    let mut p = Planner::new();
    let mut w = World::new(
        Some(desired("Always", &["a", "b"])),
        Some(observed(
            &[("a", 3, running(5)), ("b", 0, running(5))],
            true,
        )),
    );
    let actions = w.plan(&mut p, t(100));
    assert!(runtime_actions(&actions).is_empty(), "{actions:?}");
    assert_eq!(w.status()["containerStatuses"][0]["restartCount"], 3);
    assert_eq!(w.status()["phase"], "Running");
}

#[test]
fn a_lost_binding_stops_the_copy_gracefully_then_removes_it() {
    let mut p = Planner::new();
    let mut w = World::new(
        None,
        Some(observed(
            &[("a", 0, running(0)), ("b", 0, exited(0, 0, 1))],
            true,
        )),
    );
    w.recorded.insert(
        ("default".into(), "web".into()),
        PodStatusRecord {
            binding: "b1".into(),
            pod_uid: "u1".into(),
            status: serde_json::json!({}),
        },
    );
    let actions = w.plan(&mut p, t(10));
    assert!(actions.contains(&Action::KillContainer {
        key: "b1".into(),
        container: "a".into(),
        restart: 0,
        signal: Signal::Term,
        grace: 5,
        pre_stop: None,
    }));
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::Event { reason, .. } if *reason == EventReason::Killing)));
    assert!(actions.contains(&Action::DeleteStatus {
        namespace: "default".into(),
        name: "web".into()
    }));
    assert!(
        runtime_actions(&w.plan(&mut p, t(12))).is_empty(),
        "within the grace period"
    );
    assert_eq!(
        runtime_actions(&w.plan(&mut p, t(15))),
        [&Action::KillContainer {
            key: "b1".into(),
            container: "a".into(),
            restart: 0,
            signal: Signal::Kill,
            grace: 0,
            pre_stop: None,
        }]
    );
    assert!(
        runtime_actions(&w.plan(&mut p, t(16))).is_empty(),
        "SIGKILL is not repeated at once"
    );
    assert_eq!(
        runtime_actions(&w.plan(&mut p, t(20))).len(),
        1,
        "but every 5 s"
    );
    w.observed
        .insert("b1".into(), observed(&[("a", 0, exited(137, 0, 15))], true));
    assert_eq!(
        runtime_actions(&w.plan(&mut p, t(21))),
        [&Action::RemovePod { key: "b1".into() }]
    );
}

#[test]
fn a_copy_that_is_still_desired_is_never_stopped() {
    let mut p = Planner::new();
    let mut w = World::new(
        Some(desired("Always", &["a"])),
        Some(observed(&[("a", 0, running(0))], true)),
    );
    for s in 0..100 {
        let actions = w.plan(&mut p, t(s));
        assert!(!actions
            .iter()
            .any(|a| matches!(a, Action::KillContainer { .. } | Action::RemovePod { .. })));
    }
}

#[test]
fn a_missing_image_waits_with_a_clear_reason_and_one_event() {
    let mut p = Planner::new();
    let mut w = World::new(Some(desired("Always", &["a"])), None);
    w.image = Some(ImageState::Unavailable {
        reason: "ErrImageNeverPull".into(),
        message: "Container image \"img:1\" is not present with pull policy of Never".into(),
    });
    let actions = w.plan(&mut p, t(0));
    assert!(
        runtime_actions(&actions).is_empty(),
        "no sandbox without images"
    );
    let waiting = &w.status()["containerStatuses"][0]["state"]["waiting"];
    assert_eq!(waiting["reason"], "ErrImageNeverPull");
    assert!(waiting["message"].as_str().unwrap().contains("img:1"));
    assert_eq!(w.status()["phase"], "Pending");
    assert_eq!(
        actions
            .iter()
            .filter(|a| matches!(a, Action::Event { .. }))
            .count(),
        1
    );
    assert!(
        w.plan(&mut p, t(1)).is_empty(),
        "no repeated event or write"
    );
}

#[test]
fn a_start_error_is_reported_as_run_container_error() {
    let mut p = Planner::new();
    let failed = AttemptState::Exited(ExitRecord {
        exit_code: 128,
        signal: None,
        reason: "StartError".into(),
        message: Some("exec: \"nope\": executable file not found in $PATH".into()),
        started_at: None,
        finished_at: t(1),
        oom_killed: false,
    });
    let mut w = World::new(
        Some(desired("Always", &["a"])),
        Some(observed(&[("a", 1, failed.clone())], true)),
    );
    let actions = w.plan(&mut p, t(2));
    assert!(starts(&actions).is_empty(), "in back-off");
    let st = &w.status()["containerStatuses"][0];
    assert_eq!(st["state"]["waiting"]["reason"], "RunContainerError");
    assert!(st["state"]["waiting"]["message"]
        .as_str()
        .unwrap()
        .contains("nope"));
    assert_eq!(st["lastState"]["terminated"]["reason"], "StartError");
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::Event { reason, .. } if *reason == EventReason::BackOff)));
    // Never: a terminated StartError, phase Failed.
    let mut w = World::new(
        Some(desired("Never", &["a"])),
        Some(observed(&[("a", 0, failed)], true)),
    );
    w.plan(&mut Planner::new(), t(2));
    assert_eq!(
        w.status()["containerStatuses"][0]["state"]["terminated"]["reason"],
        "StartError"
    );
    assert_eq!(w.status()["phase"], "Failed");
}

#[test]
fn busy_pods_get_no_new_actions() {
    let mut p = Planner::new();
    let mut w = World::new(Some(desired("Always", &["a"])), None);
    w.busy.insert("b1".into());
    assert!(runtime_actions(&w.plan(&mut p, t(0))).is_empty());
}

#[test]
fn a_dead_sandbox_is_recreated_once_its_containers_are_gone() {
    let mut p = Planner::new();
    let mut w = World::new(
        Some(desired("Always", &["a"])),
        Some(observed(&[("a", 0, exited(137, 0, 5))], false)),
    );
    assert_eq!(
        runtime_actions(&w.plan(&mut p, t(6))),
        [&Action::CreateSandbox { key: "b1".into() }]
    );
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    })]
    /// Whatever the containers' states, a desired pod is never killed or removed, a pod that
    /// is not desired is never started, and the phase is one of Kubernetes' five.
    #[test]
    fn stopping_only_follows_the_desired_set(
        states in proptest::collection::vec((0u32..5, 0u8..4, -2i32..3), 1..4),
        is_desired in any::<bool>(),
        policy in prop_oneof![Just("Always"), Just("OnFailure"), Just("Never")],
        now in 0i64..2000,
    ) {
        let names = ["a", "b", "c", "d"];
        let containers: Vec<(&str, u32, AttemptState)> = states
            .iter()
            .enumerate()
            .map(|(i, (r, kind, code))| {
                let s = match kind {
                    0 => AttemptState::Creating,
                    1 => running(0),
                    _ => exited(*code, 0, 1),
                };
                (names[i], *r, s)
            })
            .collect();
        let cnames: Vec<&str> = names[..containers.len()].to_vec();
        let mut w = World::new(is_desired.then(|| desired(policy, &cnames)), Some(observed(&containers, true)));
        let actions = w.plan(&mut Planner::new(), t(now));
        for a in &actions {
            match a {
                Action::KillContainer { .. } | Action::RemovePod { .. } => prop_assert!(!is_desired),
                Action::StartContainer { .. } | Action::CreateSandbox { .. } => prop_assert!(is_desired),
                _ => {}
            }
        }
        if is_desired {
            let phase = w.status()["phase"].as_str().unwrap().to_string();
            prop_assert!(["Pending", "Running", "Succeeded", "Failed"].contains(&phase.as_str()));
        }
    }
}

#[test]
fn containers_start_in_parallel_and_a_busy_one_keeps_its_back_off() {
    let mut p = Planner::new();
    let mut w = World::new(
        Some(desired("Always", &["a", "b"])),
        Some(observed(
            &[("a", 0, exited(1, 0, 1)), ("b", 0, exited(1, 0, 1))],
            true,
        )),
    );
    w.busy.insert(container_busy_key("b1", "b"));
    assert_eq!(starts(&w.plan(&mut p, t(1))), [("a".to_string(), 1)]);
    w.busy.clear();
    // b's start was not carried out: it is still due now, not pushed into back-off (a's,
    // not observed yet in this test, now waits its 10 s).
    assert_eq!(starts(&w.plan(&mut p, t(1))), [("b".to_string(), 1)]);
}

#[test]
fn a_pulling_image_holds_the_start_and_a_failed_pull_shows_its_reason() {
    let mut p = Planner::new();
    let mut w = World::new(Some(desired("Always", &["a"])), None);
    w.image = Some(ImageState::Pulling);
    let actions = w.plan(&mut p, t(0));
    assert!(
        runtime_actions(&actions).is_empty(),
        "nothing starts while pulling"
    );
    let waiting = &w.status()["containerStatuses"][0]["state"]["waiting"];
    assert_eq!(waiting["reason"], "ContainerCreating");

    w.image = Some(ImageState::Unavailable {
        reason: "ImagePullBackOff".into(),
        message: "Back-off pulling image \"img:1\": manifest unknown".into(),
    });
    let actions = w.plan(&mut p, t(1));
    assert!(runtime_actions(&actions).is_empty());
    let waiting = &w.status()["containerStatuses"][0]["state"]["waiting"];
    assert_eq!(waiting["reason"], "ImagePullBackOff");
    assert!(waiting["message"]
        .as_str()
        .unwrap()
        .contains("manifest unknown"));
    assert_eq!(w.status()["phase"], "Pending");

    w.image = Some(ImageState::Ready);
    let actions = w.plan(&mut p, t(2));
    assert!(
        !runtime_actions(&actions).is_empty(),
        "the sandbox is created once the image is ready"
    );
}

fn attached(cidr: &str, ip: [u8; 4]) -> crate::runtime::network::PodNetwork {
    use crate::runtime::network::{PodAddress, PodNetwork};
    PodNetwork {
        cidr: cidr.into(),
        container_id: "b1".into(),
        address: Some(PodAddress {
            ip: ip.into(),
            prefix: 24,
            gateway: [ip[0], ip[1], ip[2], 1].into(),
        }),
        result: None,
    }
}

fn events(actions: &[Action]) -> Vec<EventReason> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Event { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect()
}

#[test]
fn without_a_pod_cidr_the_pod_waits_for_the_network() {
    let mut p = Planner::new();
    let mut w = World::new(Some(desired("Always", &["a"])), None);
    w.network = Some(None);
    let actions = w.plan(&mut p, t(0));
    assert!(runtime_actions(&actions).is_empty(), "no sandbox yet");
    assert_eq!(events(&actions), [EventReason::NetworkNotReady]);
    let waiting = &w.status()["containerStatuses"][0]["state"]["waiting"];
    assert_eq!(waiting["reason"], "ContainerCreating");
    assert_eq!(
        waiting["message"],
        "network not ready: this node has no pod CIDR yet"
    );
    // Said once, not at every round.
    let actions = w.plan(&mut p, t(1));
    assert!(events(&actions).is_empty() && runtime_actions(&actions).is_empty());

    w.network = Some(Some("10.244.3.0/24".into()));
    let actions = w.plan(&mut p, t(2));
    assert_eq!(
        runtime_actions(&actions),
        [&Action::CreateSandbox { key: "b1".into() }]
    );
    assert!(w.status()["containerStatuses"][0]["state"]["waiting"]
        .get("message")
        .is_none());
}

#[test]
fn a_host_network_pod_needs_no_pod_cidr_and_has_the_node_ip() {
    let mut p = Planner::new();
    let mut d = desired("Always", &["a"]);
    d.pod.spec.as_mut().unwrap().host_network = Some(true);
    let mut w = World::new(Some(d.clone()), None);
    // Pod network on, no pod CIDR yet: the hostNetwork pod's sandbox is created anyway.
    w.network = Some(None);
    let actions = w.plan(&mut p, t(0));
    assert_eq!(
        runtime_actions(&actions),
        [&Action::CreateSandbox { key: "b1".into() }]
    );
    assert!(events(&actions).is_empty(), "{actions:?}");
    // Its sandbox runs without an attachment: containers start, the pod IP is the node's.
    let mut w = World::new(Some(d), Some(observed(&[("a", 0, running(1))], true)));
    w.network = Some(Some("10.244.3.0/24".into()));
    let actions = w.plan(&mut p, t(1));
    assert!(runtime_actions(&actions).is_empty(), "{actions:?}");
    assert_eq!(w.status()["podIP"], "10.0.0.1");
    assert_eq!(
        w.status()["podIPs"],
        serde_json::json!([{"ip": "10.0.0.1"}])
    );
}

#[test]
fn the_pod_ip_comes_from_the_attachment() {
    let mut p = Planner::new();
    let mut o = observed(&[("a", 0, running(1))], true);
    o.network = Some(attached("10.244.3.0/24", [10, 244, 3, 7]));
    let mut w = World::new(Some(desired("Always", &["a"])), Some(o));
    w.network = Some(Some("10.244.3.0/24".into()));
    let actions = w.plan(&mut p, t(2));
    assert!(runtime_actions(&actions).is_empty(), "{actions:?}");
    assert_eq!(w.status()["podIP"], "10.244.3.7");
    assert_eq!(
        w.status()["podIPs"],
        serde_json::json!([{"ip": "10.244.3.7"}])
    );
    assert_eq!(w.status()["hostIP"], "10.0.0.1");
}

#[test]
fn a_live_sandbox_without_an_address_is_attached_before_containers_start() {
    let mut p = Planner::new();
    let mut w = World::new(Some(desired("Always", &["a"])), Some(observed(&[], true)));
    w.network = Some(Some("10.244.3.0/24".into()));
    let actions = w.plan(&mut p, t(0));
    assert_eq!(
        runtime_actions(&actions),
        [&Action::CreateSandbox { key: "b1".into() }],
        "no container starts in a namespace without its address"
    );
}

#[test]
fn an_address_outside_the_current_cidr_recreates_the_sandbox() {
    let mut p = Planner::new();
    let mut o = observed(&[("a", 0, running(1))], true);
    o.network = Some(attached("10.244.3.0/24", [10, 244, 3, 7]));
    let mut w = World::new(Some(desired("Always", &["a"])), Some(o));
    // The node lost 10.244.3.0/24 in a claim race and holds 10.244.9.0/24 now.
    w.network = Some(Some("10.244.9.0/24".into()));
    let actions = w.plan(&mut p, t(2));
    assert_eq!(
        runtime_actions(&actions),
        [&Action::StopSandbox { key: "b1".into() }]
    );
    assert_eq!(events(&actions), [EventReason::SandboxChanged]);

    // The sandbox is gone (network released): the running container is killed…
    let mut o = observed(&[("a", 0, running(1))], false);
    o.network = None;
    w.observed.insert("b1".into(), o);
    let actions = w.plan(&mut p, t(3));
    assert_eq!(
        runtime_actions(&actions),
        [&Action::KillContainer {
            key: "b1".into(),
            container: "a".into(),
            restart: 0,
            signal: Signal::Kill,
            grace: 0,
            pre_stop: None,
        }]
    );
    // …and once it exited, a new sandbox is made (from the new CIDR, by the shell).
    w.observed
        .insert("b1".into(), observed(&[("a", 0, exited(137, 1, 3))], false));
    let actions = w.plan(&mut p, t(4));
    assert_eq!(
        runtime_actions(&actions),
        [&Action::CreateSandbox { key: "b1".into() }]
    );
}

#[test]
fn a_failed_sandbox_is_retried_with_back_off_and_its_error_shown() {
    let mut p = Planner::new();
    let mut w = World::new(Some(desired("Always", &["a"])), None);
    w.network = Some(Some("10.244.3.0/24".into()));
    let message = "Failed to create pod sandbox: network: CNI plugin bridge ADD failed: no IP addresses available (code 11)";
    w.failures.insert(
        "b1".into(),
        SandboxFailure {
            message: message.into(),
            at: t(10),
            attempts: 3,
        },
    );
    assert_eq!(sandbox_retry_delay(3), 4);
    let actions = w.plan(&mut p, t(13));
    assert!(runtime_actions(&actions).is_empty(), "in back-off");
    assert_eq!(
        w.status()["containerStatuses"][0]["state"]["waiting"]["message"],
        message
    );
    let actions = w.plan(&mut p, t(14));
    assert_eq!(
        runtime_actions(&actions),
        [&Action::CreateSandbox { key: "b1".into() }]
    );
}

#[test]
fn sandbox_retries_back_off_to_a_limit() {
    let delays: Vec<i64> = (1..=8).map(sandbox_retry_delay).collect();
    assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30, 30]);
    assert_eq!(sandbox_retry_delay(u32::MAX), MAX_SANDBOX_RETRY);
}

#[test]
fn a_failed_stop_of_a_stale_sandbox_waits_for_its_retry() {
    let mut p = Planner::new();
    let mut o = observed(&[("a", 0, running(1))], true);
    o.network = Some(attached("10.244.3.0/24", [10, 244, 3, 7]));
    let mut w = World::new(Some(desired("Always", &["a"])), Some(o));
    w.network = Some(Some("10.244.9.0/24".into()));
    w.failures.insert(
        "b1".into(),
        SandboxFailure {
            message: "Failed to stop pod sandbox: network: CNI plugin bridge DEL failed".into(),
            at: t(10),
            attempts: 1,
        },
    );
    let actions = w.plan(&mut p, t(10));
    assert!(runtime_actions(&actions).is_empty() && events(&actions).is_empty());
    let actions = w.plan(&mut p, t(11));
    assert_eq!(
        runtime_actions(&actions),
        [&Action::StopSandbox { key: "b1".into() }]
    );
}

/// A one-container pod "web" (container "a") with these extra container fields.
fn probed(extra: serde_json::Value, grace: i64) -> DesiredPod {
    let mut c = serde_json::json!({"name": "a", "image": "img:1"});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    DesiredPod {
        key: "b1".into(),
        pod: serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u1"},
            "spec": {"containers": [c], "terminationGracePeriodSeconds": grace}
        }))
        .unwrap(),
    }
}

/// Runs the due probes of the world's tracker at `now` with `outcome`.
fn probe_all(w: &mut World, now: DateTime<Utc>, outcome: Result<(), &str>) {
    for r in w.probes.due(now) {
        w.probes.record(&r.id, outcome.map_err(str::to_string), now);
    }
}

fn sync_probes(w: &mut World) {
    let mut running = Vec::new();
    for (key, d) in &w.desired {
        let Some(o) = w.observed.get(key) else {
            continue;
        };
        for c in d.probed_containers() {
            if let Some(oc) = o.containers.get(&c.name) {
                if let AttemptState::Running { started_at } = oc.latest.state {
                    running.push(probe::RunningAttempt {
                        pod: key.clone(),
                        container: c.clone(),
                        restart: oc.latest.restart,
                        started_at,
                    });
                }
            }
        }
    }
    w.probes.sync(&running);
}

fn messages(actions: &[Action], reason: EventReason) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Event {
                reason: r, message, ..
            } if *r == reason => Some(message.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_failing_liveness_probe_stops_the_container_with_its_pre_stop_hook_then_restarts_it() {
    let d = probed(
        serde_json::json!({
            "livenessProbe": {"exec": {"command": ["cat", "/tmp/healthy"]},
                "periodSeconds": 1, "failureThreshold": 3},
            "lifecycle": {"preStop": {"exec": {"command": ["sh", "-c", "echo bye"]}}}
        }),
        4,
    );
    let mut p = Planner::new();
    let mut w = World::new(Some(d), Some(observed(&[("a", 0, running(0))], true)));
    sync_probes(&mut w);
    probe_all(&mut w, t(0), Ok(()));
    let actions = w.plan(&mut p, t(0));
    assert!(runtime_actions(&actions).is_empty());
    assert_eq!(w.status()["containerStatuses"][0]["ready"], true);

    // The first failure: reported once, nothing killed.
    probe_all(&mut w, t(1), Err("cat: can't open '/tmp/healthy'"));
    let actions = w.plan(&mut p, t(1));
    assert_eq!(
        messages(&actions, EventReason::Unhealthy),
        ["Liveness probe failed: cat: can't open '/tmp/healthy'"]
    );
    assert!(runtime_actions(&actions).is_empty());
    probe_all(&mut w, t(2), Err("cat: can't open '/tmp/healthy'"));
    let actions = w.plan(&mut p, t(2));
    assert!(
        messages(&actions, EventReason::Unhealthy).is_empty(),
        "not repeated every second"
    );
    assert!(runtime_actions(&actions).is_empty());

    // The third: Killing, then preStop + TERM within the pod's grace period.
    probe_all(&mut w, t(3), Err("cat: can't open '/tmp/healthy'"));
    let actions = w.plan(&mut p, t(3));
    assert_eq!(
        messages(&actions, EventReason::Killing),
        ["Container a failed liveness probe, will be restarted"]
    );
    assert_eq!(
        runtime_actions(&actions),
        [&Action::KillContainer {
            key: "b1".into(),
            container: "a".into(),
            restart: 0,
            signal: Signal::Term,
            grace: 4,
            pre_stop: Some(Ok(probe::Handler::Exec {
                command: vec!["sh".into(), "-c".into(), "echo bye".into()]
            })),
        }]
    );
    assert!(
        runtime_actions(&w.plan(&mut p, t(6))).is_empty(),
        "in the grace period"
    );
    assert_eq!(
        runtime_actions(&w.plan(&mut p, t(7))),
        [&Action::KillContainer {
            key: "b1".into(),
            container: "a".into(),
            restart: 0,
            signal: Signal::Kill,
            grace: 0,
            pre_stop: None,
        }]
    );
    // It exited: restarted at once (first restart), RESTARTS counts up.
    w.observed
        .insert("b1".into(), observed(&[("a", 0, exited(137, 0, 7))], true));
    sync_probes(&mut w);
    assert_eq!(starts(&w.plan(&mut p, t(8))), [("a".to_string(), 1)]);
    w.observed
        .insert("b1".into(), observed(&[("a", 1, running(8))], true));
    sync_probes(&mut w);
    let actions = w.plan(&mut p, t(8));
    assert!(runtime_actions(&actions).is_empty(), "fresh probe state");
    assert_eq!(w.status()["containerStatuses"][0]["restartCount"], 1);

    // Failing again: killed again, and this time the restart backs off.
    for s in 9..12 {
        probe_all(&mut w, t(s), Err("still"));
    }
    let actions = w.plan(&mut p, t(11));
    assert_eq!(runtime_actions(&actions).len(), 1);
    assert_eq!(
        messages(&actions, EventReason::Unhealthy),
        ["Liveness probe failed: still"]
    );
    w.observed
        .insert("b1".into(), observed(&[("a", 1, exited(143, 8, 12))], true));
    sync_probes(&mut w);
    assert!(starts(&w.plan(&mut p, t(13))).is_empty());
    assert_eq!(
        w.status()["containerStatuses"][0]["state"]["waiting"]["reason"],
        "CrashLoopBackOff"
    );
    assert_eq!(starts(&w.plan(&mut p, t(22))), [("a".to_string(), 2)]);
}

#[test]
fn a_zero_grace_period_kills_at_once_and_a_probe_grace_period_wins() {
    let d = probed(
        serde_json::json!({"livenessProbe": {"tcpSocket": {"port": 80},
            "periodSeconds": 1, "failureThreshold": 1}}),
        0,
    );
    let mut p = Planner::new();
    let mut w = World::new(Some(d), Some(observed(&[("a", 0, running(0))], true)));
    sync_probes(&mut w);
    probe_all(&mut w, t(0), Err("refused"));
    let actions = w.plan(&mut p, t(0));
    assert!(matches!(
        runtime_actions(&actions)[..],
        [Action::KillContainer {
            signal: Signal::Kill,
            ..
        }]
    ));

    let d = probed(
        serde_json::json!({"livenessProbe": {"tcpSocket": {"port": 80},
            "periodSeconds": 1, "failureThreshold": 1, "terminationGracePeriodSeconds": 2}}),
        30,
    );
    let mut p = Planner::new();
    let mut w = World::new(Some(d), Some(observed(&[("a", 0, running(0))], true)));
    sync_probes(&mut w);
    probe_all(&mut w, t(0), Err("refused"));
    let actions = w.plan(&mut p, t(0));
    assert!(matches!(
        runtime_actions(&actions)[..],
        [Action::KillContainer {
            signal: Signal::Term,
            grace: 2,
            ..
        }]
    ));
    assert_eq!(
        runtime_actions(&w.plan(&mut p, t(2))).len(),
        1,
        "KILL after 2 s"
    );
}

#[test]
fn readiness_flips_the_ready_condition_without_restarts_and_writes_only_on_flips() {
    let d = probed(
        serde_json::json!({"readinessProbe": {"httpGet": {"port": 80, "path": "/ready"},
            "periodSeconds": 1}}),
        5,
    );
    let mut p = Planner::new();
    let mut w = World::new(Some(d), Some(observed(&[("a", 0, running(0))], true)));
    sync_probes(&mut w);
    let ready = |w: &World| {
        let s = w.status();
        let cond = s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap()["status"]
            .clone();
        (s["containerStatuses"][0]["ready"].clone(), cond)
    };
    w.plan(&mut p, t(0));
    assert_eq!(
        ready(&w),
        (serde_json::json!(false), serde_json::json!("False"))
    );
    assert_eq!(w.status()["containerStatuses"][0]["started"], true);
    probe_all(&mut w, t(1), Ok(()));
    w.plan(&mut p, t(1));
    assert_eq!(
        ready(&w),
        (serde_json::json!(true), serde_json::json!("True"))
    );
    // Still ready: no write.
    probe_all(&mut w, t(2), Ok(()));
    let actions = w.plan(&mut p, t(2));
    assert!(!actions
        .iter()
        .any(|a| matches!(a, Action::WriteStatus { .. })));
    // Failing three times in a row: not ready, never killed; one Unhealthy per minute.
    let mut unhealthy = 0;
    for s in 3..70 {
        probe_all(&mut w, t(s), Err("HTTP probe failed with statuscode: 503"));
        let actions = w.plan(&mut p, t(s));
        assert!(runtime_actions(&actions).is_empty());
        unhealthy += messages(&actions, EventReason::Unhealthy).len();
        if s == 5 {
            assert_eq!(
                ready(&w),
                (serde_json::json!(false), serde_json::json!("False"))
            );
        }
    }
    assert_eq!(unhealthy, 2, "at the first failure and a minute later");
    probe_all(&mut w, t(70), Ok(()));
    w.plan(&mut p, t(70));
    assert_eq!(
        ready(&w),
        (serde_json::json!(true), serde_json::json!("True"))
    );
    assert_eq!(w.status()["containerStatuses"][0]["restartCount"], 0);
}

#[test]
fn a_startup_probe_holds_started_and_ready_back() {
    let d = probed(
        serde_json::json!({"startupProbe": {"exec": {"command": ["true"]}, "periodSeconds": 1}}),
        5,
    );
    let mut p = Planner::new();
    let mut w = World::new(Some(d), Some(observed(&[("a", 0, running(0))], true)));
    sync_probes(&mut w);
    w.plan(&mut p, t(0));
    let cs = &w.status()["containerStatuses"][0];
    assert_eq!(
        (cs["started"].clone(), cs["ready"].clone()),
        (false.into(), false.into())
    );
    probe_all(&mut w, t(1), Ok(()));
    w.plan(&mut p, t(1));
    let cs = &w.status()["containerStatuses"][0];
    assert_eq!(
        (cs["started"].clone(), cs["ready"].clone()),
        (true.into(), true.into())
    );
}

#[test]
fn deleting_a_pod_runs_the_recorded_pre_stop_hook_then_kills() {
    let hooked = probed(
        serde_json::json!({"lifecycle": {"preStop": {"httpGet": {"port": 8080, "path": "/quit"}}}}),
        5,
    );
    let mut o = observed(&[("a", 0, running(0))], true);
    o.meta.hooks = probe::hooked_containers(hooked.containers());
    let mut p = Planner::new();
    let mut w = World::new(None, Some(o));
    let actions = w.plan(&mut p, t(10));
    assert_eq!(
        runtime_actions(&actions),
        [&Action::KillContainer {
            key: "b1".into(),
            container: "a".into(),
            restart: 0,
            signal: Signal::Term,
            grace: 5,
            pre_stop: Some(Ok(probe::Handler::Http {
                scheme: "HTTP".into(),
                host: None,
                port: 8080,
                path: "/quit".into(),
                headers: vec![],
            })),
        }]
    );
    // A grace period of 0: SIGKILL at once, no hook.
    let mut o = observed(&[("a", 0, running(0))], true);
    o.meta.grace_seconds = 0;
    o.meta.hooks = probe::hooked_containers(hooked.containers());
    let mut p = Planner::new();
    let mut w = World::new(None, Some(o));
    let actions = w.plan(&mut p, t(10));
    assert!(matches!(
        runtime_actions(&actions)[..],
        [Action::KillContainer {
            signal: Signal::Kill,
            pre_stop: None,
            ..
        }]
    ));
}

/// The pod bound under key `k<i>` (pod `p<i>`, uid `u<i>`).
fn bound(i: usize) -> DesiredPod {
    DesiredPod {
        key: format!("k{i}"),
        pod: serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("p{i}"), "namespace": "default", "uid": format!("u{i}")},
            "spec": {"containers": [{"name": "main", "image": "img:1"}],
                     "terminationGracePeriodSeconds": 2}
        }))
        .unwrap(),
    }
}

/// Carries out `actions` on a fake runtime, each succeeding unless `fail` says otherwise (a
/// failed sandbox creation may leave its process behind, unattached, as the real one can).
fn execute(w: &mut World, actions: &[Action], fail: &mut impl FnMut() -> bool, now: DateTime<Utc>) {
    for a in actions {
        match a {
            Action::CreateSandbox { key } => {
                let d = &w.desired[key];
                let failed = fail();
                let o = w
                    .observed
                    .entry(key.clone())
                    .or_insert_with(|| ObservedPod {
                        meta: PodMeta {
                            key: key.clone(),
                            namespace: d.namespace(),
                            name: d.name(),
                            uid: d.uid(),
                            grace_seconds: 2,
                            created_at: now,
                            hooks: Vec::new(),
                            sidecars: Vec::new(),
                            hostname: None,
                            subdomain: None,
                            host_network: false,
                            dns: Default::default(),
                        },
                        sandbox: None,
                        network: None,
                        containers: BTreeMap::new(),
                    });
                if failed {
                    if fail() {
                        o.sandbox = Some(ProcessRecord {
                            pid: 1,
                            start_time: 1,
                        });
                    }
                    let attempts = w.failures.get(key).map_or(0, |f| f.attempts) + 1;
                    w.failures.insert(
                        key.clone(),
                        SandboxFailure {
                            message: "boom".into(),
                            at: now,
                            attempts,
                        },
                    );
                } else {
                    o.sandbox = Some(ProcessRecord {
                        pid: 1,
                        start_time: 1,
                    });
                    w.failures.remove(key);
                }
            }
            Action::StartContainer {
                key,
                container,
                restart,
            } => {
                if let Some(o) = w.observed.get_mut(key) {
                    let state = if fail() {
                        exited(1, 0, 0)
                    } else {
                        AttemptState::Running { started_at: now }
                    };
                    o.containers.insert(
                        container.clone(),
                        ObservedContainer {
                            latest: ObservedAttempt {
                                restart: *restart,
                                state,
                            },
                            previous: None,
                        },
                    );
                }
            }
            Action::KillContainer { key, container, .. } => {
                if let Some(c) = w
                    .observed
                    .get_mut(key)
                    .and_then(|o| o.containers.get_mut(container))
                {
                    c.latest.state = AttemptState::Exited(ExitRecord {
                        exit_code: 137,
                        signal: Some(9),
                        reason: "Error".into(),
                        message: None,
                        started_at: None,
                        finished_at: now,
                        oom_killed: false,
                    });
                }
            }
            Action::RemovePod { key } => {
                w.observed.remove(key);
            }
            Action::StopSandbox { key } => {
                if let Some(o) = w.observed.get_mut(key) {
                    o.sandbox = None;
                }
            }
            _ => {}
        }
    }
}

proptest! {
    /// Issue 13: across any sequence of binds, unbinds and failing runtime outcomes, the node
    /// never holds a sandbox for a pod that is neither bound here nor being stopped, holds at
    /// most one per pod, and once the bindings stop changing (and the runtime works again)
    /// it holds exactly one per bound pod — none after every pod is unbound.
    #[test]
    fn sandboxes_held_never_exceed_pods_bound(
        steps in proptest::collection::vec((proptest::collection::btree_set(0usize..6, 0..6), any::<u64>()), 1..25),
    ) {
        let mut p = Planner::new();
        let mut w = World::new(None, None);
        let mut now = 0i64;
        for (bound_set, seed) in &steps {
            w.desired = bound_set.iter().map(|&i| (format!("k{i}"), bound(i))).collect();
            w.failures.retain(|k, _| w.desired.contains_key(k));
            let bits = *seed;
            let mut bit = 0u32;
            for _ in 0..3 {
                let mut fail = || { bit += 1; bit <= 64 && (bits >> (bit - 1)) & 1 == 1 };
                let actions = w.plan(&mut p, t(now));
                for a in &actions {
                    if let Action::CreateSandbox { key } = a {
                        prop_assert!(w.desired.contains_key(key), "a sandbox for unbound {key}");
                    }
                }
                // Every copy that is not bound here is being stopped or removed right now.
                for (k, o) in &w.observed {
                    if w.desired.contains_key(k) {
                        continue;
                    }
                    let removed = actions.iter().any(|a| matches!(a, Action::RemovePod { key } if key == k));
                    prop_assert!(
                        removed || p.stopping.contains_key(k),
                        "unbound {k} neither stopped nor removed (running: {})",
                        o.anything_running()
                    );
                }
                execute(&mut w, &actions, &mut fail, t(now));
                now += 1;
            }
        }
        // Bindings settle on the last set; the runtime works again: exactly one per bound pod.
        for _ in 0..40 {
            let actions = w.plan(&mut p, t(now));
            execute(&mut w, &actions, &mut || false, t(now));
            now += 1;
        }
        let held: BTreeSet<&String> = w.observed.iter().filter(|(_, o)| o.sandbox.is_some()).map(|(k, _)| k).collect();
        let want: BTreeSet<&String> = w.desired.keys().collect();
        prop_assert_eq!(&held, &want);
        prop_assert_eq!(w.observed.len(), w.desired.len(), "pod dirs of unbound pods left");
        // Everything unbound: nothing left.
        w.desired.clear();
        for _ in 0..40 {
            let actions = w.plan(&mut p, t(now));
            execute(&mut w, &actions, &mut || false, t(now));
            now += 1;
        }
        prop_assert!(w.observed.is_empty(), "left: {:?}", w.observed.keys().collect::<Vec<_>>());
    }
}

/// A burst: ten pods bound at once get their sandboxes a few at a time, and the containers of a
/// pod whose sandbox is ready start in the round it is seen, ahead of the sandboxes still to
/// make (they no longer wait behind every other pod's sandbox).
#[test]
fn sandboxes_of_a_burst_are_made_a_few_at_a_time_and_ready_pods_start_first() {
    let pod = |i: usize| {
        let mut d = desired("Always", &["a"]);
        d.key = format!("b{i:02}");
        d.pod.metadata.name = Some(format!("web{i:02}"));
        d.pod.metadata.uid = Some(format!("u{i:02}"));
        d
    };
    let mut p = Planner::new();
    let mut w = World::new(None, None);
    w.desired = (0..10).map(|i| (format!("b{i:02}"), pod(i))).collect();
    let creates = |actions: &[Action]| -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::CreateSandbox { key } => Some(key.clone()),
                _ => None,
            })
            .collect()
    };
    let first = creates(&w.plan(&mut p, t(0)));
    assert_eq!(first.len(), MAX_SANDBOX_STARTS, "{first:?}");
    // Those are in flight: nothing more this round.
    w.busy = first.iter().cloned().collect();
    assert!(creates(&w.plan(&mut p, t(1))).is_empty());
    // One finishes: its container starts, and one more sandbox is made.
    let done = first[0].clone();
    w.busy.remove(&done);
    let mut o = observed(&[], true);
    o.meta.key = done.clone();
    o.meta.name = format!("web{}", &done[1..]);
    o.meta.uid = format!("u{}", &done[1..]);
    w.observed.insert(done.clone(), o);
    let actions = w.plan(&mut p, t(2));
    let next = creates(&actions);
    assert_eq!(next.len(), 1, "{actions:?}");
    assert!(!first.contains(&next[0]));
    assert!(actions.iter().any(
        |a| matches!(a, Action::StartContainer { key, container, .. } if *key == done && container == "a")
    ));
}

/// `d` being deleted (as the API marks it) with this grace period.
fn terminating(mut d: DesiredPod, grace: i64) -> DesiredPod {
    d.pod.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        "2026-11-29T09:00:40Z".parse().unwrap(),
    ));
    d.pod.metadata.deletion_grace_period_seconds = Some(grace);
    d
}

fn finalize() -> Action {
    Action::FinalizeDeletion {
        namespace: "default".into(),
        name: "web".into(),
        uid: "u1".into(),
    }
}

#[test]
fn a_terminating_pod_is_stopped_within_its_deletion_grace_then_finalized() {
    let mut p = Planner::new();
    let mut w = World::new(
        Some(desired("Always", &["a"])),
        Some(observed(&[("a", 0, running(0))], true)),
    );
    w.plan(&mut p, t(5));
    let recorded = w.recorded.clone();
    w.desired
        .insert("b1".into(), terminating(desired("Always", &["a"]), 30));
    let actions = w.plan(&mut p, t(10));
    assert_eq!(
        runtime_actions(&actions),
        [&Action::KillContainer {
            key: "b1".into(),
            container: "a".into(),
            restart: 0,
            signal: Signal::Term,
            grace: 30,
            pre_stop: None,
        }],
        "SIGTERM with the deletion's grace period, not the spec's 5 s"
    );
    assert_eq!(events(&actions), [EventReason::Killing]);
    assert_eq!(w.recorded, recorded, "its status record is left as it was");
    assert!(runtime_actions(&w.plan(&mut p, t(20))).is_empty());
    // A second DELETE with a shorter grace period brings the SIGKILL forward...
    w.desired
        .insert("b1".into(), terminating(desired("Always", &["a"]), 2));
    assert!(runtime_actions(&w.plan(&mut p, t(21))).is_empty());
    assert_eq!(
        runtime_actions(&w.plan(&mut p, t(23))),
        [&Action::KillContainer {
            key: "b1".into(),
            container: "a".into(),
            restart: 0,
            signal: Signal::Kill,
            grace: 0,
            pre_stop: None,
        }]
    );
    // ...and a longer one never pushes it back: SIGKILL again every 5 s, not restarted.
    w.desired
        .insert("b1".into(), terminating(desired("Always", &["a"]), 300));
    assert!(runtime_actions(&w.plan(&mut p, t(24))).is_empty());
    assert_eq!(runtime_actions(&w.plan(&mut p, t(28))).len(), 1);
    // The container is gone: the pod object goes (not restarted, although `Always`).
    w.observed
        .insert("b1".into(), observed(&[("a", 0, exited(137, 0, 28))], true));
    w.busy.insert("b1/a".into());
    assert!(
        runtime_actions(&w.plan(&mut p, t(29))).is_empty(),
        "not while an action on it is in flight"
    );
    w.busy.clear();
    assert_eq!(runtime_actions(&w.plan(&mut p, t(30))), [&finalize()]);
    // Once the object is gone, the copy is removed and its status record too.
    w.desired.clear();
    let actions = w.plan(&mut p, t(31));
    assert_eq!(
        runtime_actions(&actions),
        [&Action::RemovePod { key: "b1".into() }]
    );
    assert!(actions.contains(&Action::DeleteStatus {
        namespace: "default".into(),
        name: "web".into()
    }));
}

#[test]
fn a_terminating_pod_that_never_ran_here_is_finalized_at_once() {
    let mut p = Planner::new();
    let mut w = World::new(Some(terminating(desired("Always", &["a"]), 30)), None);
    assert_eq!(runtime_actions(&w.plan(&mut p, t(0))), [&finalize()]);
    // A copy whose containers all exited on their own: nothing is started again.
    let mut w = World::new(
        Some(terminating(desired("Always", &["a", "b"]), 30)),
        Some(observed(&[("a", 0, exited(0, 0, 3))], true)),
    );
    assert_eq!(runtime_actions(&w.plan(&mut p, t(4))), [&finalize()]);
}

#[test]
fn a_force_deleted_terminating_pod_keeps_its_kill_time() {
    let mut p = Planner::new();
    let mut w = World::new(
        Some(terminating(desired("Always", &["a"]), 2)),
        Some(observed(&[("a", 0, running(0))], true)),
    );
    assert_eq!(runtime_actions(&w.plan(&mut p, t(10))).len(), 1);
    // `--force --grace-period=0`: the object leaves before its containers stopped.
    w.desired.clear();
    assert_eq!(
        runtime_actions(&w.plan(&mut p, t(12))),
        [&Action::KillContainer {
            key: "b1".into(),
            container: "a".into(),
            restart: 0,
            signal: Signal::Kill,
            grace: 0,
            pre_stop: None,
        }],
        "SIGKILL at the deletion's deadline, not the spec's 5 s later"
    );
}

#[test]
fn finalization_removes_only_the_same_pod_still_being_deleted() {
    let pod = |uid: &str, deleting: bool| {
        let mut p = serde_json::json!({"metadata": {"name": "web", "uid": uid}});
        if deleting {
            p["metadata"]["deletionTimestamp"] = serde_json::json!("2026-11-29T09:00:40Z");
        }
        p
    };
    assert!(finalizes(Some(&pod("u1", true)), "u1"));
    assert!(!finalizes(Some(&pod("u2", true)), "u1"), "re-created since");
    assert!(!finalizes(Some(&pod("u1", false)), "u1"));
    assert!(!finalizes(None, "u1"));
}

/// Pod "web" with these init containers (`name`, or `name` with extra fields) and app
/// containers.
fn with_init(policy: &str, init: serde_json::Value, containers: &[&str]) -> DesiredPod {
    let mut d = desired(policy, containers);
    let init: Vec<k8s_openapi::api::core::v1::Container> = init
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let mut c = match c {
                serde_json::Value::String(n) => serde_json::json!({"name": n}),
                other => other.clone(),
            };
            c["image"] = "img:1".into();
            serde_json::from_value(c).unwrap()
        })
        .collect();
    d.pod.spec.as_mut().unwrap().init_containers = Some(init);
    d
}

fn sidecar(name: &str) -> serde_json::Value {
    serde_json::json!({"name": name, "restartPolicy": "Always"})
}

/// Sets the latest attempt of `name` in the world's pod "b1".
fn set(w: &mut World, name: &str, restart: u32, state: AttemptState) {
    let o = w.observed.get_mut("b1").unwrap();
    let previous = o.containers.remove(name).map(|c| c.latest);
    o.containers.insert(
        name.into(),
        ObservedContainer {
            latest: ObservedAttempt { restart, state },
            previous,
        },
    );
}

fn init_status<'a>(w: &'a World, name: &str) -> &'a serde_json::Value {
    status::container_entry(w.status(), name).unwrap()
}

fn condition(w: &World, kind: &str) -> serde_json::Value {
    w.status()["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == kind)
        .unwrap()["status"]
        .clone()
}

#[test]
fn init_containers_run_one_at_a_time_to_completion_before_the_app_containers() {
    let mut p = Planner::new();
    let d = with_init("Always", serde_json::json!(["i1", "i2"]), &["a", "b"]);
    let mut w = World::new(Some(d), None);
    assert_eq!(
        runtime_actions(&w.plan(&mut p, t(0))),
        [&Action::CreateSandbox { key: "b1".into() }]
    );
    assert_eq!(
        init_status(&w, "i1")["state"]["waiting"]["reason"],
        "PodInitializing"
    );
    assert_eq!(
        init_status(&w, "a")["state"]["waiting"]["reason"],
        "PodInitializing"
    );
    assert_eq!(w.status()["phase"], "Pending");
    assert_eq!(condition(&w, "Initialized"), "False");
    w.observed.insert("b1".into(), observed(&[], true));
    assert_eq!(starts(&w.plan(&mut p, t(1))), [("i1".to_string(), 0)]);
    set(&mut w, "i1", 0, running(1));
    assert!(starts(&w.plan(&mut p, t(2))).is_empty(), "i2 waits for i1");
    set(&mut w, "i1", 0, exited(0, 1, 3));
    assert_eq!(starts(&w.plan(&mut p, t(3))), [("i2".to_string(), 0)]);
    assert_eq!(init_status(&w, "i1")["ready"], true);
    assert_eq!(
        init_status(&w, "i1")["state"]["terminated"]["reason"],
        "Completed"
    );
    set(&mut w, "i2", 0, running(3));
    assert!(starts(&w.plan(&mut p, t(4))).is_empty());
    assert_eq!(w.status()["phase"], "Pending");
    set(&mut w, "i2", 0, exited(0, 3, 5));
    let actions = w.plan(&mut p, t(5));
    assert_eq!(
        starts(&actions),
        [("a".to_string(), 0), ("b".to_string(), 0)],
        "the app containers start together once every init container completed"
    );
    assert_eq!(condition(&w, "Initialized"), "True");
    set(&mut w, "a", 0, running(5));
    set(&mut w, "b", 0, running(5));
    assert!(
        starts(&w.plan(&mut p, t(6))).is_empty(),
        "nothing runs twice"
    );
    assert_eq!(w.status()["phase"], "Running");
    assert_eq!(
        w.status()["initContainerStatuses"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // An app container's exit restarts it alone: init is not re-run.
    set(&mut w, "a", 0, exited(1, 5, 7));
    assert_eq!(starts(&w.plan(&mut p, t(7))), [("a".to_string(), 1)]);
}

#[test]
fn a_failing_init_container_is_restarted_with_back_off_and_holds_the_app_back() {
    for policy in ["Always", "OnFailure"] {
        let mut p = Planner::new();
        let d = with_init(policy, serde_json::json!(["i1", "i2"]), &["a"]);
        let mut w = World::new(Some(d), Some(observed(&[("i1", 0, exited(0, 0, 1))], true)));
        set(&mut w, "i2", 0, exited(1, 1, 2));
        assert_eq!(
            starts(&w.plan(&mut p, t(2))),
            [("i2".to_string(), 1)],
            "{policy}: the failed one alone is restarted, at once the first time"
        );
        set(&mut w, "i2", 1, exited(1, 2, 3));
        assert!(
            starts(&w.plan(&mut p, t(4))).is_empty(),
            "{policy}: back-off"
        );
        let i2 = init_status(&w, "i2");
        assert_eq!(i2["state"]["waiting"]["reason"], "CrashLoopBackOff");
        assert_eq!(i2["restartCount"], 1);
        assert_eq!(i2["lastState"]["terminated"]["exitCode"], 1);
        assert_eq!(w.status()["phase"], "Pending");
        assert_eq!(condition(&w, "Initialized"), "False");
        assert_eq!(
            init_status(&w, "a")["state"]["waiting"]["reason"],
            "PodInitializing"
        );
        assert_eq!(starts(&w.plan(&mut p, t(13))), [("i2".to_string(), 2)]);
        // Completing at last lets the app start.
        set(&mut w, "i2", 2, exited(0, 13, 14));
        assert_eq!(starts(&w.plan(&mut p, t(14))), [("a".to_string(), 0)]);
        assert_eq!(init_status(&w, "i2")["restartCount"], 2);
    }
}

#[test]
fn a_failed_init_container_fails_a_pod_that_never_restarts() {
    let mut p = Planner::new();
    let d = with_init("Never", serde_json::json!(["i1", sidecar("s")]), &["a"]);
    let mut w = World::new(Some(d), Some(observed(&[("i1", 0, exited(2, 0, 1))], true)));
    assert!(starts(&w.plan(&mut p, t(5))).is_empty());
    assert_eq!(w.status()["phase"], "Failed");
    let i1 = init_status(&w, "i1");
    assert_eq!(i1["state"]["terminated"]["exitCode"], 2);
    assert_eq!(i1["ready"], false);
    assert_eq!(
        init_status(&w, "s")["state"]["waiting"]["reason"],
        "PodInitializing"
    );
}

#[test]
fn a_sidecar_is_done_once_started_keeps_running_and_is_restarted_whatever_the_policy() {
    let mut p = Planner::new();
    let d = with_init("Never", serde_json::json!([sidecar("s"), "i2"]), &["a"]);
    let mut w = World::new(Some(d), Some(observed(&[], true)));
    assert_eq!(starts(&w.plan(&mut p, t(0))), [("s".to_string(), 0)]);
    set(&mut w, "s", 0, running(1));
    assert_eq!(starts(&w.plan(&mut p, t(1))), [("i2".to_string(), 0)]);
    assert_eq!(init_status(&w, "s")["started"], true);
    // The sidecar exits while i2 runs: restarted although the pod's policy is Never.
    set(&mut w, "i2", 0, running(1));
    set(&mut w, "s", 0, exited(0, 1, 2));
    assert_eq!(starts(&w.plan(&mut p, t(2))), [("s".to_string(), 1)]);
    set(&mut w, "s", 1, running(2));
    set(&mut w, "i2", 0, exited(0, 1, 3));
    assert_eq!(starts(&w.plan(&mut p, t(3))), [("a".to_string(), 0)]);
    set(&mut w, "a", 0, running(3));
    w.plan(&mut p, t(4));
    assert_eq!(w.status()["phase"], "Running");
    assert_eq!(condition(&w, "Ready"), "True");
    // The sidecar crashing after the app started never holds the app back.
    set(&mut w, "s", 1, exited(1, 2, 5));
    set(&mut w, "a", 0, running(3));
    assert!(starts(&w.plan(&mut p, t(5))).is_empty(), "back-off");
    assert_eq!(
        init_status(&w, "s")["state"]["waiting"]["reason"],
        "CrashLoopBackOff"
    );
    assert_eq!(condition(&w, "Initialized"), "True");
    assert_eq!(
        condition(&w, "Ready"),
        "False",
        "a sidecar counts for readiness"
    );
    assert_eq!(w.status()["phase"], "Running");
    assert_eq!(starts(&w.plan(&mut p, t(15))), [("s".to_string(), 2)]);
}

#[test]
fn a_sidecar_with_a_startup_probe_holds_the_next_init_container_until_it_passes() {
    let mut p = Planner::new();
    let mut s = sidecar("s");
    s["startupProbe"] = serde_json::json!({"exec": {"command": ["true"]}, "periodSeconds": 1});
    let d = with_init("Always", serde_json::json!([s, "i2"]), &["a"]);
    let mut w = World::new(Some(d), Some(observed(&[("s", 0, running(0))], true)));
    sync_probes(&mut w);
    assert!(starts(&w.plan(&mut p, t(0))).is_empty());
    assert_eq!(init_status(&w, "s")["started"], false);
    probe_all(&mut w, t(1), Ok(()));
    assert_eq!(starts(&w.plan(&mut p, t(1))), [("i2".to_string(), 0)]);
    assert_eq!(init_status(&w, "s")["started"], true);
}

fn stops(actions: &[Action]) -> Vec<(String, Signal)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::KillContainer {
                container, signal, ..
            } => Some((container.clone(), *signal)),
            _ => None,
        })
        .collect()
}

#[test]
fn sidecars_stop_after_the_app_containers_the_last_first() {
    // A pod that completes (a Job's): its sidecars are stopped once the app exited.
    let mut p = Planner::new();
    let d = with_init(
        "Never",
        serde_json::json!([sidecar("s1"), sidecar("s2")]),
        &["a"],
    );
    let o = observed(
        &[
            ("s1", 0, running(0)),
            ("s2", 0, running(0)),
            ("a", 0, running(1)),
        ],
        true,
    );
    let mut w = World::new(Some(d.clone()), Some(o.clone()));
    assert!(stops(&w.plan(&mut p, t(2))).is_empty());
    set(&mut w, "a", 0, exited(0, 1, 3));
    let actions = w.plan(&mut p, t(3));
    assert_eq!(stops(&actions), [("s2".to_string(), Signal::Term)]);
    assert_eq!(w.status()["phase"], "Running", "a sidecar still runs");
    assert!(stops(&w.plan(&mut p, t(4))).is_empty(), "s1 waits for s2");
    assert_eq!(
        stops(&w.plan(&mut p, t(8))),
        [("s2".to_string(), Signal::Kill)],
        "SIGKILL after the grace period"
    );
    set(&mut w, "s2", 0, exited(137, 0, 8));
    assert_eq!(
        stops(&w.plan(&mut p, t(8))),
        [("s1".to_string(), Signal::Term)]
    );
    assert!(starts(&w.plan(&mut p, t(9))).is_empty(), "never restarted");
    set(&mut w, "s1", 0, exited(0, 0, 9));
    w.plan(&mut p, t(10));
    assert_eq!(w.status()["phase"], "Succeeded");

    // A pod being deleted: the app containers first, then the sidecars, the last first.
    let mut p = Planner::new();
    let mut o = o;
    o.meta.sidecars = vec!["s1".into(), "s2".into()];
    let mut w = World::new(Some(terminating(d, 30)), Some(o));
    assert_eq!(
        stops(&w.plan(&mut p, t(41))),
        [("a".to_string(), Signal::Term)]
    );
    assert!(stops(&w.plan(&mut p, t(42))).is_empty());
    set(&mut w, "a", 0, exited(143, 1, 43));
    assert_eq!(
        stops(&w.plan(&mut p, t(43))),
        [("s2".to_string(), Signal::Term)]
    );
    set(&mut w, "s2", 0, exited(143, 0, 44));
    let actions = w.plan(&mut p, t(44));
    assert_eq!(stops(&actions), [("s1".to_string(), Signal::Term)]);
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::KillContainer { grace, .. } if *grace == 27)),
        "within what is left of the grace period: {actions:?}"
    );
    assert_eq!(
        stops(&w.plan(&mut p, t(71))),
        [("s1".to_string(), Signal::Kill)],
        "one deadline for the whole pod"
    );
}

/// One step of the ordering property: an outcome for one container of the pod.
#[derive(Clone, Debug)]
enum Step {
    /// The named container's start (if planned) happens: it runs.
    Started(usize),
    /// It exits with this code.
    Exits(usize, i32),
    /// Time passes.
    Wait(i64),
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// Whatever the containers do and in whatever order, no app container is started before
    /// every regular init container has exited 0, a regular init container starts only when
    /// every one before it completed (and a sidecar before it was started), and nothing is
    /// started that is already running.
    #[test]
    fn no_app_container_starts_before_init_completes(
        policy in prop::sample::select(vec!["Always", "OnFailure", "Never"]),
        sidecar_at in prop::option::of(0usize..3),
        steps in prop::collection::vec(
            prop_oneof![
                (0usize..5).prop_map(Step::Started),
                ((0usize..5), prop::sample::select(vec![0, 0, 1, 137])).prop_map(|(i, c)| Step::Exits(i, c)),
                (1i64..400).prop_map(Step::Wait),
            ],
            1..60,
        ),
    ) {
        let init: Vec<serde_json::Value> = (0..3)
            .map(|i| {
                let n = format!("i{i}");
                if sidecar_at == Some(i) { sidecar(&n) } else { serde_json::json!(n) }
            })
            .collect();
        let d = with_init(policy, serde_json::Value::Array(init), &["a", "b"]);
        let names: Vec<String> = d.all_containers().map(|c| c.name.clone()).collect();
        let mut p = Planner::new();
        let mut w = World::new(Some(d.clone()), Some(observed(&[], true)));
        let mut now = 0;
        for step in steps {
            for (name, restart) in starts(&w.plan(&mut p, t(now))) {
                let state = |n: &str| w.observed["b1"].containers.get(n).map(|c| c.latest.state.clone());
                prop_assert!(
                    !matches!(state(&name), Some(AttemptState::Running { .. })),
                    "{name} started while running"
                );
                let index = names.iter().position(|n| *n == name).unwrap();
                for (j, before) in d.init_containers().iter().enumerate().take(index.min(3)) {
                    let completed = matches!(state(&before.name), Some(AttemptState::Exited(e)) if e.exit_code == 0);
                    let sidecar_up = is_sidecar(before) && state(&before.name).is_some();
                    prop_assert!(
                        completed || sidecar_up,
                        "{name} started before init container {j} was done: {:?}",
                        state(&before.name)
                    );
                }
                set(&mut w, &name, restart, AttemptState::Creating);
            }
            match step {
                Step::Started(i) => {
                    let name = &names[i];
                    if let Some(c) = w.observed["b1"].containers.get(name) {
                        if matches!(c.latest.state, AttemptState::Creating) {
                            let r = c.latest.restart;
                            set(&mut w, name, r, running(now));
                        }
                    }
                }
                Step::Exits(i, code) => {
                    let name = &names[i];
                    if let Some(c) = w.observed["b1"].containers.get(name) {
                        if !matches!(c.latest.state, AttemptState::Exited(_)) {
                            let r = c.latest.restart;
                            set(&mut w, name, r, exited(code, now, now));
                        }
                    }
                }
                Step::Wait(s) => now += s,
            }
        }
    }
}
