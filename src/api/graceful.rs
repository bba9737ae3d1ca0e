//! Graceful deletion of Pods (pure): what a `DELETE` of a pod does — remove it from the state
//! now, mark it terminating (`metadata.deletionTimestamp`, `deletionGracePeriodSeconds`) for
//! its node's kubelet to stop its containers and then remove it, or leave a pending deletion
//! as it is — as Kubernetes' pod strategy (`CheckGracefulDelete`) and generic store
//! (`BeforeDelete`) decide it. `docs/api.md`, "Deleting pods".

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use serde_json::{json, Value};

/// The grace period of a pod whose spec does not say (Kubernetes' default).
pub const DEFAULT_GRACE_SECONDS: i64 = 30;

/// What a `DELETE` does to one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodDeletion {
    /// Removed from the state at once: forced (`gracePeriodSeconds: 0`), never placed, placed
    /// on a node that is dead in the serving agent's view, already ended, or a pending
    /// deletion cut to 0.
    Now,
    /// Stored terminating with these (a new deletion, or a pending one shortened).
    Mark {
        deletion_timestamp: DateTime<Utc>,
        grace: i64,
    },
    /// Already terminating within at most the asked grace period: nothing changes (a second
    /// `DELETE` never restarts the grace period; it may only shorten it).
    Pending,
}

/// Where the pod stands, as the serving agent sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodFacts {
    /// Placed (bound, or `spec.nodeName`) on a node that is alive or suspect in this view:
    /// a kubelet is there to stop the containers and remove the pod.
    pub placed_on_live_node: bool,
    /// Its phase is `Succeeded` or `Failed`: nothing left to stop.
    pub ended: bool,
    /// A StatefulSet's pod placed on a node that is not live here but still has its record:
    /// it may still run across a partition, so its deletion waits for the node (or for the
    /// node's deletion) rather than completing now, and its identity stays taken.
    pub fenced: bool,
}

/// The decision for deleting `pod` (as stored) with `requested` (`gracePeriodSeconds` of the
/// `DeleteOptions`, if given) at `now`.
pub fn decide(
    pod: &Value,
    requested: Option<i64>,
    facts: PodFacts,
    now: DateTime<Utc>,
) -> PodDeletion {
    let mut period = requested
        .or_else(|| pod["spec"]["terminationGracePeriodSeconds"].as_i64())
        .unwrap_or(DEFAULT_GRACE_SECONDS);
    if (!facts.placed_on_live_node && !facts.fenced) || facts.ended {
        period = 0;
    }
    if period < 0 {
        period = 1;
    }
    let meta = &pod["metadata"];
    if !meta["deletionTimestamp"].is_null() {
        let since = deletion_timestamp(pod);
        return match (since, meta["deletionGracePeriodSeconds"].as_i64()) {
            (Some(at), Some(current)) if current > 0 => {
                if period >= current {
                    PodDeletion::Pending
                } else if period == 0 {
                    PodDeletion::Now
                } else {
                    PodDeletion::Mark {
                        deletion_timestamp: later(earlier(at, current), period),
                        grace: period,
                    }
                }
            }
            // A pending deletion with no grace left (or one we cannot read) completes now.
            _ => PodDeletion::Now,
        };
    }
    if period == 0 {
        PodDeletion::Now
    } else {
        PodDeletion::Mark {
            deletion_timestamp: later(now, period),
            grace: period,
        }
    }
}

/// `metadata.deletionTimestamp` of `pod`, if set and readable.
pub fn deletion_timestamp(pod: &Value) -> Option<DateTime<Utc>> {
    pod["metadata"]["deletionTimestamp"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// `pod` marked as [`PodDeletion::Mark`] says.
pub fn mark(pod: &mut Value, deletion_timestamp: DateTime<Utc>, grace: i64) {
    let meta = &mut pod["metadata"];
    meta["deletionTimestamp"] =
        json!(deletion_timestamp.to_rfc3339_opts(SecondsFormat::Secs, true));
    meta["deletionGracePeriodSeconds"] = json!(grace);
}

/// `at` + `s` seconds, saturating (a user may ask for any grace period).
fn later(at: DateTime<Utc>, s: i64) -> DateTime<Utc> {
    Duration::try_seconds(s)
        .and_then(|d| at.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `at` − `s` seconds, saturating.
fn earlier(at: DateTime<Utc>, s: i64) -> DateTime<Utc> {
    Duration::try_seconds(s)
        .and_then(|d| at.checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    const LIVE: PodFacts = PodFacts {
        fenced: false,
        placed_on_live_node: true,
        ended: false,
    };

    fn pod(grace: Option<i64>) -> Value {
        let mut p = json!({"metadata": {"name": "p"}, "spec": {"containers": []}});
        if let Some(g) = grace {
            p["spec"]["terminationGracePeriodSeconds"] = json!(g);
        }
        p
    }

    #[test]
    fn a_running_pod_is_marked_with_its_own_grace_or_the_asked_one() {
        let now = at("2026-12-07T05:00:00Z");
        let mark = |grace| PodDeletion::Mark {
            deletion_timestamp: now + Duration::seconds(grace),
            grace,
        };
        assert_eq!(decide(&pod(None), None, LIVE, now), mark(30));
        assert_eq!(decide(&pod(Some(7)), None, LIVE, now), mark(7));
        assert_eq!(decide(&pod(Some(7)), Some(1), LIVE, now), mark(1));
        assert_eq!(decide(&pod(Some(7)), Some(60), LIVE, now), mark(60));
        assert_eq!(decide(&pod(Some(7)), Some(-3), LIVE, now), mark(1));
        assert_eq!(decide(&pod(Some(7)), Some(0), LIVE, now), PodDeletion::Now);
        assert_eq!(decide(&pod(Some(0)), None, LIVE, now), PodDeletion::Now);
    }

    #[test]
    fn unplaced_dead_node_and_ended_pods_go_at_once() {
        let now = at("2026-12-07T05:00:00Z");
        for facts in [
            PodFacts {
                fenced: false,
                placed_on_live_node: false,
                ended: false,
            },
            PodFacts {
                fenced: false,
                placed_on_live_node: true,
                ended: true,
            },
        ] {
            assert_eq!(decide(&pod(None), None, facts, now), PodDeletion::Now);
            assert_eq!(decide(&pod(None), Some(5), facts, now), PodDeletion::Now);
        }
    }

    #[test]
    fn a_second_delete_only_shortens_the_grace_period() {
        let now = at("2026-12-07T05:00:10Z");
        let mut terminating = pod(Some(30));
        mark(&mut terminating, at("2026-12-07T05:00:30Z"), 30);
        assert_eq!(
            terminating["metadata"]["deletionTimestamp"],
            "2026-12-07T05:00:30Z"
        );
        // Asking again (default, equal or longer grace) restarts nothing.
        for requested in [None, Some(30), Some(100)] {
            assert_eq!(
                decide(&terminating, requested, LIVE, now),
                PodDeletion::Pending,
                "{requested:?}"
            );
        }
        // A shorter one moves the deadline: counted from when the deletion began.
        assert_eq!(
            decide(&terminating, Some(5), LIVE, now),
            PodDeletion::Mark {
                deletion_timestamp: at("2026-12-07T05:00:05Z"),
                grace: 5,
            }
        );
        assert_eq!(decide(&terminating, Some(0), LIVE, now), PodDeletion::Now);
        // Its node died meanwhile: nothing will finish it there.
        let dead = PodFacts {
            fenced: false,
            placed_on_live_node: false,
            ended: false,
        };
        assert_eq!(decide(&terminating, None, dead, now), PodDeletion::Now);
        // No grace left, or nothing readable: complete it.
        let mut zero = terminating.clone();
        zero["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        assert_eq!(decide(&zero, None, LIVE, now), PodDeletion::Now);
        // Any grace period a user asks for, however long, without overflowing.
        assert!(matches!(
            decide(&pod(None), Some(i64::MAX), LIVE, now),
            PodDeletion::Mark {
                grace: i64::MAX,
                ..
            }
        ));
        let mut garbled = terminating.clone();
        garbled["metadata"]["deletionTimestamp"] = json!("yesterday");
        assert_eq!(decide(&garbled, None, LIVE, now), PodDeletion::Now);
    }
}
