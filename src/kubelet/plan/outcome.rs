//! What the kubelet's shell reports after it carried out an action or a pull, and what the
//! planner makes of it: the failure counts that time the retries (sandboxes, image pulls) and
//! every event those outcomes show in `kubectl describe pod`. Pure: the shell passes the time.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::{Action, EventTarget, SandboxFailure};
use crate::model::workload::{EventReason, EventType};

/// The outcome of one runtime action or image pull.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    SandboxCreated {
        key: String,
    },
    SandboxFailed {
        key: String,
        target: EventTarget,
        error: String,
    },
    SandboxStopped {
        key: String,
    },
    SandboxStopFailed {
        key: String,
        error: String,
    },
    /// A container attempt started: `warnings` are its skipped environment entries, `pulled`
    /// whether this kubelet has just pulled its image (else it was already present).
    ContainerStarted {
        target: EventTarget,
        container: String,
        image: String,
        pulled: bool,
        warnings: Vec<String>,
    },
    ContainerFailed {
        target: EventTarget,
        error: String,
    },
    /// A container's preStop hook failed or outlived the grace period; `hook` names it
    /// (`Exec lifecycle hook (["sh"])`).
    PreStopFailed {
        target: EventTarget,
        container: String,
        hook: String,
        error: String,
    },
    /// A pull of `image` began under the pull record `record` (`failures` before it).
    PullStarted {
        record: String,
        target: EventTarget,
        image: String,
        failures: u32,
    },
    Pulled {
        record: String,
        target: EventTarget,
        image: String,
        seconds: f64,
        size: u64,
    },
    PullFailed {
        record: String,
        target: EventTarget,
        image: String,
        error: String,
        /// The registry could not be reached (a present image may then be used).
        unreachable: bool,
    },
}

/// One image's pulls under one set of credentials, as the planner counts them.
#[derive(Clone, Debug, PartialEq)]
pub enum PullRecord {
    Running {
        /// Failed pulls in a row before this one.
        failures: u32,
    },
    Done {
        at: DateTime<Utc>,
    },
    Failed {
        at: DateTime<Utc>,
        failures: u32,
        message: String,
        unreachable: bool,
    },
}

/// The planner's account of outcomes: failed sandbox operations by pod key, and pull records by
/// image and credentials (`kubelet::pulls`).
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    sandbox_failures: BTreeMap<String, SandboxFailure>,
    pulls: BTreeMap<String, PullRecord>,
}

impl Ledger {
    /// Failed sandbox operations by pod key (the planner's retry timing).
    pub fn sandbox_failures(&self) -> &BTreeMap<String, SandboxFailure> {
        &self.sandbox_failures
    }

    /// The pull record under `key`.
    pub fn pull(&self, key: &str) -> Option<&PullRecord> {
        self.pulls.get(key)
    }

    /// Forgets the sandbox failures of pods that are no longer desired here.
    pub fn retain_pods(&mut self, desired: impl Fn(&str) -> bool) {
        self.sandbox_failures.retain(|k, _| desired(k));
    }

    /// Counts `outcome` and returns the events it shows (at most a few).
    pub fn record(&mut self, outcome: Outcome, now: DateTime<Utc>) -> Vec<Action> {
        match outcome {
            Outcome::SandboxCreated { key } | Outcome::SandboxStopped { key } => {
                self.sandbox_failures.remove(&key);
                Vec::new()
            }
            Outcome::SandboxFailed { key, target, error } => {
                let message = format!("Failed to create pod sandbox: {error}");
                // Recorded once per distinct error, not at every retry.
                let repeated = self.sandbox_failed(key, message.clone(), now);
                if repeated {
                    return Vec::new();
                }
                vec![event(
                    target,
                    EventType::Warning,
                    EventReason::FailedCreatePodSandBox,
                    message,
                )]
            }
            Outcome::SandboxStopFailed { key, error } => {
                self.sandbox_failed(key, format!("Failed to stop pod sandbox: {error}"), now);
                Vec::new()
            }
            Outcome::ContainerStarted {
                target,
                container,
                image,
                pulled,
                warnings,
            } => started_events(target, &container, &image, pulled, warnings),
            Outcome::ContainerFailed { target, error } => {
                vec![event(
                    target,
                    EventType::Warning,
                    EventReason::Failed,
                    format!("Error: {error}"),
                )]
            }
            Outcome::PreStopFailed {
                target,
                container,
                hook,
                error,
            } => {
                let message = format!(
                    "{hook} for Container \"{container}\" in Pod \"{}_{}({})\" failed - error: {error}",
                    target.name, target.namespace, target.uid
                );
                vec![event(
                    target,
                    EventType::Warning,
                    EventReason::FailedPreStopHook,
                    message,
                )]
            }
            Outcome::PullStarted {
                record,
                target,
                image,
                failures,
            } => {
                self.pulls.insert(record, PullRecord::Running { failures });
                let message = format!("Pulling image \"{image}\"");
                vec![event(
                    target,
                    EventType::Normal,
                    EventReason::Pulling,
                    message,
                )]
            }
            Outcome::Pulled {
                record,
                target,
                image,
                seconds,
                size,
            } => {
                self.pulls.insert(record, PullRecord::Done { at: now });
                let message = format!(
                    "Successfully pulled image \"{image}\" in {seconds:.3}s. Image size: {size} bytes."
                );
                vec![event(
                    target,
                    EventType::Normal,
                    EventReason::Pulled,
                    message,
                )]
            }
            Outcome::PullFailed {
                record,
                target,
                image,
                error,
                unreachable,
            } => {
                let failures = match self.pulls.get(&record) {
                    Some(PullRecord::Running { failures }) => *failures,
                    _ => 0,
                };
                let failed = format!("Failed to pull image \"{image}\": {error}");
                self.pulls.insert(
                    record,
                    PullRecord::Failed {
                        at: now,
                        failures: failures + 1,
                        message: error,
                        unreachable,
                    },
                );
                vec![
                    event(
                        target.clone(),
                        EventType::Warning,
                        EventReason::Failed,
                        failed,
                    ),
                    event(
                        target,
                        EventType::Warning,
                        EventReason::Failed,
                        "Error: ErrImagePull".into(),
                    ),
                ]
            }
        }
    }

    /// A pull that could not begin (no image store): counted as a failure, no event.
    pub fn pull_impossible(
        &mut self,
        record: String,
        failures: u32,
        message: &str,
        now: DateTime<Utc>,
    ) {
        self.pulls.insert(
            record,
            PullRecord::Failed {
                at: now,
                failures: failures + 1,
                message: message.into(),
                unreachable: false,
            },
        );
    }

    /// Counts a failed sandbox operation; whether its message repeats the last one.
    fn sandbox_failed(&mut self, key: String, message: String, now: DateTime<Utc>) -> bool {
        let previous = self.sandbox_failures.get(&key);
        let repeated = previous.is_some_and(|f| f.message == message);
        let attempts = previous.map_or(0, |f| f.attempts) + 1;
        self.sandbox_failures.insert(
            key,
            SandboxFailure {
                message,
                at: now,
                attempts,
            },
        );
        repeated
    }
}

/// The events of a container attempt that started, in the order Kubernetes records them.
fn started_events(
    target: EventTarget,
    container: &str,
    image: &str,
    pulled: bool,
    warnings: Vec<String>,
) -> Vec<Action> {
    let mut out: Vec<Action> = warnings
        .into_iter()
        .map(|w| {
            event(
                target.clone(),
                EventType::Warning,
                EventReason::InvalidEnvironmentVariableNames,
                w,
            )
        })
        .collect();
    if !pulled {
        let message = format!("Container image \"{image}\" already present on machine");
        out.push(event(
            target.clone(),
            EventType::Normal,
            EventReason::Pulled,
            message,
        ));
    }
    let created = format!("Created container {container}");
    out.push(event(
        target.clone(),
        EventType::Normal,
        EventReason::Created,
        created,
    ));
    let started = format!("Started container {container}");
    out.push(event(
        target,
        EventType::Normal,
        EventReason::Started,
        started,
    ));
    out
}

fn event(
    target: EventTarget,
    event_type: EventType,
    reason: EventReason,
    message: String,
) -> Action {
    Action::Event {
        target,
        event_type,
        reason,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> EventTarget {
        EventTarget {
            namespace: "default".into(),
            name: "web".into(),
            uid: "u1".into(),
        }
    }

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    fn reasons(actions: &[Action]) -> Vec<&str> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Event { reason, .. } => Some(reason.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_sandbox_failure_is_counted_and_reported_once_per_distinct_error() {
        let mut l = Ledger::default();
        let failed = |error: &str| Outcome::SandboxFailed {
            key: "k".into(),
            target: target(),
            error: error.into(),
        };
        assert_eq!(
            reasons(&l.record(failed("no IP"), t(0))),
            ["FailedCreatePodSandBox"]
        );
        assert!(
            l.record(failed("no IP"), t(1)).is_empty(),
            "the same error again"
        );
        assert_eq!(l.sandbox_failures()["k"].attempts, 2);
        assert_eq!(l.sandbox_failures()["k"].at, t(1));
        assert_eq!(reasons(&l.record(failed("other"), t(2))).len(), 1);
        assert_eq!(
            l.sandbox_failures()["k"].message,
            "Failed to create pod sandbox: other"
        );
        assert!(l
            .record(Outcome::SandboxCreated { key: "k".into() }, t(3))
            .is_empty());
        assert!(l.sandbox_failures().is_empty());
        // A failed stop counts (its retry waits) but shows no event.
        let stop = Outcome::SandboxStopFailed {
            key: "k".into(),
            error: "DEL failed".into(),
        };
        assert!(l.record(stop, t(4)).is_empty());
        assert_eq!(l.sandbox_failures()["k"].attempts, 1);
        l.retain_pods(|k| k != "k");
        assert!(l.sandbox_failures().is_empty());
    }

    #[test]
    fn pulls_count_failures_in_a_row_and_report_each_step() {
        let mut l = Ledger::default();
        let started = |failures| Outcome::PullStarted {
            record: "img".into(),
            target: target(),
            image: "img".into(),
            failures,
        };
        let failed = Outcome::PullFailed {
            record: "img".into(),
            target: target(),
            image: "img".into(),
            error: "refused".into(),
            unreachable: false,
        };
        assert_eq!(reasons(&l.record(started(0), t(0))), ["Pulling"]);
        assert_eq!(l.pull("img"), Some(&PullRecord::Running { failures: 0 }));
        assert_eq!(
            reasons(&l.record(failed.clone(), t(1))),
            ["Failed", "Failed"]
        );
        l.record(started(1), t(20));
        l.record(failed, t(21));
        assert!(matches!(
            l.pull("img"),
            Some(PullRecord::Failed { failures: 2, at, .. }) if *at == t(21)
        ));
        l.record(started(2), t(60));
        let pulled = Outcome::Pulled {
            record: "img".into(),
            target: target(),
            image: "img".into(),
            seconds: 1.5,
            size: 10,
        };
        assert_eq!(reasons(&l.record(pulled, t(61))), ["Pulled"]);
        assert_eq!(l.pull("img"), Some(&PullRecord::Done { at: t(61) }));
        l.pull_impossible("other".into(), 0, "this node has no image store", t(62));
        assert!(matches!(
            l.pull("other"),
            Some(PullRecord::Failed { failures: 1, .. })
        ));
    }

    #[test]
    fn a_started_container_shows_its_events_in_order() {
        let mut l = Ledger::default();
        let started = Outcome::ContainerStarted {
            target: target(),
            container: "main".into(),
            image: "busybox:1".into(),
            pulled: false,
            warnings: vec!["skipped 1BAD".into()],
        };
        assert_eq!(
            reasons(&l.record(started, t(0))),
            [
                "InvalidEnvironmentVariableNames",
                "Pulled",
                "Created",
                "Started"
            ]
        );
        let hook = Outcome::PreStopFailed {
            target: target(),
            container: "main".into(),
            hook: "HTTP lifecycle hook (/stop)".into(),
            error: "refused".into(),
        };
        assert!(matches!(
            &l.record(hook, t(1))[..],
            [Action::Event { reason, message, .. }] if *reason == EventReason::FailedPreStopHook
                && message == "HTTP lifecycle hook (/stop) for Container \"main\" in Pod \"web_default(u1)\" failed - error: refused"
        ));
        let failed = Outcome::ContainerFailed {
            target: target(),
            error: "exec: not found".into(),
        };
        let actions = l.record(failed, t(1));
        assert!(matches!(
            &actions[..],
            [Action::Event { event_type: EventType::Warning, message, .. }] if message == "Error: exec: not found"
        ));
    }
}
