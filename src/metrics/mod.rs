//! Prometheus metrics of one agent: the registry and the handle ([`Metrics`]) the shells update
//! with one-line calls, the values read at scrape time ([`ScrapeInputs`]), and the two text
//! encodings (`encode`: OpenMetrics 1.0 when the scraper asks for it, else Prometheus' text
//! format 0.0.4, the one `promtool check metrics` reads). Names and units follow Prometheus'
//! conventions: `shoal_` prefix, base units (`_seconds`, `_bytes`), `_total` on counters.
//! The catalogue with what each metric means is in `docs/operations.md`.
//!
//! **Architecture Invariant:** every label value comes from a small fixed set (verbs, resource
//! kinds of the API table, status codes, member names of the cluster): nothing a client sends
//! becomes a label as it is, so a scrape stays bounded.

pub mod process;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// Content type of the Prometheus text format 0.0.4.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Content type of OpenMetrics 1.0 text.
pub const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Most probes whose send time is remembered for the round-trip histogram.
const MAX_PROBES_IN_FLIGHT: usize = 256;
/// Most peers with replication gauges (one per member ever admitted).
const MAX_PEERS: usize = 4096;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    pub peer: String,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Direction {
    Sent,
    Received,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::Sent => "sent",
            Direction::Received => "received",
        }
    }
}

/// The replication path a byte travelled: the push of fresh changes, anti-entropy, or a
/// chunked snapshot transfer.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum SyncPath {
    Push,
    Sync,
    Snapshot,
}

impl SyncPath {
    fn as_str(self) -> &'static str {
        match self {
            SyncPath::Push => "push",
            SyncPath::Sync => "sync",
            SyncPath::Snapshot => "snapshot",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyncLabels {
    pub direction: &'static str,
    pub path: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DocLabel {
    pub doc: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub verb: &'static str,
    pub resource: String,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    pub verb: &'static str,
    pub resource: String,
}

/// Where the bytes of an image pull came from.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum PullSource {
    Registry,
    Peer,
    Seed,
}

impl PullSource {
    fn as_str(self) -> &'static str {
        match self {
            PullSource::Registry => "registry",
            PullSource::Peer => "peer",
            PullSource::Seed => "seed",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: &'static str,
}

/// How the node's DNS server answered a query.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum DnsAnswer {
    /// A name with records of the asked type.
    Answer,
    /// A cluster name without records of the asked type.
    NoData,
    /// No such name.
    NxDomain,
    /// Forwarded upstream (names outside the cluster domain).
    Forwarded,
    /// Malformed, refused, or a server failure.
    Error,
}

impl DnsAnswer {
    fn as_str(self) -> &'static str {
        match self {
            DnsAnswer::Answer => "answer",
            DnsAnswer::NoData => "nodata",
            DnsAnswer::NxDomain => "nxdomain",
            DnsAnswer::Forwarded => "forwarded",
            DnsAnswer::Error => "error",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AnswerLabel {
    pub answer: &'static str,
}

type GaugeF64 = Gauge<f64, AtomicU64>;

/// What the agent reads from its state at scrape time (gauges of the current state, rather
/// than updated on every change).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScrapeInputs {
    /// Members of this agent's view by state.
    pub members: BTreeMap<crate::model::MemberState, u64>,
    pub epoch: u64,
    pub leader: bool,
    /// Size of the cluster document as last saved (its whole history).
    pub cluster_doc_bytes: u64,
    pub cluster_doc_keys: u64,
    pub status_docs: u64,
    pub status_doc_keys: u64,
    /// Pods without a binding to a live node (waiting for a placement).
    pub pending_pods: u64,
}

/// One peer's replication state as the last digest exchange with it showed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PeerSync {
    /// Documents whose heads differed from the peer's.
    pub differing: u64,
    /// When every document last agreed with the peer's (unix seconds).
    pub in_sync_at: Option<f64>,
}

/// A state transfer (chunked snapshot) in progress with one peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transfer {
    /// True when this node sends, false when it receives.
    pub sending: bool,
    pub done: u64,
    pub total: u64,
}

/// The agent's metrics: cheap to update from any thread (atomics), encoded on scrape.
pub struct Metrics {
    registry: Registry,
    members: Family<StateLabel, Gauge>,
    epoch: Gauge,
    leader: Gauge,
    pub probe_rtt: Histogram,
    pub suspicions: Counter,
    pub deaths: Counter,
    peer_differing: Family<PeerLabel, Gauge>,
    peer_in_sync: Family<PeerLabel, GaugeF64>,
    sync_bytes: Family<SyncLabels, Counter>,
    doc_bytes: Family<DocLabel, Gauge>,
    doc_keys: Family<DocLabel, Gauge>,
    status_docs: Gauge,
    api_requests: Family<RequestLabels, Counter>,
    api_latency: Family<LatencyLabels, Histogram>,
    pub watches_open: Gauge,
    pub placements: Counter,
    pending_pods: Gauge,
    pub controller_rounds: Counter,
    pub controller_round_duration: Histogram,
    pub pod_start: Histogram,
    pub container_restarts: Counter,
    image_pull_bytes: Family<SourceLabel, Counter>,
    pub proxy_sync: Histogram,
    dns_queries: Family<AnswerLabel, Counter>,
    probes: Mutex<BTreeMap<u64, Instant>>,
    peers: Mutex<BTreeMap<String, PeerSync>>,
    transfers: Mutex<BTreeMap<String, Transfer>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn histogram(start: f64, factor: f64, count: u16) -> Histogram {
    Histogram::new(exponential_buckets(start, factor, count))
}

impl Metrics {
    pub fn new() -> Self {
        let api_latency: Family<LatencyLabels, Histogram> = Family::new_with_constructor(|| {
            Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ])
        });
        let mut m = Metrics {
            registry: Registry::default(),
            members: Family::default(),
            epoch: Gauge::default(),
            leader: Gauge::default(),
            probe_rtt: histogram(0.0005, 2.0, 14),
            suspicions: Counter::default(),
            deaths: Counter::default(),
            peer_differing: Family::default(),
            peer_in_sync: Family::default(),
            sync_bytes: Family::default(),
            doc_bytes: Family::default(),
            doc_keys: Family::default(),
            status_docs: Gauge::default(),
            api_requests: Family::default(),
            api_latency,
            watches_open: Gauge::default(),
            placements: Counter::default(),
            pending_pods: Gauge::default(),
            controller_rounds: Counter::default(),
            controller_round_duration: histogram(0.0005, 2.0, 14),
            pod_start: Histogram::new([
                0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 300.0,
            ]),
            container_restarts: Counter::default(),
            image_pull_bytes: Family::default(),
            proxy_sync: histogram(0.001, 2.0, 12),
            dns_queries: Family::default(),
            probes: Mutex::new(BTreeMap::new()),
            transfers: Mutex::new(BTreeMap::new()),
            peers: Mutex::new(BTreeMap::new()),
        };
        m.register();
        m
    }

    fn register(&mut self) {
        let r = self.registry.sub_registry_with_prefix("shoal");
        r.register(
            "membership_members",
            "Members of this agent's membership view, by state",
            self.members.clone(),
        );
        r.register(
            "membership_epoch",
            "This agent's epoch counter (bumps whenever its live set changes)",
            self.epoch.clone(),
        );
        r.register(
            "scheduler_leader",
            "1 when this agent is the scheduler leader of its view, else 0",
            self.leader.clone(),
        );
        r.register_with_unit(
            "membership_probe_rtt",
            "Round trip of direct membership probes (ping to ack)",
            Unit::Seconds,
            self.probe_rtt.clone(),
        );
        r.register(
            "membership_suspicions",
            "Members this agent's view marked suspect",
            self.suspicions.clone(),
        );
        r.register(
            "membership_deaths",
            "Members this agent's view declared dead",
            self.deaths.clone(),
        );
        r.register(
            "replication_peer_differing_documents",
            "Documents whose heads differed from the peer's at the last digest exchange",
            self.peer_differing.clone(),
        );
        r.register_with_unit(
            "replication_peer_in_sync_timestamp",
            "Unix time when every document last agreed with the peer's (lag: time() minus this)",
            Unit::Seconds,
            self.peer_in_sync.clone(),
        );
        r.register_with_unit(
            "replication",
            "Replication payload (automerge changes and sync messages) by direction and path",
            Unit::Bytes,
            self.sync_bytes.clone(),
        );
        r.register_with_unit(
            "document_saved",
            "Size of the document as last saved to disk, history included",
            Unit::Bytes,
            self.doc_bytes.clone(),
        );
        r.register(
            "document_keys",
            "Live keys of the cluster document, and of all status documents together",
            self.doc_keys.clone(),
        );
        r.register(
            "status_documents",
            "Status documents held (one per node seen)",
            self.status_docs.clone(),
        );
        r.register(
            "api_requests",
            "API requests by verb, resource and HTTP status code",
            self.api_requests.clone(),
        );
        r.register_with_unit(
            "api_request_duration",
            "API request latency to the response head, watches and streams excluded",
            Unit::Seconds,
            self.api_latency.clone(),
        );
        r.register(
            "api_watches_open",
            "Watches open on this agent's API",
            self.watches_open.clone(),
        );
        r.register(
            "scheduler_placements",
            "Pods bound to a node by this agent while it led",
            self.placements.clone(),
        );
        r.register(
            "scheduler_pending_pods",
            "Pods without a binding to a live node in this agent's view",
            self.pending_pods.clone(),
        );
        r.register(
            "controller_rounds",
            "Reconcile rounds run by this agent while it led",
            self.controller_rounds.clone(),
        );
        r.register_with_unit(
            "controller_round_duration",
            "Time of one reconcile round that planned something (plan and apply)",
            Unit::Seconds,
            self.controller_round_duration.clone(),
        );
        r.register_with_unit(
            "pod_start_duration",
            "From a pod's creation to the first start of each of its containers on this node",
            Unit::Seconds,
            self.pod_start.clone(),
        );
        r.register(
            "container_restarts",
            "Container restarts on this node (attempts after the first)",
            self.container_restarts.clone(),
        );
        r.register_with_unit(
            "image_pull",
            "Image bytes downloaded by this node, by source (registry, peer, seed)",
            Unit::Bytes,
            self.image_pull_bytes.clone(),
        );
        r.register_with_unit(
            "proxy_sync_duration",
            "Time to program a change of the Service rules into nftables",
            Unit::Seconds,
            self.proxy_sync.clone(),
        );
        r.register(
            "dns_queries",
            "Queries the node's DNS server answered, by kind of answer",
            self.dns_queries.clone(),
        );
        self.registry
            .register_collector(Box::new(process::ProcessCollector));
    }

    // ---- one-line updates for the shells ----

    /// A direct probe (ping `seq`) was sent.
    pub fn probe_sent(&self, seq: u64) {
        let mut probes = lock(&self.probes);
        if probes.len() >= MAX_PROBES_IN_FLIGHT {
            probes.pop_first();
        }
        probes.insert(seq, Instant::now());
    }

    /// An ack for `seq` arrived: its round trip goes to the histogram.
    pub fn probe_acked(&self, seq: u64) {
        if let Some(sent) = lock(&self.probes).remove(&seq) {
            self.probe_rtt.observe(sent.elapsed().as_secs_f64());
        }
    }

    /// A digest exchange with `peer` found `differing` documents.
    pub fn peer_digest(&self, peer: &str, differing: usize) {
        let mut peers = lock(&self.peers);
        if !peers.contains_key(peer) && peers.len() >= MAX_PEERS {
            return;
        }
        let entry = peers.entry(peer.to_string()).or_insert(PeerSync {
            differing: 0,
            in_sync_at: None,
        });
        entry.differing = differing as u64;
        if differing == 0 {
            entry.in_sync_at = Some(unix_now());
        }
        let label = PeerLabel {
            peer: peer.to_string(),
        };
        self.peer_differing
            .get_or_create(&label)
            .set(entry.differing as i64);
        if let Some(at) = entry.in_sync_at {
            self.peer_in_sync.get_or_create(&label).set(at);
        }
    }

    /// Each peer's replication state (for `shoal status`).
    pub fn peer_syncs(&self) -> BTreeMap<String, PeerSync> {
        lock(&self.peers).clone()
    }

    /// Replaces the state transfers in progress (peer name to transfer), as the network actor
    /// sees them.
    pub fn set_transfers(&self, transfers: BTreeMap<String, Transfer>) {
        *lock(&self.transfers) = transfers;
    }

    pub fn transfers(&self) -> BTreeMap<String, Transfer> {
        lock(&self.transfers).clone()
    }

    pub fn sync_bytes(&self, direction: Direction, path: SyncPath, bytes: usize) {
        self.sync_bytes
            .get_or_create(&SyncLabels {
                direction: direction.as_str(),
                path: path.as_str(),
            })
            .inc_by(bytes as u64);
    }

    /// One API request answered (the response head was sent); `latency` is `None` for
    /// watches and streams.
    pub fn api_request(
        &self,
        verb: &'static str,
        resource: &str,
        code: u16,
        latency: Option<Duration>,
    ) {
        self.api_requests
            .get_or_create(&RequestLabels {
                verb,
                resource: resource.to_string(),
                code,
            })
            .inc();
        if let Some(latency) = latency {
            self.api_latency
                .get_or_create(&LatencyLabels {
                    verb,
                    resource: resource.to_string(),
                })
                .observe(latency.as_secs_f64());
        }
    }

    /// A container started (attempt `restart`, 1 for the first) of a pod created at
    /// `created` (unix seconds): a restart, or the pod's start latency.
    pub fn container_started(&self, restart: u32, created: Option<i64>) {
        if restart > 1 {
            self.container_restarts.inc();
        } else if let Some(created) = created {
            let latency = unix_now() - created as f64;
            if latency >= 0.0 {
                self.pod_start.observe(latency);
            }
        }
    }

    /// A reconcile round applied a plan with `binds` placements in `took`.
    pub fn reconciled(&self, binds: usize, took: Duration) {
        self.placements.inc_by(binds as u64);
        self.controller_round_duration.observe(took.as_secs_f64());
    }

    pub fn image_pull_bytes(&self, source: PullSource, bytes: u64) {
        self.image_pull_bytes
            .get_or_create(&SourceLabel {
                source: source.as_str(),
            })
            .inc_by(bytes);
    }

    pub fn dns_query(&self, answer: DnsAnswer) {
        self.dns_queries
            .get_or_create(&AnswerLabel {
                answer: answer.as_str(),
            })
            .inc();
    }

    /// A watch opened; it counts as open until the returned guard drops.
    pub fn watch_opened(self: &std::sync::Arc<Self>) -> WatchGuard {
        self.watches_open.inc();
        WatchGuard(self.clone())
    }

    // ---- scrape ----

    /// Sets the gauges read at scrape time.
    pub fn refresh(&self, inputs: &ScrapeInputs) {
        for state in crate::model::MemberState::ALL {
            let n = inputs.members.get(&state).copied().unwrap_or(0);
            self.members
                .get_or_create(&StateLabel {
                    state: state.as_str(),
                })
                .set(n as i64);
        }
        self.epoch.set(inputs.epoch as i64);
        self.leader.set(i64::from(inputs.leader));
        self.doc_bytes
            .get_or_create(&DocLabel { doc: "cluster" })
            .set(inputs.cluster_doc_bytes as i64);
        self.doc_keys
            .get_or_create(&DocLabel { doc: "cluster" })
            .set(inputs.cluster_doc_keys as i64);
        self.doc_keys
            .get_or_create(&DocLabel { doc: "status" })
            .set(inputs.status_doc_keys as i64);
        self.status_docs.set(inputs.status_docs as i64);
        self.pending_pods.set(inputs.pending_pods as i64);
    }

    /// The exposition: OpenMetrics when `openmetrics`, else Prometheus text 0.0.4.
    pub fn encode(&self, openmetrics: bool) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let encoded = if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &self.registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        };
        if let Err(e) = encoded {
            tracing::warn!(%e, "encoding the metrics failed");
        }
        out
    }
}

/// Whether a scraper's `Accept` header asks for OpenMetrics (Prometheus' own scraper does).
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("application/openmetrics-text"))
}

/// Keeps a watch counted as open; decrements the gauge when dropped.
pub struct WatchGuard(std::sync::Arc<Metrics>);

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.watches_open.dec();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format_has_conventional_names() {
        let m = Metrics::new();
        m.api_request("get", "pods", 200, Some(Duration::from_millis(3)));
        m.sync_bytes(Direction::Sent, SyncPath::Push, 150);
        m.image_pull_bytes(PullSource::Peer, 1024);
        m.dns_query(DnsAnswer::NxDomain);
        m.peer_digest("n2", 0);
        m.refresh(&ScrapeInputs {
            members: [(crate::model::MemberState::Alive, 3)].into(),
            pending_pods: 2,
            ..Default::default()
        });
        let text = m.encode(false);
        for line in [
            "shoal_api_requests_total{verb=\"get\",resource=\"pods\",code=\"200\"} 1",
            "shoal_replication_bytes_total{direction=\"sent\",path=\"push\"} 150",
            "shoal_image_pull_bytes_total{source=\"peer\"} 1024",
            "shoal_dns_queries_total{answer=\"nxdomain\"} 1",
            "shoal_membership_members{state=\"alive\"} 3",
            "shoal_scheduler_pending_pods 2",
            "shoal_replication_peer_differing_documents{peer=\"n2\"} 0",
            "# TYPE shoal_api_request_duration_seconds histogram",
            "# TYPE shoal_membership_suspicions_total counter",
            "# TYPE process_cpu_seconds_total counter",
            "# TYPE process_resident_memory_bytes gauge",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("# EOF"));
        let open = m.encode(true);
        assert!(open.ends_with("# EOF\n"));
        assert!(open.contains("# TYPE shoal_membership_suspicions counter"));
    }

    #[test]
    fn probes_and_watches() {
        let m = std::sync::Arc::new(Metrics::new());
        m.probe_acked(7); // never sent: ignored
        let probes = |m: &Metrics| {
            m.encode(false)
                .lines()
                .find_map(|l| l.strip_prefix("shoal_membership_probe_rtt_seconds_count "))
                .map(str::to_string)
        };
        assert_eq!(probes(&m).as_deref(), Some("0"));
        m.probe_sent(7);
        m.probe_acked(7);
        m.probe_acked(7); // a second ack (relayed) counts once
        assert_eq!(probes(&m).as_deref(), Some("1"));
        for seq in 0..(MAX_PROBES_IN_FLIGHT as u64 + 10) {
            m.probe_sent(seq);
        }
        assert_eq!(lock(&m.probes).len(), MAX_PROBES_IN_FLIGHT);
        let guard = m.watch_opened();
        assert_eq!(m.watches_open.get(), 1);
        drop(guard);
        assert_eq!(m.watches_open.get(), 0);
    }

    #[test]
    fn peer_lag_keeps_the_last_agreement() {
        let m = Metrics::new();
        m.peer_digest("n2", 0);
        let first = m.peer_syncs()["n2"].in_sync_at;
        assert!(first.is_some());
        m.peer_digest("n2", 3);
        let now = m.peer_syncs()["n2"];
        assert_eq!(now.differing, 3);
        assert_eq!(now.in_sync_at, first);
    }

    #[test]
    fn accept_negotiation() {
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
        )));
        assert!(!wants_openmetrics(Some("text/plain")));
        assert!(!wants_openmetrics(None));
    }
}
