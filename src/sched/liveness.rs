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
//!
//! A planned restart (an upgrade) is announced by the node itself before it stops: a
//! [`RestartHold`] in its own status document. While the hold lasts ([`held`]), a gone member
//! is [`Liveness::Suspect`] (its pods stay, it gets no new ones) instead of dead. A hold is
//! bounded three ways, so that neither a clock, a leader change nor a member announcing holds
//! again and again keeps pods hostage:
//!
//! - it covers only the life of the agent that announced it (the member's incarnation);
//! - it lasts at most what the node asked, capped at [`MAX_RESTART_HOLD`], measured both on the
//!   leader's clock from when the leader saw the member go (`since`) and on the wall clock from
//!   the announcement (which may be at most [`MAX_CLOCK_SKEW`] in the leader's future);
//! - a member that came back [`MAX_HELD_RESTARTS`] times within [`HOLD_WINDOW`] gets no more
//!   holds until those recoveries age out: it fails over like any dead node.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::snapshot::Liveness;
use crate::model::RestartHold;

/// Window in which recoveries are counted.
pub const FLAP_WINDOW: Duration = Duration::from_secs(60);
/// Recoveries within [`FLAP_WINDOW`] that make a member flapping (one or two refuted
/// suspicions under a burst are not yet flapping).
pub const FLAPS: usize = 3;
/// How long a flapping member must stay dead before its pods move.
pub const DEAD_HOLD: Duration = Duration::from_secs(6);

/// The longest hold a node may ask for (`shoal agent --restart-hold`); a longer ask is cut.
pub const MAX_RESTART_HOLD: Duration = Duration::from_secs(300);
/// The hold a node asks for unless told otherwise.
pub const DEFAULT_RESTART_HOLD: Duration = Duration::from_secs(60);
/// How far in the future an announcement's time may be (the node's clock ahead of the
/// leader's); a hold announced later than that is ignored.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(30);
/// Window in which a member's returns are counted against its holds.
pub const HOLD_WINDOW: Duration = Duration::from_secs(600);
/// Returns within [`HOLD_WINDOW`] after which a member's holds are no longer honoured.
pub const MAX_HELD_RESTARTS: usize = 3;

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

/// Whether a gone member's pods are held for it: `hold` is what its status document says,
/// `incarnation` the member's incarnation in the leader's view, `since` when the leader saw
/// it go, `recoveries` when it recently came back (see the module doc for the bounds).
pub fn held(
    hold: &RestartHold,
    incarnation: u64,
    since: Option<DateTime<Utc>>,
    recoveries: &[DateTime<Utc>],
    now: DateTime<Utc>,
) -> bool {
    if hold.incarnation != incarnation || hold.seconds == 0 {
        return false;
    }
    let asked = Duration::from_secs(hold.seconds).min(MAX_RESTART_HOLD);
    let (Ok(asked), Ok(skew), Ok(window)) = (
        chrono::Duration::from_std(asked),
        chrono::Duration::from_std(MAX_CLOCK_SKEW),
        chrono::Duration::from_std(HOLD_WINDOW),
    ) else {
        return false;
    };
    if hold.at > now + skew {
        return false;
    }
    // On the announcement's clock.
    if hold
        .at
        .checked_add_signed(asked)
        .is_none_or(|end| now >= end)
    {
        return false;
    }
    // On the leader's clock, when it saw the member go.
    if since.is_some_and(|s| now - s >= asked) {
        return false;
    }
    let returns = recoveries
        .iter()
        .filter(|at| **at <= now && now - **at < window)
        .count();
    returns < MAX_HELD_RESTARTS
}

/// [`classify`], then a gone member that [`held`] its pods is [`Liveness::Suspect`].
pub fn classify_held(
    state: ViewState,
    since: Option<DateTime<Utc>>,
    recoveries: &[DateTime<Utc>],
    hold: Option<(&RestartHold, u64)>,
    now: DateTime<Utc>,
) -> Liveness {
    let l = classify(state, since, recoveries, now);
    match hold {
        Some((hold, incarnation))
            if state == ViewState::Gone && held(hold, incarnation, since, recoveries, now) =>
        {
            Liveness::Suspect
        }
        _ => l,
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

    fn hold(at: i64, seconds: u64, incarnation: u64) -> RestartHold {
        RestartHold {
            at: t(at),
            seconds,
            incarnation,
        }
    }

    #[test]
    fn a_planned_restart_holds_the_pods_until_its_bound() {
        let h = hold(100, 60, 7);
        // Announced at 100, gone at 101: held until 160 on both clocks.
        for now in [101, 120, 159] {
            assert_eq!(
                classify_held(ViewState::Gone, Some(t(101)), &[], Some((&h, 7)), t(now)),
                Liveness::Suspect,
                "at {now}"
            );
        }
        assert_eq!(
            classify_held(ViewState::Gone, Some(t(101)), &[], Some((&h, 7)), t(160)),
            Liveness::Dead
        );
        // A new leader that saw it go only now still stops at the announcement's bound.
        assert_eq!(
            classify_held(ViewState::Gone, Some(t(150)), &[], Some((&h, 7)), t(160)),
            Liveness::Dead
        );
        // ... and one that knows no `since` (it started meanwhile) too.
        assert!(held(&h, 7, None, &[], t(159)));
        assert!(!held(&h, 7, None, &[], t(160)));
        // Alive or suspect: the hold changes nothing.
        assert_eq!(
            classify_held(ViewState::Alive, Some(t(101)), &[], Some((&h, 7)), t(120)),
            Liveness::Alive
        );
        // No hold: a gone member is dead at once.
        assert_eq!(
            classify_held(ViewState::Gone, Some(t(101)), &[], None, t(102)),
            Liveness::Dead
        );
    }

    #[test]
    fn a_hold_covers_only_the_life_that_announced_it() {
        let h = hold(100, 60, 7);
        // The node came back (a new incarnation) and died again: no hold.
        assert!(!held(&h, 8, Some(t(120)), &[t(110)], t(121)));
        assert!(!held(&h, 6, Some(t(120)), &[], t(121)));
    }

    #[test]
    fn a_hold_is_capped_and_ignored_when_announced_in_the_future() {
        // Asked for a day: cut at MAX_RESTART_HOLD.
        let long = hold(0, 86_400, 1);
        let cap = MAX_RESTART_HOLD.as_secs() as i64;
        assert!(held(&long, 1, Some(t(0)), &[], t(cap - 1)));
        assert!(!held(&long, 1, Some(t(0)), &[], t(cap)));
        // The node's clock a day ahead: the leader's own clock still ends it.
        let ahead = hold(86_400, 60, 1);
        assert!(!held(&ahead, 1, Some(t(0)), &[], t(1)));
        // A few seconds ahead is a clock, not a lie.
        let near = hold(10, 60, 1);
        assert!(held(&near, 1, Some(t(0)), &[], t(1)));
        assert!(!held(&near, 1, Some(t(0)), &[], t(60)));
        // Zero seconds: no hold.
        assert!(!held(&hold(0, 0, 1), 1, Some(t(0)), &[], t(0)));
        // Extreme times do not panic.
        let max = RestartHold {
            at: DateTime::<Utc>::MAX_UTC,
            seconds: u64::MAX,
            incarnation: 1,
        };
        assert!(!held(&max, 1, None, &[], t(0)));
        let min = RestartHold {
            at: DateTime::<Utc>::MIN_UTC,
            seconds: u64::MAX,
            incarnation: 1,
        };
        assert!(!held(&min, 1, None, &[], t(0)));
    }

    #[test]
    fn a_member_restarting_again_and_again_runs_out_of_holds() {
        let h = hold(1000, 60, 9);
        let two = [t(700), t(900)];
        assert!(held(&h, 9, Some(t(1000)), &two, t(1010)));
        let three = [t(500), t(700), t(900)];
        assert!(!held(&h, 9, Some(t(1000)), &three, t(1010)));
        // Once the oldest ages out of the window, holds are honoured again.
        let aged = [t(300), t(700), t(900)];
        assert!(held(&h, 9, Some(t(1000)), &aged, t(1010)));
    }

    proptest! {
        /// A hold never keeps a member's pods past its bound on the leader's clock nor on
        /// the wall clock, never past MAX_RESTART_HOLD + MAX_CLOCK_SKEW, never for another
        /// life, and never makes a member more trusted than Suspect.
        #[test]
        fn a_hold_is_bounded(
            state in prop_oneof![Just(ViewState::Alive), Just(ViewState::Suspect), Just(ViewState::Gone)],
            at in -100i64..2000,
            seconds in 0u64..2000,
            inc in 0u64..3,
            view_inc in 0u64..3,
            since in proptest::option::of(0i64..2000),
            rec in proptest::collection::vec(0i64..2000, 0..6),
            now in 0i64..3000,
        ) {
            let h = hold(at, seconds, inc);
            let rec: Vec<_> = rec.into_iter().map(t).collect();
            let with = classify_held(state, since.map(t), &rec, Some((&h, view_inc)), t(now));
            let without = classify(state, since.map(t), &rec, t(now));
            if with != without {
                // Only ever Dead -> Suspect, for a gone member, within every bound.
                prop_assert_eq!(state, ViewState::Gone);
                prop_assert_eq!(without, Liveness::Dead);
                prop_assert_eq!(with, Liveness::Suspect);
                prop_assert_eq!(inc, view_inc);
                let asked = seconds.min(MAX_RESTART_HOLD.as_secs()) as i64;
                prop_assert!(now < at + asked);
                prop_assert!(at <= now + MAX_CLOCK_SKEW.as_secs() as i64);
                if let Some(s) = since {
                    prop_assert!(now - s < asked);
                }
                let recent = rec.iter().filter(|r| **r <= t(now) && t(now) - **r < chrono::Duration::seconds(600)).count();
                prop_assert!(recent < MAX_HELD_RESTARTS);
            }
        }
    }
}
