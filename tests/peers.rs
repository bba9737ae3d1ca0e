//! Peer-to-peer blob distribution between pullers, over real HTTP and a real registry
//! (Debian's `docker-registry`, images pushed with `skopeo`): a node starts an image from a
//! peer when the registry is down, a hostile peer's bytes are refused and fetched again from
//! the registry, and when several nodes want a new image at once the blob's seed downloads it
//! once and streams it to all of them.
//!
//! Each "node" is a `Puller` over its own store; its blobs are served by a small axum server
//! with the agent's routes (`GET /shoal/v1/blobs/sha256:<hex>`, `POST .../fetch`) calling
//! `Puller::serve_blob` and `Puller::fetch_through`, exactly as the agent's API does.
//!
//! Needs root (layers are unpacked with their owners) and docker-registry, skopeo, curl.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use shoal::runtime::image::pull::{
    FetchThrough, Peer, PeerClient, Peers, PullConfig, PullError, PullRequest, Puller,
};
use shoal::runtime::image::ImageStore;

use support::registry::layout::{build_layout, random_layers, BuiltImage, ConfigSpec};
use support::registry::{Registry, RegistryOptions};

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (layers are unpacked with their owners and whiteouts)"
    );
}

/// What a test node knows of the others: fixed holders, seed and tags.
#[derive(Default)]
struct FixedPeers {
    holders: Mutex<Vec<Peer>>,
    seed: Mutex<Option<Peer>>,
    tags: Mutex<Vec<(Peer, String)>>,
}

impl Peers for FixedPeers {
    fn holders(&self, _hex: &str) -> Vec<Peer> {
        self.holders.lock().unwrap().clone()
    }
    fn seed(&self, _hex: &str) -> Option<Peer> {
        self.seed.lock().unwrap().clone()
    }
    fn tag_holders(&self, _named: &str) -> Vec<(Peer, String)> {
        self.tags.lock().unwrap().clone()
    }
    fn client(&self) -> Option<PeerClient> {
        shoal::install_crypto_provider();
        Some(PeerClient {
            client: reqwest::Client::new(),
            token: "test-token".into(),
        })
    }
}

/// The agent's blob routes over one puller.
async fn serve(puller: Arc<Puller>) -> SocketAddr {
    async fn get_blob(State(p): State<Arc<Puller>>, UrlPath(digest): UrlPath<String>) -> Response {
        let hex = digest.trim_start_matches("sha256:").to_string();
        match p.serve_blob(&hex) {
            Some(b) => axum::body::Body::from_stream(b.body).into_response(),
            None => StatusCode::NOT_FOUND.into_response(),
        }
    }
    async fn fetch(
        State(p): State<Arc<Puller>>,
        UrlPath(digest): UrlPath<String>,
        Json(req): Json<FetchThrough>,
    ) -> Response {
        let hex = digest.trim_start_matches("sha256:").to_string();
        match p.fetch_through(&hex, &req).await {
            Ok(b) => axum::body::Body::from_stream(b.body).into_response(),
            Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
        }
    }
    let app = Router::new()
        .route("/shoal/v1/blobs/{digest}", get(get_blob))
        .route("/shoal/v1/blobs/{digest}/fetch", post(fetch))
        .with_state(puller);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// A server that answers every blob request with garbage of a plausible length.
async fn serve_garbage() -> SocketAddr {
    async fn garbage() -> Response {
        vec![0x5au8; 1 << 20].into_response()
    }
    let app = Router::new()
        .route("/shoal/v1/blobs/{digest}", get(garbage))
        .route("/shoal/v1/blobs/{digest}/fetch", post(garbage));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn peer(node: &str, addr: SocketAddr) -> Peer {
    Peer {
        node: node.into(),
        url: format!("http://{addr}"),
    }
}

fn node(dir: &Path, registry: &Registry, peers: Arc<FixedPeers>) -> Arc<Puller> {
    Puller::new(
        ImageStore::open(dir).expect("open a store"),
        PullConfig {
            insecure_registries: vec![registry.host()],
            ..PullConfig::default()
        },
        peers,
    )
}

fn request(reference: &str) -> PullRequest {
    PullRequest {
        reference: reference.into(),
        credentials: None,
    }
}

/// Pushes a fresh ~`bytes` image of `layers` layers; returns its reference, manifest digest and
/// what was built.
fn push_image(
    reg: &Registry,
    dir: &Path,
    repo_tag: &str,
    bytes: usize,
    layers: usize,
    seed: u64,
) -> (String, String, BuiltImage) {
    let layout = dir.join(format!("oci-{seed}"));
    let built = build_layout(
        &layout,
        "x:1",
        &random_layers(bytes, layers, seed),
        &ConfigSpec::default(),
    );
    let digest = reg.push_oci_layout(&layout, "x:1", repo_tag, None, None);
    (reg.reference(repo_tag), digest, built)
}

fn gets(reg: &Registry, built: &BuiltImage) -> BTreeMap<String, usize> {
    built
        .blob_digests()
        .into_iter()
        .map(|d| {
            let n = reg.blob_gets(&d);
            (d, n)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_starts_the_image_from_a_peer_when_the_registry_is_down() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let mut reg = Registry::start(RegistryOptions::default());
    let (reference, digest, built) = push_image(&reg, t.path(), "p2p/app:1", 6 << 20, 3, 11);

    let a = node(&t.path().join("a"), &reg, Arc::new(FixedPeers::default()));
    a.pull(&request(&reference), None)
        .await
        .expect("a pulls from the registry");
    let a_addr = serve(a.clone()).await;
    let before = gets(&reg, &built);

    reg.stop();
    let peers = Arc::new(FixedPeers::default());
    *peers.holders.lock().unwrap() = vec![peer("a", a_addr)];
    *peers.tags.lock().unwrap() = vec![(peer("a", a_addr), digest.clone())];
    let b = node(&t.path().join("b"), &reg, peers);
    let img = b
        .pull(&request(&reference), None)
        .await
        .expect("b pulls from a with the registry down");
    assert_eq!(img.digest, digest);
    assert_eq!(img.layers.len(), 3);
    for (i, l) in img.layers.iter().enumerate() {
        let a_layer = &a.store().resolve(&reference).unwrap().layers[i];
        assert_eq!(
            l.file_name(),
            a_layer.file_name(),
            "same diff ids on both nodes"
        );
    }
    reg.restart();
    assert_eq!(
        gets(&reg, &built),
        before,
        "b fetched nothing from the registry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_peer_is_refused_and_the_registry_serves_instead() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(RegistryOptions::default());
    let (reference, digest, built) = push_image(&reg, t.path(), "p2p/bad:1", 3 << 20, 2, 12);
    let bad = serve_garbage().await;
    let peers = Arc::new(FixedPeers::default());
    *peers.holders.lock().unwrap() = vec![peer("liar", bad)];
    *peers.seed.lock().unwrap() = Some(peer("liar-seed", bad));
    let b = node(&t.path().join("b"), &reg, peers);
    let img = b
        .pull(&request(&reference), None)
        .await
        .expect("the pull succeeds from the registry after the peers' bad bytes");
    assert_eq!(img.digest, digest);
    for (d, n) in gets(&reg, &built) {
        assert_eq!(n, 1, "{d} fetched once from the registry");
    }
    // Only verified blobs are in the store: every file's sha256 is its name.
    for entry in std::fs::read_dir(t.path().join("b/blobs/sha256")).unwrap() {
        let e = entry.unwrap();
        let bytes = std::fs::read(e.path()).unwrap();
        assert_eq!(
            support::registry::layout::sha256(&bytes),
            format!("sha256:{}", e.file_name().to_string_lossy())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_a_new_image_at_once_get_each_blob_from_the_registry_once() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(RegistryOptions::default());
    let (reference, digest, built) = push_image(&reg, t.path(), "p2p/new:1", 12 << 20, 4, 13);

    // The seed wants nothing itself; it fetches through for the four others.
    let seed = node(
        &t.path().join("seed"),
        &reg,
        Arc::new(FixedPeers::default()),
    );
    let seed_addr = serve(seed.clone()).await;
    let nodes: Vec<Arc<Puller>> = (0..4)
        .map(|i| {
            let peers = Arc::new(FixedPeers::default());
            *peers.seed.lock().unwrap() = Some(peer("seed", seed_addr));
            node(&t.path().join(format!("n{i}")), &reg, peers)
        })
        .collect();
    let req = request(&reference);
    let results = futures::future::join_all(nodes.iter().map(|n| n.pull(&req, None))).await;
    for r in results {
        assert_eq!(r.expect("every node pulls").digest, digest);
    }
    let counts = gets(&reg, &built);
    // The config is small and fetched by each node (no seed for it); the layers once in all.
    for l in &built.layers {
        assert_eq!(
            counts[&l.blob.digest], 1,
            "layer {} served once by the registry: {counts:?}",
            l.blob.digest
        );
    }
    // The seed keeps the blobs it fetched: a later node is served by it as a holder.
    for l in &built.layers {
        let hex = l.blob.digest.trim_start_matches("sha256:");
        assert!(
            seed.store().has_blob(hex),
            "the seed holds {}",
            l.blob.digest
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_seed_falls_back_to_the_registry() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(RegistryOptions::default());
    let (reference, digest, _built) = push_image(&reg, t.path(), "p2p/fallback:1", 2 << 20, 2, 14);
    // A seed whose address refuses connections.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let peers = Arc::new(FixedPeers::default());
    *peers.seed.lock().unwrap() = Some(peer("gone", closed));
    let b = node(&t.path().join("b"), &reg, peers);
    let img = b.pull(&request(&reference), None).await;
    assert_eq!(img.expect("falls back to the registry").digest, digest);
    let err = Puller::new(
        ImageStore::open(&t.path().join("c")).unwrap(),
        PullConfig::default(),
        Arc::new(FixedPeers::default()),
    )
    .pull(&request(&reference), None)
    .await
    .expect_err("a plain-HTTP registry not listed as insecure");
    assert!(matches!(err, PullError::Insecure(_)), "{err:?}");
}
