//! CPU and memory use for `metrics.k8s.io`: a sampler that reads this node's pod cgroups and
//! the host every [`SAMPLE`] and keeps the last two readings (rates need two), and the
//! gathering of every alive node's usage for the API (this node's from memory, the others'
//! from their `/shoal/v1/usage` route, as pod logs are relayed).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;

use crate::api::usage::{ContainerUsage, NodeUsage, PodUsage};
use crate::model::MemberState;
use crate::runtime::usage::{self, Cgroups, Reading};
use crate::state::Shared;

/// How often cgroups are read (the window of the reported rates).
pub const SAMPLE: Duration = Duration::from_secs(5);
/// How long the API waits for another node's usage.
const PEER_TIMEOUT: Duration = Duration::from_secs(3);

/// (namespace, pod, container).
type ContainerId = (String, String, String);

#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Instant,
    reading: Reading,
}

/// The last two samples of the host and of every container.
#[derive(Default)]
struct Samples {
    host: Option<(Sample, Sample)>,
    containers: BTreeMap<ContainerId, (Sample, Sample)>,
    taken: Option<chrono::DateTime<Utc>>,
}

/// This node's usage samples, shared between the sampler and the API.
#[derive(Default)]
pub struct UsageStore {
    samples: Mutex<Samples>,
}

fn push(slot: &mut Option<(Sample, Sample)>, s: Sample) {
    *slot = Some(match slot.take() {
        Some((_, last)) => (last, s),
        None => (s, s),
    });
}

fn rate(pair: &(Sample, Sample)) -> u64 {
    let (a, b) = pair;
    usage::rate(
        &a.reading,
        &b.reading,
        b.at.duration_since(a.at).as_secs_f64(),
    )
}

impl UsageStore {
    /// Records one round of readings; containers not read this round are forgotten.
    fn record(&self, host: Option<Reading>, containers: BTreeMap<ContainerId, Reading>) {
        let now = Instant::now();
        let mut s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = host {
            push(
                &mut s.host,
                Sample {
                    at: now,
                    reading: r,
                },
            );
        }
        let mut next = BTreeMap::new();
        for (id, reading) in containers {
            let mut slot = s.containers.remove(&id);
            push(&mut slot, Sample { at: now, reading });
            if let Some(pair) = slot {
                next.insert(id, pair);
            }
        }
        s.containers = next;
        s.taken = Some(Utc::now());
    }

    /// This node's usage over its last window; `None` before two samples were taken.
    pub fn report(&self, node: &str) -> Option<NodeUsage> {
        let s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let host = s.host.as_ref()?;
        if host.0.at == host.1.at {
            return None;
        }
        let mut pods: BTreeMap<(String, String), Vec<ContainerUsage>> = BTreeMap::new();
        for ((ns, pod, container), pair) in &s.containers {
            // A container seen once has no rate yet: reported from its second sample.
            if pair.0.at == pair.1.at {
                continue;
            }
            pods.entry((ns.clone(), pod.clone()))
                .or_default()
                .push(ContainerUsage {
                    name: container.clone(),
                    cpu_nanocores: rate(pair),
                    memory_bytes: pair.1.reading.memory_bytes,
                });
        }
        Some(NodeUsage {
            node: node.to_string(),
            timestamp: s.taken.unwrap_or_else(Utc::now),
            window_ms: host.1.at.duration_since(host.0.at).as_millis() as u64,
            cpu_nanocores: rate(host),
            memory_bytes: host.1.reading.memory_bytes,
            pods: pods
                .into_iter()
                .map(|((namespace, name), containers)| PodUsage {
                    namespace,
                    name,
                    containers,
                })
                .collect(),
        })
    }
}

/// One round: the host and every container of the pods this node runs.
fn sample(shared: &Shared, cgroups: &Cgroups, parent: &str, store: &UsageStore) {
    let mut containers = BTreeMap::new();
    for (key, pod) in crate::kubelet::desired_pods(shared) {
        for c in pod.all_containers() {
            let rel = crate::runtime::runc::container_cgroup(parent, &key, &c.name);
            if let Some(r) = cgroups.reading(&rel) {
                containers.insert((pod.namespace(), pod.name(), c.name.clone()), r);
            }
        }
    }
    store.record(usage::host_reading(), containers);
}

/// Samples every [`SAMPLE`] until `stop` resolves. `cgroup_parent`: the runtime's.
pub async fn run(
    shared: Arc<Shared>,
    store: Arc<UsageStore>,
    cgroup_parent: String,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let cgroups = Cgroups::host();
    let mut tick = tokio::time::interval(SAMPLE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tick.tick() => {}
        }
        let (shared, store, cgroups, parent) = (
            shared.clone(),
            store.clone(),
            cgroups.clone(),
            cgroup_parent.clone(),
        );
        let _ =
            tokio::task::spawn_blocking(move || sample(&shared, &cgroups, &parent, &store)).await;
    }
}

/// Every alive node's usage: this node's from `store`, the others' from their API. A node that
/// does not answer in time is left out (as metrics-server leaves out nodes it cannot scrape).
pub async fn gather(
    shared: Arc<Shared>,
    store: Arc<UsageStore>,
    client: reqwest::Client,
) -> Vec<NodeUsage> {
    let view = shared.view();
    let alive: BTreeSet<String> = view
        .members
        .iter()
        .filter(|m| m.state == MemberState::Alive)
        .map(|m| m.name.clone())
        .collect();
    let token = shared.identity.internal_api_token();
    let records: Vec<crate::model::NodeRecord> = shared
        .read(|d| d.nodes())
        .into_iter()
        .filter(|n| n.name != shared.node_name && alive.contains(&n.name))
        .collect();
    let mut out: Vec<NodeUsage> = store.report(&shared.node_name).into_iter().collect();
    let asks = records.into_iter().map(|record| {
        let client = client.clone();
        let token = token.clone();
        async move {
            let url = format!("https://{}/shoal/v1/usage", record.api_addr);
            let resp =
                tokio::time::timeout(PEER_TIMEOUT, client.get(url).bearer_auth(token).send())
                    .await
                    .ok()?
                    .ok()?;
            if !resp.status().is_success() {
                return None;
            }
            let bytes = tokio::time::timeout(PEER_TIMEOUT, resp.bytes())
                .await
                .ok()?
                .ok()?;
            match serde_json::from_slice::<Option<NodeUsage>>(&bytes) {
                Ok(u) => u.filter(|u| u.node == record.name),
                Err(e) => {
                    tracing::debug!(node = %record.name, %e, "unreadable usage from a peer");
                    None
                }
            }
        }
    });
    out.extend(futures::future::join_all(asks).await.into_iter().flatten());
    out.sort_by(|a, b| a.node.cmp(&b.node));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_need_two_samples_and_gone_containers_are_dropped() {
        let store = UsageStore::default();
        let id = ("default".to_string(), "busy".to_string(), "c".to_string());
        let r = |cpu_ns, memory_bytes| Reading {
            cpu_ns,
            memory_bytes,
        };
        store.record(Some(r(0, 10)), [(id.clone(), r(0, 5))].into());
        assert!(store.report("n1").is_none(), "one sample has no rate");
        std::thread::sleep(Duration::from_millis(20));
        store.record(
            Some(r(40_000_000, 20)),
            [(id.clone(), r(20_000_000, 7))].into(),
        );
        let u = store.report("n1").unwrap();
        assert_eq!(u.memory_bytes, 20);
        assert!(
            u.cpu_nanocores > 0 && u.cpu_nanocores <= 2_000_000_000,
            "{u:?}"
        );
        assert_eq!(u.pods.len(), 1);
        assert_eq!(u.pods[0].containers[0].memory_bytes, 7);
        store.record(Some(r(50_000_000, 20)), BTreeMap::new());
        assert!(store.report("n1").unwrap().pods.is_empty());
    }
}
