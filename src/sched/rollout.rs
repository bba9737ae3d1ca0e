//! A Deployment's rollout parameters as Kubernetes resolves them (pure): the strategy,
//! `maxSurge` / `maxUnavailable` (int or percentage of `replicas`; surge rounded up,
//! unavailable down; both 0 → unavailable 1), `minReadySeconds`, `paused`,
//! `revisionHistoryLimit` (default 10) and `progressDeadlineSeconds` (default 600). Shared by
//! the Deployment controller and the API's computed status.

use serde_json::Value;

/// What Kubernetes' `maxSurge` and `maxUnavailable` default to.
pub const DEFAULT_PERCENT: &str = "25%";
pub const DEFAULT_HISTORY_LIMIT: usize = 10;
pub const DEFAULT_PROGRESS_DEADLINE_SECONDS: i64 = 600;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rollout {
    /// `strategy.type: Recreate` (else RollingUpdate).
    pub recreate: bool,
    /// Pods allowed above `replicas` during a rolling update (0 for Recreate).
    pub max_surge: i64,
    /// Pods allowed below `replicas` during a rolling update, at most `replicas` (0 for
    /// Recreate).
    pub max_unavailable: i64,
    pub min_ready_seconds: i64,
    pub paused: bool,
    pub revision_history_limit: usize,
    /// Seconds without progress before `ProgressDeadlineExceeded`.
    pub progress_deadline_seconds: i64,
}

/// Kubernetes' `GetScaledValueFromIntOrPercent`: an int as it is, `"N%"` of `total` rounded up
/// or down. Anything else (validation refuses it) counts as 0; negatives as 0.
pub fn scaled(value: &Value, total: i64, round_up: bool) -> i64 {
    let v = match value {
        Value::Number(n) => n.as_i64().unwrap_or(0),
        Value::String(s) => match s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
            Some(pct) => {
                let x = total.saturating_mul(pct.clamp(0, 1_000_000));
                if round_up {
                    x / 100 + i64::from(x % 100 != 0)
                } else {
                    x / 100
                }
            }
            None => 0,
        },
        _ => 0,
    };
    v.max(0)
}

impl Rollout {
    /// The parameters of a Deployment `spec` with `replicas` wanted.
    pub fn of(spec: &Value, replicas: i64) -> Rollout {
        let recreate = spec["strategy"]["type"] == "Recreate";
        let rolling = &spec["strategy"]["rollingUpdate"];
        let default = Value::String(DEFAULT_PERCENT.into());
        let or_default = |v: &Value| {
            if v.is_null() {
                default.clone()
            } else {
                v.clone()
            }
        };
        let (max_surge, max_unavailable) = if recreate {
            (0, 0)
        } else {
            let surge = scaled(&or_default(&rolling["maxSurge"]), replicas, true);
            let mut unavailable = scaled(&or_default(&rolling["maxUnavailable"]), replicas, false);
            if surge == 0 && unavailable == 0 {
                unavailable = 1;
            }
            (surge, unavailable.min(replicas.max(0)))
        };
        let non_negative = |field: &str| spec[field].as_i64().filter(|v| *v >= 0);
        Rollout {
            recreate,
            max_surge,
            max_unavailable,
            min_ready_seconds: non_negative("minReadySeconds").unwrap_or(0),
            paused: spec["paused"].as_bool().unwrap_or(false),
            revision_history_limit: non_negative("revisionHistoryLimit")
                .map(|v| v as usize)
                .unwrap_or(DEFAULT_HISTORY_LIMIT),
            progress_deadline_seconds: non_negative("progressDeadlineSeconds")
                .unwrap_or(DEFAULT_PROGRESS_DEADLINE_SECONDS),
        }
    }

    /// Least available pods a rolling update keeps: `replicas - maxUnavailable`.
    pub fn min_available(&self, replicas: i64) -> i64 {
        replicas - self.max_unavailable
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fenceposts_follow_kubernetes() {
        // Defaults: 25% of 10 → surge 3 (up), unavailable 2 (down).
        let r = Rollout::of(&json!({}), 10);
        assert_eq!((r.max_surge, r.max_unavailable), (3, 2));
        assert_eq!(r.revision_history_limit, 10);
        assert_eq!(r.progress_deadline_seconds, 600);
        // 3 replicas: surge 1, unavailable 0.
        let r = Rollout::of(&json!({}), 3);
        assert_eq!((r.max_surge, r.max_unavailable), (1, 0));
        // Both zero: unavailable becomes 1.
        let spec = json!({"strategy": {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": "0%"}}});
        let r = Rollout::of(&spec, 5);
        assert_eq!((r.max_surge, r.max_unavailable), (0, 1));
        // Ints, and unavailable capped at replicas.
        let spec = json!({"strategy": {"rollingUpdate": {"maxSurge": 2, "maxUnavailable": 9}}});
        let r = Rollout::of(&spec, 4);
        assert_eq!((r.max_surge, r.max_unavailable), (2, 4));
        // Recreate has neither; hostile values count as 0.
        let r = Rollout::of(
            &json!({"strategy": {"type": "Recreate"}, "paused": true}),
            4,
        );
        assert_eq!(
            (r.recreate, r.max_surge, r.max_unavailable, r.paused),
            (true, 0, 0, true)
        );
        let spec = json!({"strategy": {"rollingUpdate": {"maxSurge": "x%", "maxUnavailable": -3}}});
        let r = Rollout::of(&spec, 4);
        assert_eq!((r.max_surge, r.max_unavailable), (0, 1));
        assert_eq!(scaled(&json!("100%"), i64::MAX, true), i64::MAX / 100 + 1);
    }
}
