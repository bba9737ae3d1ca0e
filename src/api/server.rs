//! The TLS accept loop: bounded connections, TLS handshakes with a deadline, HTTP/1.1 and
//! HTTP/2 (ALPN) via hyper-util's auto builder with header limits, and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use super::changelog::ChangeLog;
use super::connections::{self, AddressSlot, Budget, Conn};
use super::objects::ResourceVersions;
use super::status::ApiError;
use super::{router, ApiConfig, ApiState, Backend};

/// A rustls server config from PEM: the certificate chain (leaf first) and its private key,
/// offering `h2` and `http/1.1` by ALPN.
pub fn tls_config(cert_chain_pem: &[u8], key_pem: &[u8]) -> Result<rustls::ServerConfig, ApiError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| ApiError::Tls(format!("reading certificate chain: {e}")))?;
    if certs.is_empty() {
        return Err(ApiError::Tls(
            "no certificate in the certificate chain PEM".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => ApiError::Tls("no private key in the key PEM".into()),
        e => ApiError::Tls(format!("reading private key: {e}")),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ApiError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ApiError::Tls(format!("certificate and key do not form a valid pair: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Serves the API on `listener` until `shutdown` completes, then stops accepting, asks open
/// connections to finish (open watches end) and aborts what is left after the grace period.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    backend: Arc<dyn Backend>,
    config: ApiConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let config = Arc::new(config);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let state = ApiState {
        backend,
        config: config.clone(),
        versions: Arc::new(ResourceVersions::default()),
        log: Arc::new(ChangeLog::random(config.watch_window)),
        shutdown: shutdown_rx.clone(),
        exec_sessions: Arc::new(Semaphore::new(config.max_exec_sessions.max(1))),
    };
    let refresher = tokio::spawn(super::watch::refresh_loop(state.clone()));
    let app = router::router(state);
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let budget = Budget::new(
        config.max_connections_per_address,
        config.max_unauthenticated,
    );
    let mut refused = RefusedLog::default();
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    tracing::info!(addr = ?listener.local_addr().ok(), "api listening");
    loop {
        let permit = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (tcp, peer) = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "api accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(address_slot) = budget.admit(peer.ip()) else {
            refused.note(peer.ip(), config.max_connections_per_address);
            continue;
        };
        while connections.try_join_next().is_some() {}
        connections.spawn(serve_connection(
            tcp,
            peer,
            acceptor.clone(),
            app.clone(),
            config.clone(),
            budget.clone(),
            shutdown_rx.clone(),
            (permit, address_slot),
        ));
    }
    drop(listener);
    let _ = shutdown_tx.send(true);
    let drained = tokio::time::timeout(config.shutdown_grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::debug!(
            left = connections.len(),
            "api shutdown grace expired; aborting connections"
        );
        connections.shutdown().await;
    }
    refresher.abort();
    tracing::info!("api stopped");
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    app: axum::Router,
    config: Arc<ApiConfig>,
    budget: Arc<Budget>,
    mut shutdown: watch::Receiver<bool>,
    _slots: (OwnedSemaphorePermit, AddressSlot),
) {
    // The handshake is unauthenticated work: it takes an unauthenticated slot, kept until
    // the connection's first authenticated request.
    let waited = tokio::time::timeout(
        config.handshake_timeout,
        budget.unauthenticated.clone().acquire_owned(),
    )
    .await;
    let Ok(Ok(unauthenticated)) = waited else {
        tracing::debug!(%peer, "api connection closed: no unauthenticated slot came free");
        return;
    };
    let _ = tcp.set_nodelay(true);
    let stream = match tokio::time::timeout(config.handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "api tls handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "api tls handshake timed out");
            return;
        }
    };
    let conn = Conn::new(unauthenticated);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .max_buf_size(config.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(config.max_streams_per_connection)
        .keep_alive_interval(std::time::Duration::from_secs(30));
    let marked = conn.clone();
    let service = app.map_request(move |mut request: hyper::Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(marked.clone());
        request
    });
    let connection = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service));
    tokio::pin!(connection);
    let expired = loop {
        let until = connections::deadline(
            conn.seen(),
            config.unauthenticated_timeout,
            config.idle_timeout,
        );
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "api connection ended with an error");
                }
                return;
            }
            _ = shutdown.wait_for(|stopping| *stopping) => break None,
            _ = conn.changed.notified() => continue,
            _ = sleep_until(until) => {
                let now = tokio::time::Instant::now().into_std();
                match connections::deadline(
                    conn.seen(),
                    config.unauthenticated_timeout,
                    config.idle_timeout,
                ) {
                    Some((at, why)) if at <= now => break Some(why),
                    _ => continue,
                }
            }
        }
    };
    if let Some(why) = expired {
        tracing::debug!(%peer, ?why, "api connection closed");
    }
    connection.as_mut().graceful_shutdown();
    // An expired connection's requests (a slow unauthenticated one) get a short grace;
    // at shutdown the server's own grace bounds the wait.
    let grace = match expired {
        Some(_) => GRACE_AFTER_EXPIRY,
        None => config.shutdown_grace,
    };
    let _ = tokio::time::timeout(grace, connection.as_mut()).await;
}

/// How long an expired connection may take to finish what it has in flight.
const GRACE_AFTER_EXPIRY: std::time::Duration = std::time::Duration::from_secs(5);

/// Sleeps until `until`, or for ever when there is no deadline (requests in flight).
async fn sleep_until(until: Option<(std::time::Instant, connections::Expiry)>) {
    match until {
        Some((at, _)) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Connections refused for their address's share, logged at most every 30 s per address
/// (a flood is one line, not one per connection).
#[derive(Default)]
struct RefusedLog {
    last: std::collections::HashMap<std::net::IpAddr, std::time::Instant>,
}

impl RefusedLog {
    fn note(&mut self, ip: std::net::IpAddr, share: usize) {
        let now = std::time::Instant::now();
        let every = std::time::Duration::from_secs(30);
        if self.last.len() > 4096 {
            self.last.retain(|_, t| now.duration_since(*t) < every);
        }
        if self
            .last
            .get(&ip)
            .is_some_and(|t| now.duration_since(*t) < every)
        {
            return;
        }
        self.last.insert(ip, now);
        tracing::warn!(address = %ip, share, "api connection refused: this address already holds its share of the API's connections; closed at once (logged once per 30 s per address)");
    }
}
