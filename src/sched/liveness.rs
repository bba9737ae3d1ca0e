//! The leader's damping of membership: from a member's state, when it entered it and when it
//! last recovered, the [`Liveness`] the scheduler acts on (pure; the time comes in).
//!
//! A failure detector under load can flap: a starved node is suspected, refutes, is suspected
//! again. Acting on every transition turns load into more load (each failover starts pods
//! elsewhere, which starves the next node). So:
//!
//! - a member that recovered [`FLAPS`] or more times within [`FLAP_WINDOW`] is not given new
//!   pods (it keeps those it has) until its recoveries age out of the window;
//! - such a flapping member's pods are failed over only once it has stayed dead for
//!   [`DEAD_HOLD`], a full detection period; a member that did not flap fails over at once
//!   (the fast failover shoal promises for a host that really died).

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::snapshot::Liveness;

/// Window in which recoveries are counted.
pub const FLAP_WINDOW: Duration = Duration::from_secs(60);
/// Recoveries within [`FLAP_WINDOW`] that make a member flapping (one or two refuted
/// suspicions under a burst are not yet flapping).
pub const FLAPS: usize = 3;
/// How long a flapping member must stay dead before its pods move.
pub const DEAD_HOLD: Duration = Duration::from_secs(6);

/// A member's state as the view reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViewState {
    Alive,
    Suspect,
    /// Dead or left.
    Gone,
}

/// What the scheduler may do with a member; see the module doc.
pub fn classify(
    state: ViewState,
    since: Option<DateTime<Utc>>,
    recoveries: &[DateTime<Utc>],
    now: DateTime<Utc>,
) -> Liveness {
    let window = chrono::Duration::from_std(FLAP_WINDOW).unwrap_or(chrono::Duration::MAX);
    let flaps = recoveries
        .iter()
        .filter(|at| **at <= now && now - **at < window)
        .count();
    let flapping = flaps >= FLAPS;
    match state {
        ViewState::Alive if flapping => Liveness::Suspect,
        ViewState::Alive => Liveness::Alive,
        ViewState::Suspect => Liveness::Suspect,
        ViewState::Gone if !flapping => Liveness::Dead,
        ViewState::Gone => {
            let hold = chrono::Duration::from_std(DEAD_HOLD).unwrap_or(chrono::Duration::MAX);
            match since {
                Some(t) if now - t < hold => Liveness::Suspect,
                _ => Liveness::Dead,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    #[test]
    fn a_steady_member_is_what_the_view_says() {
        assert_eq!(
            classify(ViewState::Alive, Some(t(0)), &[], t(100)),
            Liveness::Alive
        );
        assert_eq!(
            classify(ViewState::Suspect, Some(t(99)), &[], t(100)),
            Liveness::Suspect
        );
        // A host that really died fails over at once.
        assert_eq!(
            classify(ViewState::Gone, Some(t(100)), &[], t(100)),
            Liveness::Dead
        );
        // A recovery or two (a restart, a refuted suspicion) is not flapping.
        assert_eq!(
            classify(ViewState::Gone, Some(t(100)), &[t(90)], t(100)),
            Liveness::Dead
        );
        assert_eq!(
            classify(ViewState::Alive, Some(t(90)), &[t(80), t(90)], t(100)),
            Liveness::Alive
        );
    }

    #[test]
    fn a_flapping_member_gets_no_new_pods_until_its_recoveries_age_out() {
        let rec = [t(5), t(10), t(20)];
        assert_eq!(
            classify(ViewState::Alive, Some(t(20)), &rec, t(30)),
            Liveness::Suspect
        );
        assert_eq!(
            classify(ViewState::Alive, Some(t(20)), &rec, t(64)),
            Liveness::Suspect
        );
        assert_eq!(
            classify(ViewState::Alive, Some(t(20)), &rec, t(66)),
            Liveness::Alive
        );
    }

    #[test]
    fn a_flapping_member_fails_over_only_after_a_full_detection_period() {
        let rec = [t(5), t(10), t(20)];
        assert_eq!(
            classify(ViewState::Gone, Some(t(30)), &rec, t(31)),
            Liveness::Suspect
        );
        assert_eq!(
            classify(ViewState::Gone, Some(t(30)), &rec, t(35)),
            Liveness::Suspect
        );
        assert_eq!(
            classify(ViewState::Gone, Some(t(30)), &rec, t(36)),
            Liveness::Dead
        );
        // Unknown since (a member the view never saw change): no reason to hold.
        assert_eq!(classify(ViewState::Gone, None, &rec, t(31)), Liveness::Dead);
    }

    proptest! {
        /// Damping only ever delays: it never makes a member more trusted than its state.
        #[test]
        fn damping_never_upgrades(
            state in prop_oneof![Just(ViewState::Alive), Just(ViewState::Suspect), Just(ViewState::Gone)],
            since in proptest::option::of(0i64..200),
            rec in proptest::collection::vec(0i64..200, 0..6),
            now in 0i64..300,
        ) {
            let rec: Vec<_> = rec.into_iter().map(t).collect();
            let l = classify(state, since.map(t), &rec, t(now));
            let plain = match state {
                ViewState::Alive => Liveness::Alive,
                ViewState::Suspect => Liveness::Suspect,
                ViewState::Gone => Liveness::Dead,
            };
            match plain {
                Liveness::Alive => prop_assert!(l != Liveness::Dead),
                Liveness::Suspect => prop_assert_eq!(l, Liveness::Suspect),
                Liveness::Dead => prop_assert!(l != Liveness::Alive),
            }
            // Without recent recoveries it is exactly the view.
            if rec.iter().all(|r| *r > t(now) || t(now) - *r >= chrono::Duration::seconds(60)) {
                prop_assert_eq!(l, plain);
            }
        }
    }
}
