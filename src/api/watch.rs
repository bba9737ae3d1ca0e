//! `?watch=true` streams: newline-delimited JSON events (ADDED, MODIFIED, DELETED, BOOKMARK,
//! ERROR) read from this node's change log (`changelog.rs`). A watch from a resourceVersion in
//! the log's window replays every change since, in order; from an older one, or one handed out
//! by another node, it gets an ERROR event with a 410 `Expired` Status (clients relist). Ends at
//! `timeoutSeconds` (or the configured maximum), on shutdown, or when the client goes away.
//! [`refresh_loop`] brings the tracked kinds' logs up to date on every state change and so
//! wakes the watchers; each watcher only filters the new events.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use chrono::Utc;
use serde_json::{json, Value};
use tokio::time::{Duration, Instant};

use super::changelog::{key_of, Event, EventType, Watching};
use super::objects::{list_all, served};
use super::resources::{self, ResourceInfo};
use super::selectors::{FieldSelector, LabelSelector};
use super::status::ApiError;
use super::table::{self, IncludeObject};
use super::ApiState;

pub struct WatchRequest {
    pub info: &'static ResourceInfo,
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    /// Replay every change after this version. `None` (or "0") sends every current object as
    /// ADDED first.
    pub resource_version: Option<String>,
    pub timeout_seconds: Option<u64>,
    /// Table apiVersion when the client asked for Tables.
    pub table: Option<&'static str>,
    pub include: IncludeObject,
    /// `allowWatchBookmarks=true`.
    pub bookmarks: bool,
    /// `sendInitialEvents=true` (watch-list): current objects as ADDED, then a BOOKMARK
    /// annotated `k8s.io/initial-events-end`.
    pub send_initial_events: bool,
}

/// Refreshes the log of every kind with an open watch whenever the backend's state (or view)
/// changes, until shutdown; the refresh wakes watchers. Kinds only listed or read are brought
/// up to date by the read itself: refreshing them on every change too cost the node serving a
/// polling client a third of a core during a burst.
pub async fn refresh_loop(state: ApiState) {
    let mut changes = state.backend.changes();
    let mut shutdown = state.shutdown.clone();
    loop {
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = shutdown.wait_for(|stopping| *stopping) => return,
        }
        let state = state.clone();
        let started = Instant::now();
        let refreshed = tokio::task::spawn_blocking(move || {
            for kind in state.log.watched() {
                if let Some(info) = resources::RESOURCES
                    .iter()
                    .find(|r| r.backend_resource() == kind)
                {
                    state
                        .log
                        .with(&kind, || list_all(&state, info, None), |_, _| ());
                }
            }
        })
        .await;
        if refreshed.is_err() {
            return;
        }
        // Changes that arrive meanwhile are taken by the next refresh: a refresh lists every
        // tracked kind, and while hundreds of pods start their status writes change the state
        // constantly; back to back, this loop took 9 % of the machine on the node serving the
        // lists. Idle, a refresh costs about a millisecond and the pause is nothing.
        let pause = refresh_pause(started.elapsed());
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.wait_for(|stopping| *stopping) => return,
        }
    }
}

/// Longest pause between two refreshes of the change logs.
const MAX_REFRESH_PAUSE: Duration = Duration::from_millis(250);

/// The pause after a refresh that took `took` before the next one: twice what it took (so
/// refreshing keeps to a third of a core however expensive it grows), at most
/// [`MAX_REFRESH_PAUSE`].
fn refresh_pause(took: Duration) -> Duration {
    (took * 2).min(MAX_REFRESH_PAUSE)
}

struct Watcher {
    state: ApiState,
    request: WatchRequest,
    kind: String,
    notify: tokio::sync::watch::Receiver<u64>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    pending: VecDeque<Bytes>,
    deadline: Instant,
    /// The position events have been sent up to; `None` before the start.
    cursor: Option<u64>,
    next_bookmark: Option<Instant>,
    ended: bool,
    /// Keeps the refresher bringing this kind's log up to date while the watch is open.
    _watching: Watching,
}

/// The ERROR event of a watch whose resourceVersion is gone.
fn expired(message: String) -> Value {
    json!({"type": "ERROR", "object": ApiError::Gone(message).to_status()})
}

impl Watcher {
    fn matches(&self, object: &Value) -> bool {
        let r = &self.request;
        r.namespace
            .as_deref()
            .is_none_or(|ns| key_of(object).0 == ns)
            && r.labels.matches(object)
            && r.fields.matches(object)
    }

    fn push(&mut self, kind: &str, object: &Value) {
        let object = match self.request.table {
            Some(table_version) => {
                let rv = object["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default();
                table::table(
                    self.request.info,
                    table_version,
                    std::slice::from_ref(object),
                    rv,
                    self.request.include,
                    Utc::now(),
                )
            }
            None => object.clone(),
        };
        self.push_raw(&json!({"type": kind, "object": object}));
    }

    fn push_raw(&mut self, event: &Value) {
        let mut line = serde_json::to_vec(event).unwrap_or_default();
        line.push(b'\n');
        self.pending.push_back(Bytes::from(line));
    }

    fn bookmark(&mut self, annotations: Option<Value>) {
        let info = self.request.info;
        let position = self.cursor.unwrap_or_else(|| self.state.log.head());
        let mut metadata = json!({"resourceVersion": self.state.log.rv(position)});
        if let Some(a) = annotations {
            metadata["annotations"] = a;
        }
        self.push_raw(&json!({"type": "BOOKMARK", "object": {
            "kind": info.kind,
            "apiVersion": info.api_version(),
            "metadata": metadata,
        }}));
    }

    fn end_with(&mut self, event: Value) {
        self.push_raw(&event);
        self.ended = true;
    }

    /// Sends what a watched client sees of one change: with selectors, an object that starts
    /// matching is ADDED and one that stops matching is DELETED.
    fn deliver(&mut self, event: &Event) {
        let now = self.matches(&event.object);
        let before = event.prev.as_deref().is_some_and(|p| self.matches(p));
        let kind = match event.kind {
            EventType::Added if now => Some("ADDED"),
            EventType::Modified if now && before => Some("MODIFIED"),
            EventType::Modified if now => Some("ADDED"),
            EventType::Modified if before => Some("DELETED"),
            EventType::Deleted if before || now => Some("DELETED"),
            _ => None,
        };
        if let Some(kind) = kind {
            self.push(kind, &event.object.clone());
        }
        self.cursor = Some(event.position);
    }

    fn start(&mut self) {
        self.notify.borrow_and_update();
        let info = self.request.info;
        // Watch-list (`sendInitialEvents`) starts from the current state, which is never
        // older than the resourceVersion it may name.
        let since = match self.request.send_initial_events {
            true => None,
            false => self.request.resource_version.clone(),
        };
        match since {
            None => {
                let snapshot = served(&self.state, info);
                self.cursor = Some(snapshot.position);
                for object in &snapshot.objects {
                    if self.matches(object) {
                        self.push("ADDED", object);
                    }
                }
                if self.request.send_initial_events {
                    self.bookmark(Some(json!({"k8s.io/initial-events-end": "true"})));
                }
            }
            Some(rv) => {
                let Some(position) = self.state.log.position(&rv) else {
                    return self.end_with(expired(format!(
                        "too old resource version: {rv} (resourceVersions are per serving node; this one was not handed out by {})",
                        self.state.backend.node_name()
                    )));
                };
                let state = self.state.clone();
                let replay = state.log.with(
                    &self.kind,
                    || list_all(&state, info, None),
                    |log, head| log.since(position).map(|events| (events, head)),
                );
                match replay {
                    Ok((events, head)) => {
                        for event in &events {
                            self.deliver(event);
                        }
                        self.cursor = Some(head.max(position));
                    }
                    Err(_) => self.end_with(expired(format!(
                        "too old resource version: {rv} (older than this node's change log)"
                    ))),
                }
            }
        }
    }

    fn catch_up(&mut self) {
        self.notify.borrow_and_update();
        let cursor = self.cursor.unwrap_or(0);
        match self.state.log.since(&self.kind, cursor) {
            Ok(events) => {
                for event in &events {
                    self.deliver(event);
                }
            }
            // The watcher fell behind the window: the client relists.
            Err(_) => self.end_with(expired(format!(
                "too old resource version: {} (the watch fell behind this node's change log)",
                self.state.log.rv(cursor)
            ))),
        }
    }

    fn schedule_bookmark(&mut self) {
        if !self.request.bookmarks {
            return;
        }
        let now = Instant::now();
        let regular = now + self.state.config.bookmark_interval;
        // One more shortly before the watch times out, so the client resumes from a fresh
        // resourceVersion (as Kubernetes does).
        let before_end = self.deadline.checked_sub(Duration::from_secs(2));
        self.next_bookmark = match before_end {
            Some(t) if t > now && t < regular => Some(t),
            _ if regular < self.deadline => Some(regular),
            _ => None,
        };
    }

    /// The next chunk to send, or `None` when the watch ends.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if let Some(chunk) = self.pending.pop_front() {
                return Some(chunk);
            }
            if self.ended {
                return None;
            }
            if self.cursor.is_none() {
                self.start();
                if self.cursor.is_none() {
                    self.cursor = Some(self.state.log.head());
                }
                self.schedule_bookmark();
                continue;
            }
            let shutdown = &mut self.shutdown;
            let bookmark_at = self.next_bookmark;
            let wake = tokio::select! {
                _ = tokio::time::sleep_until(self.deadline) => None,
                _ = async { let _ = shutdown.wait_for(|stopping| *stopping).await; } => None,
                _ = async {
                    match bookmark_at {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                } => Some(true),
                changed = self.notify.changed() => changed.is_ok().then_some(false),
            };
            match wake {
                None => return None,
                Some(true) => {
                    self.catch_up();
                    self.bookmark(None);
                    self.schedule_bookmark();
                }
                Some(false) => self.catch_up(),
            }
        }
    }
}

/// The streaming response of a watch request.
pub fn respond(state: ApiState, request: WatchRequest) -> Response {
    let max = state.config.max_watch;
    let duration = request
        .timeout_seconds
        .map(std::time::Duration::from_secs)
        .map_or(max, |t| t.min(max));
    let watcher = Watcher {
        _watching: state.log.watching(&request.info.backend_resource()),
        notify: state.log.subscribe(),
        shutdown: state.shutdown.clone(),
        kind: request.info.backend_resource(),
        state,
        request,
        pending: VecDeque::new(),
        deadline: Instant::now() + duration,
        cursor: None,
        next_bookmark: None,
        ended: false,
    };
    let stream = futures::stream::unfold(watcher, |mut watcher| async move {
        let chunk = watcher.next_chunk().await?;
        Some((Ok::<_, Infallible>(chunk), watcher))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

#[cfg(test)]
mod pause_tests {
    use super::*;

    #[test]
    fn refreshes_pause_twice_their_cost_within_a_bound() {
        let ms = Duration::from_millis;
        assert_eq!(refresh_pause(ms(1)), ms(2));
        assert_eq!(refresh_pause(ms(40)), ms(80));
        assert_eq!(refresh_pause(ms(900)), MAX_REFRESH_PAUSE);
    }
}
