//! Scheduler-leader choice. The *candidate* of a live set is a pure, order-independent function
//! of it (rendezvous hashing): every agent that shares a view names the same candidate without
//! exchanging a message. The leader *in office* is sticky ([`in_office`]): the leader recorded
//! in the cluster document keeps office while it is live in the view, so a node that flaps, or
//! a node with a higher weight that joins or returns, does not move leadership (each move is a
//! round of decisions made on a fresh view); when the recorded leader leaves the live set, the
//! candidate takes office and records itself. Replicas converge on one record, so views that
//! agree on the live set and share the document agree on the leader.

use sha2::{Digest, Sha256};

use super::MemberId;

/// The rendezvous weight of a node id: the first 8 bytes of SHA-256(`shoal-leader\0` ++ id).
pub fn weight(id: &str) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(b"shoal-leader\0");
    hasher.update(id.as_bytes());
    let digest = hasher.finalize();
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(bytes)
}

/// The leader of a live set: the member with the highest weight (ties, which need a hash
/// collision, go to the greater id). `None` for an empty set.
pub fn leader<'a>(live: impl IntoIterator<Item = &'a MemberId>) -> Option<MemberId> {
    live.into_iter()
        .max_by(|a, b| (weight(a), a.as_str()).cmp(&(weight(b), b.as_str())))
        .cloned()
}

/// The leader in office: the `recorded` one while it is in `live`, else the candidate of
/// `live` (`None` for an empty set).
pub fn in_office<'a>(
    recorded: Option<&str>,
    live: impl IntoIterator<Item = &'a MemberId> + Clone,
) -> Option<MemberId> {
    if let Some(r) = recorded {
        if live.clone().into_iter().any(|m| m == r) {
            return Some(r.to_string());
        }
    }
    leader(live)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn ids(n: usize) -> Vec<MemberId> {
        (0..n).map(|i| format!("node-{i}")).collect()
    }

    #[test]
    fn empty_set_has_no_leader() {
        let none: Vec<MemberId> = Vec::new();
        assert_eq!(leader(&none), None);
    }

    #[test]
    fn single_member_leads() {
        let one = vec!["a".to_string()];
        assert_eq!(leader(&one), Some("a".to_string()));
    }

    #[test]
    fn weight_is_stable() {
        // Pinned so that a change of hash (which would change leaders across versions) is noticed.
        assert_eq!(weight("node-0"), weight("node-0"));
        assert_ne!(weight("node-0"), weight("node-1"));
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            failure_persistence: Some(Box::new(
                proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
            )),
            ..ProptestConfig::default()
        })]
        #[test]
        fn order_independent(n in 1usize..40, seed in any::<u64>()) {
            use rand::{seq::SliceRandom, SeedableRng};
            let mut v = ids(n);
            let first = leader(&v);
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            v.shuffle(&mut rng);
            prop_assert_eq!(leader(&v), first);
        }

        #[test]
        fn agreement_between_views(set in proptest::collection::btree_set("[a-z]{1,8}", 1..30)) {
            let a: Vec<MemberId> = set.iter().cloned().collect();
            let b: Vec<MemberId> = set.iter().rev().cloned().collect();
            let l = leader(&a);
            prop_assert!(l.as_ref().is_some_and(|l| set.contains(l)));
            prop_assert_eq!(l, leader(&b));
        }

        #[test]
        fn removing_a_non_leader_keeps_the_leader(
            set in proptest::collection::btree_set("[a-z]{1,8}", 2..30),
            pick in any::<prop::sample::Index>(),
        ) {
            let l = leader(&set).unwrap();
            let victim = pick.get(&set.iter().cloned().collect::<Vec<_>>()).clone();
            prop_assume!(victim != l);
            let mut rest: BTreeSet<MemberId> = set.clone();
            rest.remove(&victim);
            prop_assert_eq!(leader(&rest), Some(l));
        }

        #[test]
        fn joining_changes_leader_only_to_the_joiner(
            set in proptest::collection::btree_set("[a-z]{1,8}", 1..30),
            joiner in "[a-z]{1,8}",
        ) {
            let before = leader(&set).unwrap();
            let mut more = set.clone();
            more.insert(joiner.clone());
            let after = leader(&more).unwrap();
            prop_assert!(after == before || after == joiner);
        }
    }

    #[test]
    fn the_recorded_leader_keeps_office_while_live() {
        let live: BTreeSet<MemberId> = ids(5).into_iter().collect();
        let candidate = leader(&live).unwrap();
        let other = live.iter().find(|m| **m != candidate).unwrap().clone();
        assert_eq!(in_office(Some(&other), &live), Some(other.clone()));
        assert_eq!(in_office(None, &live), Some(candidate.clone()));
        // The recorded leader left: the candidate of the rest takes office.
        let rest: BTreeSet<MemberId> = live.iter().filter(|m| **m != other).cloned().collect();
        assert_eq!(in_office(Some(&other), &rest), leader(&rest));
        assert_eq!(in_office(Some("gone"), &live), Some(candidate));
    }

    proptest! {
        /// Whatever is recorded, the leader in office is a live member (of a non-empty set).
        #[test]
        fn in_office_is_live(n in 1usize..20, pick in 0usize..40) {
            let live: BTreeSet<MemberId> = ids(n).into_iter().collect();
            let recorded = format!("node-{pick}");
            let l = in_office(Some(&recorded), &live).unwrap();
            prop_assert!(live.contains(&l));
            if live.contains(&recorded) {
                prop_assert_eq!(l, recorded);
            }
        }
    }
}
