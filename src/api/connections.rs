//! What one client may hold of the API's connections (issue 16): at most
//! `max_connections_per_address` open connections per source address, at most
//! `max_unauthenticated` connections at a time that have not yet made an authenticated request
//! (each for at most `unauthenticated_timeout`), and an authenticated connection with no request
//! in flight is closed after `idle_timeout`. Without these, 1,024 idle TLS connections from
//! anyone who can reach the port took every slot.
//!
//! The decision is [`deadline`], pure; [`Conn`] is the state a connection's requests update
//! (the auth middleware marks it authenticated and counts requests in flight, until their
//! response bodies end), and `server::serve_connection` sleeps until the deadline.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Response;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// The server's shared budget: open connections per source address, and the slots of
/// connections not yet authenticated.
pub(crate) struct Budget {
    per_address: Mutex<HashMap<IpAddr, usize>>,
    max_per_address: usize,
    pub unauthenticated: Arc<Semaphore>,
}

impl Budget {
    pub fn new(max_per_address: usize, max_unauthenticated: usize) -> Arc<Self> {
        Arc::new(Budget {
            per_address: Mutex::new(HashMap::new()),
            max_per_address: max_per_address.max(1),
            unauthenticated: Arc::new(Semaphore::new(max_unauthenticated.max(1))),
        })
    }

    /// A slot for one more connection from `ip`, or `None` when that address holds its share.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        let mut map = self.per_address.lock().unwrap_or_else(|e| e.into_inner());
        let held = map.entry(ip).or_insert(0);
        if *held >= self.max_per_address {
            return None;
        }
        *held += 1;
        Some(AddressSlot {
            budget: self.clone(),
            ip,
        })
    }

    #[cfg(test)]
    fn held(&self, ip: IpAddr) -> usize {
        let map = self.per_address.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&ip).copied().unwrap_or(0)
    }
}

/// One open connection's share of its address; given back when dropped.
pub(crate) struct AddressSlot {
    budget: Arc<Budget>,
    ip: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut map = self
            .budget
            .per_address
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(held) = map.get_mut(&self.ip) {
            *held -= 1;
            if *held == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Why a connection is closed by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// No authenticated request within `unauthenticated_timeout` of the handshake.
    Unauthenticated,
    /// Authenticated, and nothing in flight for `idle_timeout`.
    Idle,
}

/// What a connection's supervisor knows at one moment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Seen {
    pub opened: Instant,
    pub authenticated: bool,
    pub in_flight: usize,
    /// When the last request's response ended (or the connection opened).
    pub idle_since: Instant,
}

/// When the connection expires, and why; `None` while requests are in flight (a watch, a log
/// stream). The pure rule behind the supervisor.
pub(crate) fn deadline(
    seen: Seen,
    unauthenticated_timeout: Duration,
    idle_timeout: Duration,
) -> Option<(Instant, Expiry)> {
    if !seen.authenticated {
        return Some((
            seen.opened + unauthenticated_timeout,
            Expiry::Unauthenticated,
        ));
    }
    (seen.in_flight == 0).then(|| (seen.idle_since + idle_timeout, Expiry::Idle))
}

/// The state of one connection that its requests update.
pub(crate) struct Conn {
    opened: Instant,
    authenticated: AtomicBool,
    in_flight: AtomicUsize,
    idle_since: Mutex<Instant>,
    /// The connection's unauthenticated slot, given back at its first authenticated request.
    unauthenticated: Mutex<Option<OwnedSemaphorePermit>>,
    /// Wakes the supervisor when any of the above changes.
    pub changed: Notify,
}

impl Conn {
    pub fn new(unauthenticated: OwnedSemaphorePermit) -> Arc<Self> {
        let now = Instant::now();
        Arc::new(Conn {
            opened: now,
            authenticated: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            idle_since: Mutex::new(now),
            unauthenticated: Mutex::new(Some(unauthenticated)),
            changed: Notify::new(),
        })
    }

    pub fn seen(&self) -> Seen {
        Seen {
            opened: self.opened,
            authenticated: self.authenticated.load(Ordering::Acquire),
            in_flight: self.in_flight.load(Ordering::Acquire),
            idle_since: *self.idle_since.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// A request on this connection passed authentication: the connection leaves the
    /// unauthenticated budget, and the request counts as in flight until the returned guard
    /// (kept by its response body) is dropped.
    pub fn begin_request(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        if !self.authenticated.swap(true, Ordering::AcqRel) {
            self.unauthenticated
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
        }
        self.changed.notify_one();
        Busy(self.clone())
    }
}

/// A request in flight on a connection.
pub(crate) struct Busy(Arc<Conn>);

impl Drop for Busy {
    fn drop(&mut self) {
        *self.0.idle_since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_one();
    }
}

/// `response` with `busy` held until its body has been sent (or dropped): a watch or a log
/// stream keeps its connection from being idle.
pub(crate) fn hold_until_sent(response: Response<Body>, busy: Busy) -> Response<Body> {
    response.map(|inner| Body::new(Held { inner, _busy: busy }))
}

struct Held {
    inner: Body,
    _busy: Busy,
}

impl hyper::body::Body for Held {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNAUTH: Duration = Duration::from_secs(10);
    const IDLE: Duration = Duration::from_secs(120);

    fn seen(authenticated: bool, in_flight: usize) -> Seen {
        let t = Instant::now();
        Seen {
            opened: t,
            authenticated,
            in_flight,
            idle_since: t + Duration::from_secs(5),
        }
    }

    #[test]
    fn a_connection_that_never_authenticates_expires_from_its_opening() {
        let s = seen(false, 1);
        assert_eq!(
            deadline(s, UNAUTH, IDLE),
            Some((s.opened + UNAUTH, Expiry::Unauthenticated))
        );
    }

    #[test]
    fn an_authenticated_connection_expires_only_when_idle() {
        assert_eq!(deadline(seen(true, 2), UNAUTH, IDLE), None);
        let s = seen(true, 0);
        assert_eq!(
            deadline(s, UNAUTH, IDLE),
            Some((s.idle_since + IDLE, Expiry::Idle))
        );
    }

    #[test]
    fn an_address_holds_at_most_its_share_and_gets_it_back() {
        let budget = Budget::new(2, 4);
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        let a = budget.admit(ip).unwrap();
        let _b = budget.admit(ip).unwrap();
        assert!(budget.admit(ip).is_none());
        assert!(budget.admit(other).is_some());
        drop(a);
        assert_eq!(budget.held(ip), 1);
        assert!(budget.admit(ip).is_some());
    }

    #[tokio::test]
    async fn the_first_authenticated_request_gives_back_the_unauthenticated_slot() {
        let budget = Budget::new(8, 1);
        let permit = budget.unauthenticated.clone().try_acquire_owned().unwrap();
        let conn = Conn::new(permit);
        assert!(budget.unauthenticated.clone().try_acquire_owned().is_err());
        let busy = conn.begin_request();
        assert!(conn.seen().authenticated);
        assert_eq!(conn.seen().in_flight, 1);
        assert!(budget.unauthenticated.clone().try_acquire_owned().is_ok());
        drop(busy);
        assert_eq!(conn.seen().in_flight, 0);
    }

    #[tokio::test]
    async fn a_response_holds_its_connection_busy_until_its_body_is_gone() {
        let budget = Budget::new(8, 1);
        let conn = Conn::new(budget.unauthenticated.clone().try_acquire_owned().unwrap());
        let response = hold_until_sent(Response::new(Body::from("x")), conn.begin_request());
        assert_eq!(conn.seen().in_flight, 1);
        let bytes = axum::body::to_bytes(response.into_body(), 16)
            .await
            .unwrap();
        assert_eq!(&bytes[..], b"x");
        assert_eq!(conn.seen().in_flight, 0);
    }
}
