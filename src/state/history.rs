//! Bounded history of the cluster document: the decisions of its agreed re-base into numbered
//! document generations, as pure functions (no I/O, no clock). When to re-base (the saved
//! document over [`REBASE_RATIO`]× a fresh rebuild and over [`REBASE_MIN_BYTES`], decided by the
//! leader in office once every live peer is at its generation), the record the base carries
//! (its generation, who made it, the vector clocks of the last bases), the document version that
//! orders generations and concurrent bases, what a peer at another version is told, which of a
//! replica's changes are its *tail* beyond a base, and the checks a received base must pass.
//! The document operations (rebuild, tail re-application) are `Replica`'s and `ClusterDoc`'s;
//! the network actor only moves bytes (docs/consistency.md, "Bounding history").

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Re-base when the saved document is over this many times a fresh rebuild of its state...
pub const REBASE_RATIO: u64 = 2;
/// ...and over this size (a small document is not worth a cluster-wide re-base).
pub const REBASE_MIN_BYTES: u64 = 4 << 20;
/// After a measurement that did not re-base (the live state grew too), the leader measures
/// again only once the saved size has grown by this much more.
pub const REMEASURE_GROWTH_PCT: u64 = 10;
/// Base clocks a record keeps: a replica at most this many generations behind still knows its
/// tail exactly.
pub const KEPT_CLOCKS: usize = 8;
/// Most actors one base clock may name (every agent start is a new actor).
pub const MAX_CLOCK_ACTORS: usize = 1 << 16;
/// Highest document generation (it is packed in the high half of the version).
pub const MAX_GENERATION: u64 = u32::MAX as u64;
/// How long a leader must have been in office without a break before it may re-base: under
/// load, views can flap between leaders within seconds, and two nodes that each believe they
/// lead make concurrent bases of one generation (handled, but at the cost of a second move on
/// every replica of the losing one).
pub const MIN_OFFICE: std::time::Duration = std::time::Duration::from_secs(20);
/// The key of the re-base record in a based document (written only in the base change).
pub const RECORD_KEY: &str = "rebase";

/// A vector clock: automerge actor (hex) → the last sequence number of that actor in a base.
/// A change *(actor, seq)* is in the base iff `seq ≤ clock[actor]`.
pub type Clock = BTreeMap<String, u64>;

/// What a based document says about itself, stored at [`RECORD_KEY`] by its base change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebaseRecord {
    /// The document generation this base starts.
    pub generation: u64,
    /// The node that made the base (the leader in office then).
    pub by: String,
    /// For each of the last [`KEPT_CLOCKS`] generations `h` (this one included), the clock of
    /// generation `h - 1`'s changes that the base of `h` holds.
    pub clocks: BTreeMap<u64, Clock>,
    /// A hash of the base's content (generation, maker, clocks, every key and value): two
    /// concurrent bases of one generation differ in it and are ordered by it.
    pub tag: u32,
    /// The tags of the bases this one descends from, by generation, for the last
    /// [`KEPT_CLOCKS`] generations (this one's included): its lineage. A replica whose own base
    /// of generation `g` has another tag than `tags[g]` is on a base that lost (a concurrent
    /// one), however many generations behind it is. Empty in records made before it existed.
    #[serde(default)]
    pub tags: BTreeMap<u64, u32>,
}

/// The version of a document of generation `generation` whose base has `tag`: generations in
/// the high half, and within one generation the lower tag ordered higher. A replica moves to
/// any higher version, so of two concurrent bases of one generation the lower tag wins
/// everywhere. Generation 0 (never re-based) is version 0.
pub fn version(generation: u64, tag: u32) -> u64 {
    if generation == 0 {
        return 0;
    }
    (generation.min(MAX_GENERATION) << 32) | u64::from(u32::MAX - tag)
}

/// The generation of a version.
pub fn generation_of(version: u64) -> u64 {
    version >> 32
}

/// Whether the leader should measure a fresh rebuild now: the saved document is over the
/// floor and over [`REBASE_RATIO`]× the last fresh size measured (`fresh`, 0 if never: a lower
/// bound unless the live state shrank), and has grown since the last measurement (`measured`:
/// the saved size then) by [`REMEASURE_GROWTH_PCT`].
pub fn should_measure(saved: u64, fresh: u64, measured: u64) -> bool {
    saved > REBASE_MIN_BYTES
        && saved > REBASE_RATIO.saturating_mul(fresh)
        && saved.saturating_mul(100) >= measured.saturating_mul(100 + REMEASURE_GROWTH_PCT)
}

/// Whether a document saved at `saved` bytes whose fresh rebuild saves to `fresh` bytes has
/// outgrown its state enough to re-base.
pub fn should_rebase(saved: u64, fresh: u64) -> bool {
    saved > REBASE_MIN_BYTES && saved > REBASE_RATIO.saturating_mul(fresh)
}

/// What the leader gate sees.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GateInputs {
    /// This node is the leader in office.
    pub leader: bool,
    /// Its membership has settled (a peer seen and the view stable for a while).
    pub settled: bool,
    /// How long it has been the leader in office without a break.
    pub in_office: std::time::Duration,
    /// Live peers, and how many of them last reported this node's document version.
    pub live_peers: usize,
    pub peers_at_my_version: usize,
    /// A state transfer is being received (the document is about to move).
    pub receiving: bool,
}

/// Whether this node may start a re-base: it leads (for [`MIN_OFFICE`] at least), has
/// settled, receives nothing, and every
/// live peer is at its version (a re-base on top of one a peer has not taken yet would only
/// lengthen that peer's way).
pub fn may_rebase(g: &GateInputs) -> bool {
    g.leader
        && g.in_office >= MIN_OFFICE
        && g.settled
        && !g.receiving
        && g.peers_at_my_version >= g.live_peers
}

/// What to do about a peer whose cluster document is at `theirs` while ours is at `mine`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Same version: sync as usual.
    Same,
    /// The peer is behind: never merge its document; offer it our snapshot (it re-bases onto
    /// ours and re-applies its tail).
    Behind,
    /// The peer is ahead: never send it ours; it offers its snapshot and we move to it.
    Ahead,
    /// A version no re-base issues: ignored, with this reason logged.
    Bogus(String),
}

/// Judges a peer's claimed version against ours.
pub fn judge(mine: u64, theirs: u64) -> Verdict {
    let g = generation_of(theirs);
    if g == 0 && theirs != 0 {
        return Verdict::Bogus(format!("version {theirs:#x} of generation 0"));
    }
    match theirs.cmp(&mine) {
        std::cmp::Ordering::Equal => Verdict::Same,
        std::cmp::Ordering::Less => Verdict::Behind,
        std::cmp::Ordering::Greater => Verdict::Ahead,
    }
}

/// Why a received base is refused (nothing changes).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("a snapshot of document version {got:#x} is not newer than ours ({mine:#x})")]
    NotNewer { mine: u64, got: u64 },
    #[error("the snapshot has no re-base record but claims version {0:#x}")]
    NoRecord(u64),
    #[error("the snapshot's record is of version {record:#x}, the offer said {offered:#x}")]
    Mismatch { record: u64, offered: u64 },
    #[error("generation {0} is out of range")]
    Absurd(u64),
    #[error("the base's record keeps {0} clocks or tags (at most {KEPT_CLOCKS})")]
    TooManyClocks(usize),
    #[error("a base clock names {0} actors (at most {MAX_CLOCK_ACTORS})")]
    ClockTooLarge(usize),
    #[error("the base's record has no clock of its own generation {0}")]
    NoOwnClock(u64),
    #[error("the base was made by {by}, but the leader in office at its base was {leader:?}")]
    NotLeader { by: String, leader: Option<String> },
    #[error("the base is of cluster {got}, this node is of cluster {want}")]
    OtherCluster { want: String, got: String },
}

/// What a receiver knows about a base it was sent.
pub struct Received<'a> {
    /// Our document version.
    pub mine: u64,
    /// The version the transfer offered.
    pub offered: u64,
    /// The record the snapshot carries (`None`: a document never re-based).
    pub record: Option<&'a RebaseRecord>,
    /// The leader in office recorded in the snapshot (its `leader` key).
    pub leader: Option<&'a str>,
    /// The snapshot's cluster id, and ours.
    pub cluster: Option<&'a str>,
    pub my_cluster: &'a str,
}

/// Checks a snapshot offered as a newer document version: it must be newer than ours, carry a
/// well-formed record matching the offer, made by the leader in office at its base, of our
/// cluster. On `Ok` the receiver moves to it (re-applying its tail).
pub fn check_received(r: &Received) -> Result<(), Refusal> {
    if let Some(cluster) = r.cluster {
        if cluster != r.my_cluster {
            return Err(Refusal::OtherCluster {
                want: r.my_cluster.to_string(),
                got: cluster.to_string(),
            });
        }
    }
    let Some(record) = r.record else {
        return Err(if r.offered <= r.mine {
            Refusal::NotNewer {
                mine: r.mine,
                got: r.offered,
            }
        } else {
            Refusal::NoRecord(r.offered)
        });
    };
    if record.generation == 0 || record.generation > MAX_GENERATION {
        return Err(Refusal::Absurd(record.generation));
    }
    let v = version(record.generation, record.tag);
    if v != r.offered {
        return Err(Refusal::Mismatch {
            record: v,
            offered: r.offered,
        });
    }
    if v <= r.mine {
        return Err(Refusal::NotNewer {
            mine: r.mine,
            got: v,
        });
    }
    if record.clocks.len() > KEPT_CLOCKS || record.tags.len() > KEPT_CLOCKS {
        return Err(Refusal::TooManyClocks(
            record.clocks.len().max(record.tags.len()),
        ));
    }
    if let Some(c) = record.clocks.values().find(|c| c.len() > MAX_CLOCK_ACTORS) {
        return Err(Refusal::ClockTooLarge(c.len()));
    }
    if !record.clocks.contains_key(&record.generation) {
        return Err(Refusal::NoOwnClock(record.generation));
    }
    if r.leader != Some(record.by.as_str()) {
        return Err(Refusal::NotLeader {
            by: record.by.clone(),
            leader: r.leader.map(str::to_string),
        });
    }
    Ok(())
}

/// How a replica at `mine` finds its tail when it moves to a base of `record`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tail {
    /// The changes not in this clock (the base of the generation after ours).
    Beyond(Clock),
    /// Every change except the base's own (`actor`, hex): we are at a concurrent base that
    /// lost (of the same generation as `record`'s, or of an older one that `record`'s lineage
    /// did not take). The writes that base folded in are found from the document we had before
    /// it (`ClusterDoc::move_onto_from`).
    AllButBase(String),
    /// Nothing: an empty replica.
    Nothing,
    /// Unknown: we are more than [`KEPT_CLOCKS`] generations behind; the changes beyond the
    /// last base we took cannot be told apart, and are dropped with a logged error.
    Unknown,
}

/// Whether a replica whose base is of generation `mine_generation` with tag `mine_tag` is on a
/// base that `record`'s lineage did not take: a concurrent base of the same generation, or of
/// an older one whose winner `record` names in its `tags`. (Generation 0 has no base; a record
/// without `tags` for that generation cannot tell, and the base is taken as its own.)
pub fn off_lineage(mine_generation: u64, mine_tag: u32, record: &RebaseRecord) -> bool {
    mine_generation > 0
        && (mine_generation == record.generation
            || record
                .tags
                .get(&mine_generation)
                .is_some_and(|t| *t != mine_tag))
}

/// The tail rule for a replica whose document is of generation `mine_generation` (with its
/// base actor `mine_base_actor` and tag `mine_tag`), empty or not, moving to `record`'s base.
pub fn tail_rule(
    mine_generation: u64,
    mine_base_actor: &str,
    mine_tag: u32,
    empty: bool,
    record: &RebaseRecord,
) -> Tail {
    if empty {
        return Tail::Nothing;
    }
    if off_lineage(mine_generation, mine_tag, record) {
        return Tail::AllButBase(mine_base_actor.to_string());
    }
    match record.clocks.get(&(mine_generation + 1)) {
        Some(clock) => Tail::Beyond(clock.clone()),
        None => Tail::Unknown,
    }
}

/// Whether the change *(actor, seq)* is in the tail under `rule`.
pub fn in_tail(rule: &Tail, actor: &str, seq: u64) -> bool {
    match rule {
        Tail::Beyond(clock) => clock.get(actor).is_none_or(|last| seq > *last),
        Tail::AllButBase(base) => actor != base,
        Tail::Nothing | Tail::Unknown => false,
    }
}

/// The record of the base of `generation` made by `by` from a document whose changes reach
/// `clock` (and whose own record, if any, is `previous`): its clock joins the previous ones,
/// of which the last [`KEPT_CLOCKS`] are kept. `tag` is filled in by the caller once the
/// content is known ([`content_tag`]).
pub fn next_record(
    previous: Option<&RebaseRecord>,
    generation: u64,
    by: &str,
    clock: Clock,
) -> RebaseRecord {
    let mut clocks = previous.map(|p| p.clocks.clone()).unwrap_or_default();
    clocks.insert(generation, clock);
    while clocks.len() > KEPT_CLOCKS {
        clocks.pop_first();
    }
    let mut tags = previous.map(|p| p.tags.clone()).unwrap_or_default();
    if let Some(p) = previous {
        tags.insert(p.generation, p.tag);
    }
    // Ours joins once the content is known ([`RebaseRecord::seal`]); room is kept for it.
    while tags.len() >= KEPT_CLOCKS {
        tags.pop_first();
    }
    RebaseRecord {
        generation,
        by: by.to_string(),
        clocks,
        tag: 0,
        tags,
    }
}

impl RebaseRecord {
    /// Sets the tag of a record made by [`next_record`] (from [`content_tag`]) and adds it to
    /// its lineage.
    pub fn seal(&mut self, tag: u32) {
        self.tag = tag;
        self.tags.insert(self.generation, tag);
    }
}

/// The content hash of a base: its record (without tag) and every `(key, value)` it holds.
pub fn content_tag<'a>(
    record: &RebaseRecord,
    entries: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> u32 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(record.generation.to_be_bytes());
    h.update((record.by.len() as u64).to_be_bytes());
    h.update(record.by.as_bytes());
    for (g, clock) in &record.clocks {
        h.update(g.to_be_bytes());
        for (actor, seq) in clock {
            h.update((actor.len() as u64).to_be_bytes());
            h.update(actor.as_bytes());
            h.update(seq.to_be_bytes());
        }
    }
    for (k, v) in entries {
        h.update((k.len() as u64).to_be_bytes());
        h.update(k.as_bytes());
        h.update((v.len() as u64).to_be_bytes());
        h.update(v);
    }
    u32::from_be_bytes(h.finalize()[..4].try_into().expect("4 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(generation: u64, by: &str, tag: u32) -> RebaseRecord {
        let mut r = next_record(None, generation, by, Clock::new());
        r.tag = tag;
        r
    }

    #[test]
    fn the_leader_rebases_past_twice_the_fresh_size_and_the_floor() {
        assert!(!should_rebase(REBASE_MIN_BYTES, 1));
        assert!(should_rebase(REBASE_MIN_BYTES + 1, 1));
        assert!(!should_rebase(10 << 20, 5 << 20));
        assert!(should_rebase((10 << 20) + 1, 5 << 20));
        assert!(!should_measure(REBASE_MIN_BYTES, 0, 0));
        assert!(should_measure(REBASE_MIN_BYTES + 1, 0, 0));
        // Not before twice the last fresh size...
        assert!(!should_measure(10 << 20, 5 << 20, 0));
        assert!(should_measure((10 << 20) + 1, 5 << 20, 0));
        // ...nor again before it grew by a tenth since the last measurement.
        assert!(!should_measure(20 << 20, 5 << 20, 19 << 20));
        assert!(should_measure(21 << 20, 5 << 20, 19 << 20));
        let ok = GateInputs {
            leader: true,
            settled: true,
            in_office: MIN_OFFICE,
            live_peers: 2,
            peers_at_my_version: 2,
            receiving: false,
        };
        assert!(may_rebase(&ok));
        for bad in [
            GateInputs {
                leader: false,
                ..ok.clone()
            },
            GateInputs {
                settled: false,
                ..ok.clone()
            },
            GateInputs {
                in_office: MIN_OFFICE - std::time::Duration::from_secs(1),
                ..ok.clone()
            },
            GateInputs {
                peers_at_my_version: 1,
                ..ok.clone()
            },
            GateInputs {
                receiving: true,
                ..ok.clone()
            },
        ] {
            assert!(!may_rebase(&bad), "{bad:?}");
        }
    }

    #[test]
    fn peers_at_other_versions_are_told_apart() {
        let v1 = version(1, 10);
        assert_eq!(judge(v1, v1), Verdict::Same);
        assert_eq!(judge(v1, 0), Verdict::Behind);
        assert_eq!(judge(0, v1), Verdict::Ahead);
        // Of two bases of one generation the lower tag is the higher version: it wins.
        assert_eq!(judge(version(1, 20), version(1, 10)), Verdict::Ahead);
        assert_eq!(judge(version(1, 10), version(1, 20)), Verdict::Behind);
        assert_eq!(judge(version(1, 0), version(2, u32::MAX)), Verdict::Ahead);
        assert!(matches!(judge(0, 7), Verdict::Bogus(_)));
        assert_eq!(generation_of(version(5, 3)), 5);
    }

    #[test]
    fn a_received_base_is_checked() {
        let mut r = record(2, "n1", 9);
        r.clocks.insert(1, Clock::new());
        let v = version(2, 9);
        let good = Received {
            mine: version(1, 4),
            offered: v,
            record: Some(&r),
            leader: Some("n1"),
            cluster: Some("c"),
            my_cluster: "c",
        };
        assert_eq!(check_received(&good), Ok(()));
        let cases: Vec<(Received, &str)> = vec![
            (
                Received {
                    leader: Some("n2"),
                    ..good
                },
                "leader",
            ),
            (
                Received {
                    offered: version(2, 8),
                    ..good
                },
                "offer said",
            ),
            (Received { mine: v, ..good }, "not newer"),
            (
                Received {
                    record: None,
                    ..good
                },
                "no re-base record",
            ),
            (
                Received {
                    cluster: Some("other"),
                    ..good
                },
                "cluster",
            ),
        ];
        for (case, what) in cases {
            let err = check_received(&case).unwrap_err().to_string();
            assert!(err.contains(what), "{err} lacks {what}");
        }
        let mut absurd = r.clone();
        absurd.generation = MAX_GENERATION + 1;
        assert!(matches!(
            check_received(&Received {
                record: Some(&absurd),
                ..good
            }),
            Err(Refusal::Absurd(_))
        ));
        let mut many = r.clone();
        for g in 10..20 {
            many.clocks.insert(g, Clock::new());
        }
        assert!(matches!(
            check_received(&Received {
                record: Some(&many),
                ..good
            }),
            Err(Refusal::TooManyClocks(_))
        ));
    }

    #[test]
    fn tails_follow_the_clocks() {
        let mut clock = Clock::new();
        clock.insert("aa".into(), 3);
        let r = next_record(None, 1, "n1", clock.clone());
        let rule = tail_rule(0, "", 0, false, &r);
        assert_eq!(rule, Tail::Beyond(clock));
        assert!(!in_tail(&rule, "aa", 3));
        assert!(in_tail(&rule, "aa", 4));
        assert!(in_tail(&rule, "bb", 1));
        assert_eq!(tail_rule(0, "", 0, true, &r), Tail::Nothing);
        let same = tail_rule(1, "base", 7, false, &r);
        assert!(!in_tail(&same, "base", 1));
        assert!(in_tail(&same, "aa", 1));
        // Too far behind: no clock for the step after ours.
        let mut far = r.clone();
        for g in 2..=20 {
            far = next_record(Some(&far), g, "n1", Clock::new());
        }
        assert_eq!(far.clocks.len(), KEPT_CLOCKS);
        assert_eq!(far.tags.len(), KEPT_CLOCKS - 1, "room for its own tag");
        assert_eq!(tail_rule(3, "x", 0, false, &far), Tail::Unknown);
        assert!(matches!(
            tail_rule(19, "x", 0, false, &far),
            Tail::Beyond(_)
        ));
    }

    #[test]
    fn a_base_the_lineage_did_not_take_is_off_it_however_far_behind() {
        let mut g1 = next_record(None, 1, "n1", Clock::new());
        g1.seal(10);
        let mut g2 = next_record(Some(&g1), 2, "n1", Clock::new());
        g2.seal(20);
        let mut g3 = next_record(Some(&g2), 3, "n1", Clock::new());
        g3.seal(30);
        assert_eq!(g3.tags, BTreeMap::from([(1, 10), (2, 20), (3, 30)]));
        // On the lineage: the clock of the step after ours.
        assert!(!off_lineage(2, 20, &g3));
        assert!(matches!(
            tail_rule(2, "b2", 20, false, &g3),
            Tail::Beyond(_)
        ));
        // A concurrent base of generation 2 that lost, one generation behind: its own writes
        // since its base are its tail (the folded ones come from the document before it).
        assert!(off_lineage(2, 21, &g3));
        assert_eq!(
            tail_rule(2, "b2", 21, false, &g3),
            Tail::AllButBase("b2".into())
        );
        assert!(off_lineage(1, 11, &g3));
        // The same generation is a concurrent base whatever the tags say.
        assert!(off_lineage(3, 30, &g3));
        // Records from before lineages: taken as ours. Generation 0 has no base.
        let mut old = g3.clone();
        old.tags.clear();
        assert!(!off_lineage(2, 21, &old));
        assert!(!off_lineage(0, 0, &g3));
    }

    proptest! {
        /// Versions order generations first, then concurrent bases by tag, and unpack.
        #[test]
        fn versions_order_generations_then_lower_tags(
            g1 in 1u64..1000, g2 in 1u64..1000, t1: u32, t2: u32,
        ) {
            let (v1, v2) = (version(g1, t1), version(g2, t2));
            prop_assert_eq!(generation_of(v1), g1);
            if g1 != g2 {
                prop_assert_eq!(v1 < v2, g1 < g2);
            } else {
                prop_assert_eq!(v1 < v2, t1 > t2);
            }
            prop_assert!(version(0, t1) < v1);
        }

        /// Whatever order two replicas hear of a set of versions, they end at the same one
        /// (each moves only to a higher version): concurrent re-bases resolve the same way
        /// everywhere.
        #[test]
        fn every_order_of_hearing_ends_at_one_version(
            claims in proptest::collection::vec((0u64..4, any::<u32>()), 1..12),
            seed: u64,
        ) {
            let versions: Vec<u64> = claims.iter().map(|(g, t)| version(*g, *t)).collect();
            let mut shuffled = versions.clone();
            let mut x = seed | 1;
            for i in (1..shuffled.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                shuffled.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let settle = |order: &[u64]| order.iter().fold(0u64, |mine, theirs| {
                match judge(mine, *theirs) { Verdict::Ahead => *theirs, _ => mine }
            });
            prop_assert_eq!(settle(&versions), settle(&shuffled));
            prop_assert_eq!(settle(&versions), *versions.iter().max().unwrap());
        }

        /// A change is in the tail iff the clock does not cover it.
        #[test]
        fn tail_is_the_complement_of_the_clock(
            clock in proptest::collection::btree_map("[a-d]", 0u64..10, 0..4),
            actor in "[a-e]", seq in 1u64..12,
        ) {
            let r = next_record(None, 1, "n", clock.clone());
            let rule = tail_rule(0, "", 0, false, &r);
            let covered = clock.get(&actor).is_some_and(|last| seq <= *last);
            prop_assert_eq!(in_tail(&rule, &actor, seq), !covered);
        }
    }
}
