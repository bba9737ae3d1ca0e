//! The agent's side of its metrics: the scrape-time inputs read from the shared state
//! (membership view, document sizes, pods waiting for a placement), and the optional plain-HTTP
//! listener (`--metrics-addr`) that serves `GET /metrics` without TLS or a token, for a
//! Prometheus on the host or a trusted network. The API serves the same text at `/metrics`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{header, HeaderMap};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::{self, ScrapeInputs};
use crate::model::MemberState;
use crate::state::Shared;

/// Reads what the scrape-time gauges show.
pub fn scrape_inputs(shared: &Shared) -> ScrapeInputs {
    let view = shared.view();
    let mut members: BTreeMap<MemberState, u64> = BTreeMap::new();
    for m in &view.members {
        *members.entry(m.state).or_default() += 1;
    }
    let alive: BTreeSet<&str> = view
        .members
        .iter()
        .filter(|m| m.state == MemberState::Alive)
        .map(|m| m.name.as_str())
        .chain(std::iter::once(shared.node_name.as_str()))
        .collect();
    let (cluster_doc_keys, pending_pods) = shared.read(|doc| {
        let bindings: BTreeMap<(String, String), crate::model::workload::Binding> =
            doc.bindings().into_iter().collect();
        let pending = doc
            .list_objects("pods", None)
            .into_iter()
            // A pod with `spec.nodeName` is bound by its spec, not by the scheduler.
            .filter(|(_, pod)| pod["spec"]["nodeName"].as_str().is_none_or(str::is_empty))
            .filter(|(path, pod)| {
                let key = (
                    path.namespace.clone().unwrap_or_default(),
                    path.name.clone(),
                );
                let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
                !bindings
                    .get(&key)
                    .is_some_and(|b| b.pod_uid == uid && alive.contains(b.node.as_str()))
            })
            .count();
        (doc.len() as u64, pending as u64)
    });
    let (status_docs, status_doc_keys) = shared.read_status(|docs| {
        (
            docs.len() as u64,
            docs.values().map(|d| d.len() as u64).sum(),
        )
    });
    ScrapeInputs {
        members,
        epoch: view.epoch,
        leader: view.leader.as_deref() == Some(shared.node_name.as_str()),
        cluster_doc_bytes: shared.saved_bytes(),
        cluster_doc_keys,
        status_docs,
        status_doc_keys,
        pending_pods,
    }
}

/// Replication with each peer for `/shoal/v1/status`: documents differing at the last
/// digest exchange, and for how long they have differed.
pub fn replication(shared: &Shared) -> BTreeMap<String, crate::api::PeerReplication> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let transfers = shared.metrics.transfers();
    let mut out: BTreeMap<String, crate::api::PeerReplication> = shared
        .metrics
        .peer_syncs()
        .into_iter()
        .map(|(peer, s)| {
            let lag_ms = s.in_sync_at.map(|at| {
                if s.differing == 0 {
                    0
                } else {
                    ((now - at).max(0.0) * 1000.0) as u64
                }
            });
            let r = crate::api::PeerReplication {
                differing_documents: s.differing,
                lag_ms,
                transfer: None,
            };
            (peer, r)
        })
        .collect();
    for (peer, t) in transfers {
        out.entry(peer).or_default().transfer = Some(crate::api::StateTransfer {
            direction: if t.sending { "sending" } else { "receiving" }.into(),
            bytes_done: t.done,
            bytes_total: t.total,
        });
    }
    out
}

/// The exposition for a scraper sending `accept`, with its content type.
pub fn scrape(shared: &Shared, accept: Option<&str>) -> (&'static str, String) {
    shared.metrics.refresh(&scrape_inputs(shared));
    if metrics::wants_openmetrics(accept) {
        (metrics::OPENMETRICS_TEXT, shared.metrics.encode(true))
    } else {
        (metrics::PROMETHEUS_TEXT, shared.metrics.encode(false))
    }
}

/// Serves `GET /metrics` in plain HTTP on `listener` until `stop` resolves.
pub async fn serve_plain(
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let app = axum::Router::new().route(
        "/metrics",
        get(move |headers: HeaderMap| {
            let shared = shared.clone();
            async move {
                let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
                let (content_type, body) = scrape(&shared, accept);
                ([(header::CONTENT_TYPE, content_type)], body).into_response()
            }
        }),
    );
    tracing::info!(addr = ?listener.local_addr().ok(), "plain metrics listener");
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!(%e, "the metrics listener failed; /metrics stays served by the API");
    }
}

/// Binds `addr` for the metrics listener; a clear error names the flag.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, super::AgentError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| super::AgentError::Config(format!("binding --metrics-addr {addr}: {e}")))
}
