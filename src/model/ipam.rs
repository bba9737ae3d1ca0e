//! Pod-CIDR allocation, the pure part: the cluster CIDR and per-node mask ([`PodCidrConfig`],
//! fixed at `shoal init`), the claims nodes write into the cluster document
//! (`podcidr/<index>` → [`PodCidrClaim`]) and the decision one node takes from them
//! ([`plan`]): keep its claim, or claim the first free subnet from an offset hashed from its
//! name. No I/O and no clocks; the agent's shell (`agent::ipam`) applies the plan. See
//! `docs/networking.md`.

use std::collections::BTreeMap;
use std::fmt;

use core::net::Ipv4Addr;
use serde::{Deserialize, Serialize};

/// Cluster CIDR used when `shoal init` is given none (and by clusters created before the
/// setting existed).
pub const DEFAULT_CLUSTER_CIDR: &str = "10.244.0.0/16";
/// Per-node prefix length used when `shoal init` is given none.
pub const DEFAULT_NODE_CIDR_MASK: u8 = 24;
/// Longest per-node prefix accepted: a /28 leaves 14 pod addresses.
pub const MAX_NODE_CIDR_MASK: u8 = 28;

/// Cluster document key prefix of the claims: `podcidr/<index>`.
pub const CLAIM_PREFIX: &str = "podcidr/";

/// The key of the claim of subnet `index`.
pub fn claim_key(index: u32) -> String {
    format!("{CLAIM_PREFIX}{index}")
}

/// The subnet index of a claim key (`None` for anything else, including non-canonical
/// numbers such as `podcidr/01`, which no node writes).
pub fn parse_claim_key(key: &str) -> Option<u32> {
    let rest = key.strip_prefix(CLAIM_PREFIX)?;
    let index: u32 = rest.parse().ok()?;
    (index.to_string() == rest).then_some(index)
}

/// One node's claim of one subnet. Cluster document, key `podcidr/<index>`; written only by
/// the claiming node. Concurrent claims of the same index resolve to one winner on every
/// replica; the loser sees it and claims another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodCidrClaim {
    /// The claiming node's name.
    pub node: String,
    /// The claiming node's `NodeRecord::uid`: a claim whose node record is gone or has
    /// another uid (the node was deleted) is free.
    pub uid: String,
}

/// Why a pod-CIDR setting is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("invalid cluster CIDR {0:?}: {1}")]
    Cidr(String, String),
    #[error("invalid node CIDR mask /{mask}: {reason}")]
    Mask { mask: u8, reason: String },
}

/// The cluster's pod address space: `cidr` carved into `2^(node_mask - prefix)` node subnets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodCidrConfig {
    base: u32,
    prefix: u8,
    node_mask: u8,
}

impl PodCidrConfig {
    /// Parses and validates the settings: an IPv4 network in `a.b.c.d/p` form without host
    /// bits, and a node mask between `p + 1` and [`MAX_NODE_CIDR_MASK`].
    pub fn new(cidr: &str, node_mask: u8) -> Result<Self, IpamError> {
        let bad = |why: &str| IpamError::Cidr(cidr.to_string(), why.to_string());
        let (addr, prefix) = cidr
            .split_once('/')
            .ok_or_else(|| bad("expected ADDRESS/PREFIX, e.g. 10.244.0.0/16"))?;
        if addr.contains(':') {
            return Err(bad("IPv6 pod networks are not supported yet; use IPv4"));
        }
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| bad("the address is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| bad("the prefix length must be a number from 0 to 32"))?;
        let base = u32::from(addr);
        let host_mask = u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
        if base & host_mask != 0 {
            let network = Ipv4Addr::from(base & !host_mask);
            return Err(bad(&format!(
                "host bits are set (the network is {network}/{prefix})"
            )));
        }
        let low = prefix.saturating_add(1);
        if node_mask < low || node_mask > MAX_NODE_CIDR_MASK {
            let reason = if low > MAX_NODE_CIDR_MASK {
                format!("the cluster CIDR /{prefix} is too small to split into node subnets of at most /{MAX_NODE_CIDR_MASK}")
            } else {
                format!(
                    "it must be longer than the cluster CIDR's /{prefix} and at most /{MAX_NODE_CIDR_MASK}, i.e. /{low} to /{MAX_NODE_CIDR_MASK}"
                )
            };
            return Err(IpamError::Mask {
                mask: node_mask,
                reason,
            });
        }
        Ok(PodCidrConfig {
            base,
            prefix,
            node_mask,
        })
    }

    /// The default `10.244.0.0/16` carved into /24s.
    pub fn default_config() -> Self {
        PodCidrConfig {
            base: u32::from(Ipv4Addr::new(10, 244, 0, 0)),
            prefix: 16,
            node_mask: DEFAULT_NODE_CIDR_MASK,
        }
    }

    /// Number of node subnets.
    pub fn count(&self) -> u32 {
        1u32 << (self.node_mask - self.prefix)
    }

    /// The per-node prefix length.
    pub fn node_mask(&self) -> u8 {
        self.node_mask
    }

    /// Subnet `index` as `a.b.c.d/mask`, or `None` past the end.
    pub fn subnet(&self, index: u32) -> Option<String> {
        (index < self.count()).then(|| {
            let addr = self.base | (index << (32 - u32::from(self.node_mask)));
            format!("{}/{}", Ipv4Addr::from(addr), self.node_mask)
        })
    }

    /// Where `node` starts looking for a free subnet: a hash of its name (FNV-1a), so nodes
    /// joining at the same moment mostly try different subnets.
    pub fn offset(&self, node: &str) -> u32 {
        super::hash::fnv32a(node.as_bytes()) % self.count()
    }
}

impl fmt::Display for PodCidrConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} in /{} node subnets",
            Ipv4Addr::from(self.base),
            self.prefix,
            self.node_mask
        )
    }
}

/// What one node does about its pod CIDR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The subnet index the node holds after the plan is applied (`None`: exhausted).
    pub index: Option<u32>,
    /// Write `podcidr/<index>` → this node's claim (a new claim, or one of its own claims
    /// from before its record was recreated, re-written with its current uid).
    pub write: bool,
    /// Delete these claims: the node's own extra claims.
    pub release: Vec<u32>,
    /// Set when every subnet is validly claimed by other nodes.
    pub exhausted: Option<String>,
}

impl Plan {
    /// Whether applying the plan changes the document.
    pub fn has_writes(&self) -> bool {
        self.write || !self.release.is_empty()
    }
}

/// A claim counts when its node's record exists with the claim's uid.
fn valid(claim: &PodCidrClaim, nodes: &BTreeMap<String, String>) -> bool {
    nodes.get(&claim.node) == Some(&claim.uid)
}

/// The node → (index, subnet) each node holds: its lowest-index valid claim. Claims past
/// the end of the address space (never written by a correct node) are ignored.
pub fn assignments(
    config: &PodCidrConfig,
    claims: &BTreeMap<u32, PodCidrClaim>,
    nodes: &BTreeMap<String, String>,
) -> BTreeMap<String, (u32, String)> {
    let mut out = BTreeMap::new();
    for (&index, claim) in claims {
        let Some(subnet) = config.subnet(index) else {
            continue;
        };
        if valid(claim, nodes) && !out.contains_key(&claim.node) {
            out.insert(claim.node.clone(), (index, subnet));
        }
    }
    out
}

/// Decides node `me` (record uid `uid`)'s pod CIDR from the current `claims` and the
/// existing `nodes` (name → uid).
///
/// - It keeps its lowest-index claim carrying its name (re-writing it if the uid is an older
///   one of its own), and releases any other claim carrying its name.
/// - Without one, it claims the first free index from [`PodCidrConfig::offset`], wrapping; an
///   index is free when unclaimed or claimed by a node that no longer exists (or exists with
///   another uid).
pub fn plan(
    config: &PodCidrConfig,
    claims: &BTreeMap<u32, PodCidrClaim>,
    nodes: &BTreeMap<String, String>,
    me: &str,
    uid: &str,
) -> Plan {
    let count = config.count();
    let mine: Vec<(u32, &PodCidrClaim)> = claims
        .iter()
        .filter(|(i, c)| **i < count && c.node == me)
        .map(|(i, c)| (*i, c))
        .collect();
    let keep = mine
        .iter()
        .find(|(_, c)| c.uid == uid)
        .or_else(|| mine.first())
        .copied();
    if let Some((index, claim)) = keep {
        return Plan {
            index: Some(index),
            write: claim.uid != uid,
            release: mine
                .iter()
                .map(|(i, _)| *i)
                .filter(|i| *i != index)
                .collect(),
            exhausted: None,
        };
    }
    let taken = |i: u32| claims.get(&i).is_some_and(|c| valid(c, nodes));
    let start = config.offset(me);
    let free = (0..count).map(|k| (start + k) % count).find(|i| !taken(*i));
    Plan {
        index: free,
        write: free.is_some(),
        release: Vec::new(),
        exhausted: free.is_none().then(|| {
            format!(
                "no free pod CIDR: all {count} /{} subnets of the cluster CIDR are claimed by other nodes (delete departed nodes to free theirs, or create the cluster with a larger --cluster-cidr or a longer --node-cidr-mask)",
                config.node_mask
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ClusterDoc;
    use automerge::ActorId;
    use proptest::prelude::*;

    fn claim(node: &str) -> PodCidrClaim {
        PodCidrClaim {
            node: node.into(),
            uid: format!("uid-{node}"),
        }
    }

    fn nodes(names: &[&str]) -> BTreeMap<String, String> {
        names
            .iter()
            .map(|n| (n.to_string(), format!("uid-{n}")))
            .collect()
    }

    #[test]
    fn settings_are_validated() {
        let c = PodCidrConfig::new("10.244.0.0/16", 24).unwrap();
        assert_eq!(c, PodCidrConfig::default_config());
        assert_eq!(c.count(), 256);
        assert_eq!(c.subnet(0).unwrap(), "10.244.0.0/24");
        assert_eq!(c.subnet(3).unwrap(), "10.244.3.0/24");
        assert_eq!(c.subnet(255).unwrap(), "10.244.255.0/24");
        assert_eq!(c.subnet(256), None);
        let small = PodCidrConfig::new("192.168.0.0/24", 28).unwrap();
        assert_eq!(small.count(), 16);
        assert_eq!(small.subnet(15).unwrap(), "192.168.0.240/28");
        let whole = PodCidrConfig::new("0.0.0.0/0", 1).unwrap();
        assert_eq!(whole.subnet(1).unwrap(), "128.0.0.0/1");

        for (cidr, mask, want) in [
            ("fd00::/48", 64, "IPv6"),
            ("10.244.0.0", 24, "ADDRESS/PREFIX"),
            ("10.244.0.0/33", 24, "prefix length"),
            ("10.244.0/16", 24, "not an IPv4"),
            (
                "10.244.1.0/16",
                24,
                "host bits are set (the network is 10.244.0.0/16)",
            ),
            ("10.244.0.0/16", 16, "/17 to /28"),
            ("10.244.0.0/16", 29, "/17 to /28"),
            ("10.244.0.0/16", 8, "/17 to /28"),
            ("10.244.0.0/28", 28, "too small"),
        ] {
            let e = PodCidrConfig::new(cidr, mask).unwrap_err().to_string();
            assert!(e.contains(want), "{cidr} /{mask}: {e}");
        }
    }

    #[test]
    fn claim_keys_round_trip() {
        assert_eq!(parse_claim_key(&claim_key(17)), Some(17));
        assert_eq!(parse_claim_key("podcidr/01"), None);
        assert_eq!(parse_claim_key("podcidr/x"), None);
        assert_eq!(parse_claim_key("node/17"), None);
    }

    #[test]
    fn first_claim_starts_at_the_name_offset() {
        let c = PodCidrConfig::default_config();
        let p = plan(&c, &BTreeMap::new(), &nodes(&["n1"]), "n1", "uid-n1");
        let off = c.offset("n1");
        assert_eq!(
            p,
            Plan {
                index: Some(off),
                write: true,
                release: vec![],
                exhausted: None
            }
        );
        // Different names mostly start at different places.
        let offsets: std::collections::BTreeSet<u32> =
            (0..20).map(|i| c.offset(&format!("node-{i}"))).collect();
        assert!(offsets.len() >= 15, "{offsets:?}");
    }

    #[test]
    fn taken_indices_are_skipped_and_the_search_wraps() {
        let c = PodCidrConfig::new("10.0.0.0/24", 26).unwrap(); // 4 subnets
        let me = (0..100)
            .map(|i| format!("n{i}"))
            .find(|n| c.offset(n) == 3)
            .unwrap();
        let live = nodes(&["a", "b", &me]);
        let mut claims = BTreeMap::new();
        claims.insert(3, claim("a"));
        let p = plan(&c, &claims, &live, &me, &format!("uid-{me}"));
        assert_eq!(p.index, Some(0), "wraps past the end");
        claims.insert(0, claim("b"));
        let p = plan(&c, &claims, &live, &me, &format!("uid-{me}"));
        assert_eq!(p.index, Some(1));
        assert!(p.write);
    }

    #[test]
    fn exhaustion_is_reported() {
        let c = PodCidrConfig::new("10.0.0.0/24", 25).unwrap(); // 2 subnets
        let live = nodes(&["a", "b", "c"]);
        let claims = BTreeMap::from([(0, claim("a")), (1, claim("b"))]);
        let p = plan(&c, &claims, &live, "c", "uid-c");
        assert_eq!(p.index, None);
        assert!(!p.has_writes());
        assert!(p.exhausted.unwrap().contains("all 2 /25 subnets"));
    }

    #[test]
    fn claims_of_deleted_or_recreated_nodes_are_free() {
        let c = PodCidrConfig::new("10.0.0.0/24", 25).unwrap();
        let claims = BTreeMap::from([(0, claim("gone")), (1, claim("b"))]);
        // `gone` has no record; `b`'s record was recreated under another name's uid.
        let mut live = nodes(&["b", "c"]);
        live.insert("b".into(), "uid-b-new".into());
        let p = plan(&c, &claims, &live, "c", "uid-c");
        assert!(p.index.is_some() && p.write, "{p:?}");
        assert_eq!(assignments(&c, &claims, &live), BTreeMap::new());
        // Both free: from offset of "c".
        assert_eq!(p.index, Some(c.offset("c")));
    }

    #[test]
    fn an_existing_claim_is_kept_and_extras_released() {
        let c = PodCidrConfig::default_config();
        let live = nodes(&["a", "b"]);
        let claims = BTreeMap::from([(7, claim("a")), (9, claim("b")), (12, claim("a"))]);
        let p = plan(&c, &claims, &live, "a", "uid-a");
        assert_eq!(
            p,
            Plan {
                index: Some(7),
                write: false,
                release: vec![12],
                exhausted: None
            }
        );
        let p = plan(&c, &claims, &live, "b", "uid-b");
        assert_eq!(p.index, Some(9));
        assert!(!p.has_writes());
        let a = assignments(&c, &claims, &live);
        assert_eq!(a["a"], (7, "10.244.7.0/24".to_string()));
        assert_eq!(a["b"], (9, "10.244.9.0/24".to_string()));
    }

    #[test]
    fn a_recreated_node_readopts_its_old_claim() {
        let c = PodCidrConfig::default_config();
        let live = BTreeMap::from([("a".to_string(), "uid-a2".to_string())]);
        let claims = BTreeMap::from([(7, claim("a"))]);
        let p = plan(&c, &claims, &live, "a", "uid-a2");
        assert_eq!(p.index, Some(7));
        assert!(p.write, "re-written with the new uid");
    }

    // ---- concurrent claims through the real document merge ----

    #[test]
    fn two_nodes_claiming_one_subnet_end_with_one_each() {
        // Two names that hash to the same starting subnet of a 4-subnet space.
        let c = PodCidrConfig::new("10.1.0.0/22", 24).unwrap();
        let names: Vec<String> = (0..50).map(|i| format!("n{i}")).collect();
        let a = names[0].clone();
        let b = names[1..]
            .iter()
            .find(|n| c.offset(n) == c.offset(&a))
            .unwrap()
            .clone();
        let mut docs = cluster_of(&[&a, &b], ("10.1.0.0/22", 24));
        assert!(round(&mut docs[0], &a));
        assert!(round(&mut docs[1], &b));
        assert_eq!(
            docs[0].pod_cidr_claims().keys().collect::<Vec<_>>(),
            docs[1].pod_cidr_claims().keys().collect::<Vec<_>>(),
            "both claimed the same subnet"
        );
        merge(&mut docs, 0, 1);
        merge(&mut docs, 1, 0);
        // One of them lost; it alone claims again, the winner has nothing to do.
        let wrote: Vec<bool> = vec![round(&mut docs[0], &a), round(&mut docs[1], &b)];
        assert_eq!(wrote.iter().filter(|w| **w).count(), 1, "{wrote:?}");
        merge(&mut docs, 0, 1);
        merge(&mut docs, 1, 0);
        assert!(!round(&mut docs[0], &a) && !round(&mut docs[1], &b));
        let held = docs[0].pod_cidrs();
        assert_eq!(held.len(), 2);
        assert_ne!(held[&a], held[&b]);
        assert_eq!(docs[1].pod_cidrs(), held);
    }

    /// One step of the simulated cluster.
    #[derive(Clone, Debug)]
    enum Step {
        /// Node `i` runs its allocation round on its replica.
        Round(usize),
        /// Replica `to` receives every change replica `from` has.
        Merge { from: usize, to: usize },
    }

    fn step(n: usize) -> impl Strategy<Value = Step> {
        prop_oneof![
            (0..n).prop_map(Step::Round),
            (0..n, 0..n).prop_map(|(from, to)| Step::Merge { from, to }),
        ]
    }

    fn round(doc: &mut ClusterDoc, me: &str) -> bool {
        let uid = format!("uid-{me}");
        let config = doc.pod_cidr_config().unwrap();
        let (claims, live) = doc.pod_cidr_inputs();
        let p = plan(&config, &claims, &live, me, &uid);
        doc.apply_pod_cidr_plan(&p, me, &uid).unwrap()
    }

    fn merge(docs: &mut [ClusterDoc], from: usize, to: usize) {
        if from == to {
            return;
        }
        let changes = docs[from].changes_since(&[]);
        docs[to].apply_pushed(&changes).unwrap();
    }

    fn cluster(n: usize, config: (&str, u8)) -> Vec<ClusterDoc> {
        let names: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        cluster_of(&names, config)
    }

    /// One replica per node, each with the metadata and its own node record.
    fn cluster_of(names: &[&str], config: (&str, u8)) -> Vec<ClusterDoc> {
        let mut seed = ClusterDoc::empty(ActorId::from(vec![0xee; 16]));
        let meta = crate::state::ClusterMeta {
            cluster_id: "c".into(),
            generation: 1,
            created: chrono::DateTime::UNIX_EPOCH,
            ca_cert_pem: String::new(),
            ca_key_sealed: vec![],
            cluster_cidr: config.0.into(),
            node_cidr_mask: config.1,
            service_cidr: crate::model::network::DEFAULT_SERVICE_CIDR.into(),
        };
        seed.put_meta(&meta).unwrap();
        let bytes = seed.save();
        names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let mut d = ClusterDoc::load(&bytes, ActorId::from(vec![i as u8 + 1; 16])).unwrap();
                let name = name.to_string();
                let record = crate::model::NodeRecord {
                    name: name.clone(),
                    uid: format!("uid-{name}"),
                    peer_id: String::new(),
                    p2p_addr: String::new(),
                    api_addr: String::new(),
                    internal_ip: String::new(),
                    created: chrono::DateTime::UNIX_EPOCH,
                    labels: BTreeMap::new(),
                    capacity: BTreeMap::new(),
                    system: Default::default(),
                };
                d.put_node(&record).unwrap();
                d
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// N nodes claim concurrently under any interleaving of rounds and merges; once every
        /// replica has everything and the rounds stop writing, every node holds exactly one
        /// claim and no two nodes share a subnet.
        #[test]
        fn concurrent_claims_converge_to_distinct_subnets(
            (n, steps, small) in (2usize..7).prop_flat_map(|n| {
                (Just(n), proptest::collection::vec(step(n), 0..60), any::<bool>())
            })
        ) {
            // A small space (8 subnets) makes collisions frequent.
            let settings = if small { ("10.1.0.0/21", 24) } else { ("10.244.0.0/16", 24) };
            let mut docs = cluster(n, settings);
            for s in steps {
                match s {
                    Step::Round(i) => { round(&mut docs[i], &format!("n{i}")); }
                    Step::Merge { from, to } => merge(&mut docs, from, to),
                }
            }
            // Converge: full exchange, then everyone's round, until nobody writes.
            let mut quiet = false;
            for _ in 0..20 {
                for from in 0..n {
                    for to in 0..n {
                        merge(&mut docs, from, to);
                    }
                }
                let mut wrote = false;
                for (i, d) in docs.iter_mut().enumerate() {
                    wrote |= round(d, &format!("n{i}"));
                }
                if !wrote {
                    quiet = true;
                    break;
                }
            }
            prop_assert!(quiet, "claims did not settle");
            let config = docs[0].pod_cidr_config().unwrap();
            let (claims, live) = docs[0].pod_cidr_inputs();
            for d in &docs[1..] {
                prop_assert_eq!(&d.pod_cidr_inputs().0, &claims);
            }
            let held = assignments(&config, &claims, &live);
            prop_assert_eq!(held.len(), n, "{:?}", claims);
            let subnets: std::collections::BTreeSet<&String> = held.values().map(|(_, s)| s).collect();
            prop_assert_eq!(subnets.len(), n);
            for i in 0..n {
                let me = format!("n{i}");
                prop_assert_eq!(claims.values().filter(|c| c.node == me).count(), 1, "{:?}", claims);
            }
        }
    }
}
