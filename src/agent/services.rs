//! The Services the data path uses on this node, read from the agent's replica: every stored
//! Service (after settling merged allocation conflicts, `model::service::resolve_conflicts`)
//! and its endpoints among the pods as the API serves them (same `WorkloadView`). The proxy
//! and DNS roles call [`snapshot`]; the API computes Endpoints/EndpointSlices the same way.
//! Also the repair task: on the scheduler leader, a Service that lost its ClusterIP or a
//! NodePort to a concurrent allocation gets a new one ([`run`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::backend::workload_view;
use crate::api::workloads::pod_view;
use crate::model::service::{self, Conflict, Endpoint, Service, SERVICES};
use crate::model::workload::{EventReason, EventType, PODS};
use crate::state::Shared;

/// Services and their endpoints at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServicesSnapshot {
    /// Services in namespace/name order, without the losers of a ClusterIP conflict and
    /// without NodePorts lost to another Service.
    pub services: Vec<Service>,
    /// `(namespace, name)` → endpoints, for every Service in `services` (empty without a
    /// selector or without matching pods), sorted by address.
    pub endpoints: BTreeMap<(String, String), Vec<Endpoint>>,
}

impl ServicesSnapshot {
    /// Pure: from the stored Services that parse (`parse_all`) and pods as served
    /// (`api::workloads::pod_view`). Also returns the allocation conflicts it settled.
    pub fn build(parsed: &[Service], pods: &[Value]) -> (ServicesSnapshot, Vec<Conflict>) {
        let (services, conflicts) = service::resolve_conflicts(parsed);
        // `endpoints` keeps only the pods each Service selects (its namespace included).
        let endpoints = services
            .iter()
            .map(|s| (s.key(), service::endpoints(s, pods)))
            .collect();
        (
            ServicesSnapshot {
                services,
                endpoints,
            },
            conflicts,
        )
    }
}

/// The stored Services that parse; one that does not is left out (and logged at debug).
fn parse_all(services: &[Value]) -> Vec<Service> {
    services
        .iter()
        .filter_map(|s| match service::parse(s) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::debug!(%e, "stored Service left out of the snapshot");
                None
            }
        })
        .collect()
}

/// The stored Services (parsed) and, as served, the pods some Service selects, read from the
/// replica under short locks. Only selected pods are merged with their status (`pod_view`): a
/// burst of pods no Service selects costs the proxy and DNS roles nothing beyond reading them.
///
/// Only the pods of namespaces where some Service has a selector are decoded at all: every
/// node's proxy and DNS decoded every pod of the cluster at each rebuild, and during a burst of
/// 300 pods that no Service selects that was 8 % of the machine.
fn read(shared: &Shared) -> (Vec<Service>, Vec<Value>) {
    let (services, pods) = shared.read(|doc| {
        let services: Vec<Value> = doc
            .list_objects(SERVICES, None)
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        let services = parse_all(&services);
        let pods: Vec<Value> = selecting_namespaces(&services)
            .iter()
            .flat_map(|ns| doc.list_objects(PODS, Some(ns)))
            .map(|(_, v)| v)
            .collect();
        (services, pods)
    });
    let selected: Vec<&Value> = pods
        .iter()
        .filter(|p| services.iter().any(|s| service::selects(s, p)))
        .collect();
    if selected.is_empty() {
        return (services, Vec::new());
    }
    let view = workload_view(shared);
    (
        services,
        selected.into_iter().map(|p| pod_view(p, &view)).collect(),
    )
}

/// The namespaces where some Service has a selector: no other pod can be an endpoint.
fn selecting_namespaces(services: &[Service]) -> BTreeSet<String> {
    services
        .iter()
        .filter(|s| s.selector.is_some())
        .map(|s| s.namespace.clone())
        .collect()
}

/// This node's current Services and endpoints.
pub fn snapshot(shared: &Shared) -> ServicesSnapshot {
    let (services, pods) = read(shared);
    ServicesSnapshot::build(&services, &pods).0
}

/// The pause after a round of a role that rebuilds from the snapshot (proxy, DNS) before it
/// follows the next change: at least `floor`, at most `ceiling`, and otherwise three times what
/// the round took, so a role whose rounds grow expensive (hundreds of pods behind Services
/// changing during a burst) keeps under a quarter of a core and does not take the CPU the
/// kubelet's starts and the membership probes need.
pub fn pause_after(took: Duration, floor: Duration, ceiling: Duration) -> Duration {
    (took * 3).clamp(floor, ceiling)
}

/// The allocation conflicts in this node's replica (two Services holding one ClusterIP or
/// NodePort after a merge), with their deterministic winners.
pub fn cluster_ip_conflicts(shared: &Shared) -> Vec<Conflict> {
    let services: Vec<Service> = shared
        .read(|d| d.list_objects(SERVICES, None))
        .iter()
        .filter_map(|(_, s)| service::parse(s).ok())
        .collect();
    service::resolve_conflicts(&services).1
}

/// At most one repair round this often, however fast the document changes.
const MIN_INTERVAL: Duration = Duration::from_millis(500);
/// A round at least this often, even without changes.
const TICK: Duration = Duration::from_secs(10);

/// One repair round, on the leader only: re-plans under the write lock (so a fix merged in
/// between is never overwritten), writes the rewritten Services, and records a Warning event
/// on each.
fn repair_round(shared: &Shared) {
    if shared.view().leader.as_deref() != Some(shared.node_name.as_str()) {
        return;
    }
    let Some(cidr) = shared
        .read(|d| d.meta())
        .ok()
        .flatten()
        .and_then(|m| m.service_cidr())
    else {
        return;
    };
    if cluster_ip_conflicts(shared).is_empty() {
        return;
    }
    let version = chrono::Utc::now().timestamp_micros().max(0).to_string();
    let written = shared.write(|d| {
        let objects: Vec<Value> = d
            .list_objects(SERVICES, None)
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        let repairs = service::repairs(&objects, cidr, &version);
        for r in &repairs {
            d.put_object(SERVICES, Some(&r.namespace), &r.name, &r.object)?;
        }
        Ok(repairs)
    });
    match written {
        Ok(repairs) => {
            for r in repairs {
                tracing::warn!(namespace = %r.namespace, name = %r.name, message = %r.message, "Service re-allocated");
                let involved = crate::model::workload::InvolvedObject {
                    api_version: "v1".into(),
                    kind: "Service".into(),
                    namespace: r.namespace.clone(),
                    name: r.name.clone(),
                    uid: r.uid.clone(),
                };
                shared.record_event(
                    &involved,
                    EventType::Warning,
                    EventReason::AllocationConflict,
                    &r.message,
                    "shoal-services",
                );
            }
        }
        Err(e) => tracing::error!(%e, "re-allocating conflicting Services failed"),
    }
}

/// The repair task: a round after document changes (at most every [`MIN_INTERVAL`]) and
/// every [`TICK`], until `stop` resolves.
pub async fn run(shared: Arc<Shared>, stop: impl std::future::Future<Output = ()>) {
    let mut changes = shared.subscribe();
    tokio::pin!(stop);
    loop {
        repair_round(&shared);
        tokio::select! {
            biased;
            _ = &mut stop => return,
            _ = changes.changed() => {}
            _ = tokio::time::sleep(TICK) => {}
        }
        tokio::select! {
            biased;
            _ = &mut stop => return,
            _ = tokio::time::sleep(MIN_INTERVAL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn build_settles_conflicts_and_computes_endpoints() {
        let svc = |name: &str, created: &str, ip: &str| {
            json!({"metadata": {"namespace": "default", "name": name, "uid": name,
                                "creationTimestamp": created},
                   "spec": {"clusterIP": ip, "selector": {"app": name},
                            "ports": [{"port": 80, "targetPort": 8080}]}})
        };
        let services = [
            svc("old", "2026-01-01T00:00:00Z", "10.96.0.9"),
            svc("new", "2026-01-02T00:00:00Z", "10.96.0.9"),
            svc("web", "2026-01-02T00:00:00Z", "10.96.0.10"),
        ];
        let pods = [json!({
            "metadata": {"namespace": "default", "name": "p", "uid": "pu",
                         "labels": {"app": "web"}},
            "spec": {"nodeName": "n2"},
            "status": {"phase": "Running", "podIP": "10.244.1.4",
                       "conditions": [{"type": "Ready", "status": "True"}]},
        })];
        let (snap, conflicts) = ServicesSnapshot::build(&parse_all(&services), &pods);
        let names: Vec<&str> = snap.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["old", "web"]);
        assert_eq!(conflicts.len(), 1);
        assert_eq!(conflicts[0].loser.1, "new");
        let web = &snap.endpoints[&("default".to_string(), "web".to_string())];
        assert_eq!(web.len(), 1);
        assert_eq!(web[0].ports[0].port, 8080);
        assert!(snap.endpoints[&("default".to_string(), "old".to_string())].is_empty());
    }

    #[test]
    fn only_namespaces_with_a_selecting_service_have_pods_worth_reading() {
        let services = parse_all(&[
            json!({"metadata": {"namespace": "web", "name": "a", "uid": "a"},
                   "spec": {"clusterIP": "10.96.0.9", "selector": {"app": "a"},
                            "ports": [{"port": 80}]}}),
            json!({"metadata": {"namespace": "ext", "name": "b", "uid": "b"},
                   "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}}),
        ]);
        assert_eq!(services.len(), 2);
        assert_eq!(
            selecting_namespaces(&services),
            BTreeSet::from(["web".to_string()]),
            "a Service without a selector selects no pod"
        );
        assert!(selecting_namespaces(&[]).is_empty());
    }

    #[test]
    fn rounds_that_grow_expensive_are_paced_within_bounds() {
        let ms = Duration::from_millis;
        assert_eq!(pause_after(ms(1), ms(5), ms(500)), ms(5));
        assert_eq!(pause_after(ms(40), ms(5), ms(500)), ms(120));
        assert_eq!(pause_after(ms(900), ms(5), ms(500)), ms(500));
    }
}
