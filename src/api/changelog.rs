//! The serving node's bounded log of recent changes, per kind: what gives lists their
//! `resourceVersion`, lets a watch started from any resourceVersion in the window replay every
//! ADDED / MODIFIED / DELETED since in order (older ones get `410 Gone`), and serves
//! `resourceVersionMatch=Exact` lists and `continue` pages as of a past resourceVersion.
//!
//! A kind is tracked from the first request that reads or writes it; from then on every refresh
//! (before each read, and on each state change while a watch of the kind is open) diffs the
//! objects as served (computed status included) against the last ones and appends one event
//! per changed object. Changes between two refreshes collapse into one event per object (a watch sees
//! the state after them, not each step; Kubernetes would send each step). Positions are counted by this
//! process; a resourceVersion is `tag << 40 | position`, where `tag` is random
//! per process, so a resourceVersion from another node (or from before a restart) is never
//! mistaken for a position here: it gets 410 and the client relists (docs/consistency.md).
//!
//! [`KindLog`] is the pure core (objects in, events out); [`ChangeLog`] holds one per kind
//! behind locks and wakes watchers.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

/// Bits of a resourceVersion that count positions; the bits above carry the process tag.
const POSITION_BITS: u32 = 40;
const POSITION_MASK: u64 = (1 << POSITION_BITS) - 1;

/// `(namespace, name)`; namespace empty for cluster-scoped kinds.
pub type Key = (String, String);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One change: the object after it (for DELETED, the last state), carrying the event's
/// resourceVersion, and the object before it (MODIFIED, DELETED).
#[derive(Clone, Debug)]
pub struct Event {
    pub position: u64,
    pub kind: EventType,
    pub object: Arc<Value>,
    pub prev: Option<Arc<Value>>,
}

/// The requested position is older than the log's window (or not from this process).
#[derive(Debug, PartialEq, Eq)]
pub struct Expired;

pub fn key_of(object: &Value) -> Key {
    let meta = &object["metadata"];
    (
        meta["namespace"].as_str().unwrap_or_default().to_string(),
        meta["name"].as_str().unwrap_or_default().to_string(),
    )
}

/// The log of one kind. `known` is the state at `head`; `events` are the changes after
/// `start`, oldest first; the state at any position in `start..=head` can be rebuilt.
#[derive(Debug)]
pub struct KindLog {
    known: BTreeMap<Key, Arc<Value>>,
    events: VecDeque<Event>,
    start: u64,
    capacity: usize,
}

impl KindLog {
    /// A log whose window starts at `start` with `objects` as its state; each object gets
    /// resourceVersion `rv(start)`.
    pub fn new(
        objects: Vec<Value>,
        start: u64,
        capacity: usize,
        rv: &dyn Fn(u64) -> String,
    ) -> Self {
        let known = objects
            .into_iter()
            .map(|mut o| {
                set_rv(&mut o, &rv(start));
                (key_of(&o), Arc::new(o))
            })
            .collect();
        KindLog {
            known,
            events: VecDeque::new(),
            start,
            capacity: capacity.max(1),
        }
    }

    /// Diffs `objects` (the kind's current state) against the known state and appends one
    /// event per change, taking positions from `next`. Returns how many events were appended.
    pub fn apply(
        &mut self,
        objects: Vec<Value>,
        next: &mut dyn FnMut() -> u64,
        rv: &dyn Fn(u64) -> String,
    ) -> usize {
        let mut current: BTreeMap<Key, Value> =
            objects.into_iter().map(|o| (key_of(&o), o)).collect();
        let mut appended = 0;
        let gone: Vec<Key> = self
            .known
            .keys()
            .filter(|k| !current.contains_key(*k))
            .cloned()
            .collect();
        for (key, mut object) in std::mem::take(&mut current) {
            let prev = self.known.get(&key).cloned();
            if let Some(prev) = &prev {
                set_rv(
                    &mut object,
                    prev["metadata"]["resourceVersion"].as_str().unwrap_or(""),
                );
                if object == **prev {
                    continue;
                }
            }
            let position = next();
            set_rv(&mut object, &rv(position));
            let object = Arc::new(object);
            self.known.insert(key, object.clone());
            self.push(Event {
                position,
                kind: if prev.is_some() {
                    EventType::Modified
                } else {
                    EventType::Added
                },
                object,
                prev,
            });
            appended += 1;
        }
        for key in gone {
            let Some(prev) = self.known.remove(&key) else {
                continue;
            };
            let position = next();
            let mut last = (*prev).clone();
            set_rv(&mut last, &rv(position));
            self.push(Event {
                position,
                kind: EventType::Deleted,
                object: Arc::new(last),
                prev: Some(prev),
            });
            appended += 1;
        }
        appended
    }

    fn push(&mut self, event: Event) {
        self.events.push_back(event);
        while self.events.len() > self.capacity {
            if let Some(dropped) = self.events.pop_front() {
                self.start = dropped.position;
            }
        }
    }

    /// The oldest position a watch or an exact read may start from.
    #[cfg(test)]
    pub fn start(&self) -> u64 {
        self.start
    }

    /// The current objects, sorted by key.
    pub fn current(&self) -> Vec<Arc<Value>> {
        self.known.values().cloned().collect()
    }

    pub fn get(&self, key: &Key) -> Option<Arc<Value>> {
        self.known.get(key).cloned()
    }

    /// Every event after `position`, oldest first.
    pub fn since(&self, position: u64) -> Result<Vec<Event>, Expired> {
        if position < self.start {
            return Err(Expired);
        }
        let first = self.events.partition_point(|e| e.position <= position);
        Ok(self.events.range(first..).cloned().collect())
    }

    /// The objects as they were at `position`, sorted by key.
    pub fn at(&self, position: u64) -> Result<Vec<Arc<Value>>, Expired> {
        if position < self.start {
            return Err(Expired);
        }
        let mut state = self.known.clone();
        for event in self.events.iter().rev() {
            if event.position <= position {
                break;
            }
            let key = key_of(&event.object);
            match (&event.kind, &event.prev) {
                (EventType::Added, _) | (_, None) => {
                    state.remove(&key);
                }
                (_, Some(prev)) => {
                    state.insert(key, prev.clone());
                }
            }
        }
        Ok(state.into_values().collect())
    }
}

fn set_rv(object: &mut Value, rv: &str) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), json!(rv));
    } else if let Some(map) = object.as_object_mut() {
        map.insert("metadata".into(), json!({"resourceVersion": rv}));
    }
}

/// A consistent read of one kind: its objects as served and the resourceVersion they are at.
pub struct Snapshot {
    pub position: u64,
    pub objects: Vec<Arc<Value>>,
}

/// The logs of every tracked kind on this node.
pub struct ChangeLog {
    tag: u64,
    counter: AtomicU64,
    capacity: usize,
    /// `None` until the kind's first read.
    kinds: Mutex<BTreeMap<String, Arc<Mutex<Option<KindLog>>>>>,
    /// Open watches per kind: the kinds the refresher keeps up to date between reads.
    watched: Mutex<BTreeMap<String, usize>>,
    /// The newest position, sent after every refresh that appended events (wakes watchers).
    notify: tokio::sync::watch::Sender<u64>,
}

impl ChangeLog {
    /// A log keeping up to `capacity` events per kind; `tag` distinguishes this process's
    /// resourceVersions from every other's (random in production).
    pub fn new(tag: u64, capacity: usize) -> Self {
        ChangeLog {
            tag: (tag % ((1 << 23) - 1)) + 1,
            counter: AtomicU64::new(0),
            capacity,
            kinds: Mutex::new(BTreeMap::new()),
            watched: Mutex::new(BTreeMap::new()),
            notify: tokio::sync::watch::channel(0).0,
        }
    }

    pub fn random(capacity: usize) -> Self {
        let bytes = uuid::Uuid::new_v4();
        let tag = u64::from_le_bytes(bytes.as_bytes()[..8].try_into().unwrap_or([1; 8]));
        Self::new(tag, capacity)
    }

    /// The resourceVersion of position `position` on this node.
    pub fn rv(&self, position: u64) -> String {
        ((self.tag << POSITION_BITS) | (position & POSITION_MASK)).to_string()
    }

    /// The position of a resourceVersion handed out by this process; `None` for any other
    /// (another node's, an older process's, or not a number).
    pub fn position(&self, rv: &str) -> Option<u64> {
        let value: u64 = rv.parse().ok()?;
        (value >> POSITION_BITS == self.tag).then_some(value & POSITION_MASK)
    }

    /// The newest position handed out.
    pub fn head(&self) -> u64 {
        self.counter.load(Ordering::SeqCst)
    }

    fn next(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::SeqCst) + 1
    }

    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.notify.subscribe()
    }

    fn kind(&self, name: &str) -> Option<Arc<Mutex<Option<KindLog>>>> {
        self.kinds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Brings the log of `kind` up to date with `read()` (its objects as served now), starting
    /// to track it if needed, and runs `f` on it with the position the state is at. `read` runs
    /// under the kind's lock, so two refreshes never interleave.
    pub fn with<T>(
        &self,
        kind: &str,
        read: impl FnOnce() -> Vec<Value>,
        f: impl FnOnce(&KindLog, u64) -> T,
    ) -> T {
        let log = match self.kind(kind) {
            Some(log) => log,
            None => self
                .kinds
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(kind.to_string())
                .or_default()
                .clone(),
        };
        let mut guard = log.lock().unwrap_or_else(|e| e.into_inner());
        let objects = read();
        let (log, appended) = match guard.take() {
            Some(mut log) => {
                let appended = log.apply(objects, &mut || self.next(), &|p| self.rv(p));
                (log, appended)
            }
            // First read: the window starts here; nothing before it is replayable.
            None => {
                let start = self.next();
                let log = KindLog::new(objects, start, self.capacity, &|p| self.rv(p));
                (log, 0)
            }
        };
        let log = guard.insert(log);
        let position = self.head();
        if appended > 0 {
            self.notify.send_replace(position);
        }
        f(log, position)
    }

    /// The kinds with at least one open watch. Only these need refreshing on every change of
    /// the state: a read refreshes its kind first, so a kind nobody watches is brought up to
    /// date (its changes since the last read appended as events) when it is next read.
    pub fn watched(&self) -> Vec<String> {
        self.watched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Counts an open watch of `kind` until the returned guard is dropped.
    pub fn watching(self: &Arc<Self>, kind: &str) -> Watching {
        *self
            .watched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(kind.to_string())
            .or_default() += 1;
        Watching {
            log: self.clone(),
            kind: kind.to_string(),
        }
    }

    /// Events of `kind` after `position` without refreshing (watchers call this after a
    /// notification; the refresher has already brought the log up to date).
    pub fn since(&self, kind: &str, position: u64) -> Result<Vec<Event>, Expired> {
        match self.kind(kind) {
            Some(log) => match log.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                Some(log) => log.since(position),
                None => Err(Expired),
            },
            None => Err(Expired),
        }
    }
}

/// An open watch of one kind, counted by [`ChangeLog::watching`] while it lives.
pub struct Watching {
    log: Arc<ChangeLog>,
    kind: String,
}

impl Drop for Watching {
    fn drop(&mut self) {
        let mut watched = self.log.watched.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = watched.get_mut(&self.kind) {
            *n -= 1;
            if *n == 0 {
                watched.remove(&self.kind);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(name: &str, v: i64) -> Value {
        json!({"metadata": {"namespace": "ns", "name": name, "resourceVersion": "x"}, "v": v})
    }

    fn rv(p: u64) -> String {
        p.to_string()
    }

    fn counter(from: u64) -> impl FnMut() -> u64 {
        let mut n = from;
        move || {
            n += 1;
            n
        }
    }

    #[test]
    fn diffs_become_ordered_events_and_old_states_can_be_rebuilt() {
        let mut log = KindLog::new(vec![obj("a", 1), obj("b", 1)], 10, 100, &rv);
        assert_eq!(log.current()[0]["metadata"]["resourceVersion"], "10");
        let mut next = counter(10);
        // Unchanged content (even with another stored resourceVersion) is no event.
        assert_eq!(log.apply(vec![obj("a", 1), obj("b", 1)], &mut next, &rv), 0);
        assert_eq!(log.apply(vec![obj("a", 2), obj("c", 1)], &mut next, &rv), 3);
        let events = log.since(10).unwrap();
        let kinds: Vec<_> = events
            .iter()
            .map(|e| (e.kind, key_of(&e.object).1, e.position))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (EventType::Modified, "a".into(), 11),
                (EventType::Added, "c".into(), 12),
                (EventType::Deleted, "b".into(), 13),
            ]
        );
        assert_eq!(events[2].object["metadata"]["resourceVersion"], "13");
        assert_eq!(events[0].prev.as_ref().unwrap()["v"], 1);
        assert_eq!(log.since(12).unwrap().len(), 1);
        // The state at 11: a modified, b still there, c not yet.
        let at: Vec<_> = log
            .at(11)
            .unwrap()
            .iter()
            .map(|o| (key_of(o).1, o["v"].as_i64().unwrap()))
            .collect();
        assert_eq!(at, vec![("a".into(), 2), ("b".into(), 1)]);
        assert_eq!(log.at(10).unwrap().len(), 2);
        assert_eq!(log.at(9), Err(Expired));
        assert_eq!(log.since(9).unwrap_err(), Expired);
    }

    #[test]
    fn the_window_is_bounded_and_older_positions_expire() {
        let mut log = KindLog::new(vec![], 0, 3, &rv);
        let mut next = counter(0);
        for v in 0..5 {
            log.apply(vec![obj("a", v)], &mut next, &rv);
        }
        // Five events, three kept: 3, 4, 5; the window starts at 2.
        assert_eq!(log.start(), 2);
        assert_eq!(log.since(1).unwrap_err(), Expired);
        assert_eq!(log.since(2).unwrap().len(), 3);
        assert_eq!(log.at(2).unwrap()[0]["v"], 1);
    }

    #[test]
    fn open_watches_are_counted_per_kind_until_dropped() {
        let log = Arc::new(ChangeLog::new(7, 10));
        assert!(log.watched().is_empty());
        let a = log.watching("pods");
        let b = log.watching("pods");
        let c = log.watching("services");
        assert_eq!(log.watched(), ["pods", "services"]);
        drop(a);
        drop(c);
        assert_eq!(log.watched(), ["pods"]);
        drop(b);
        assert!(log.watched().is_empty());
    }

    #[test]
    fn resource_versions_carry_the_process_tag() {
        let a = ChangeLog::new(7, 10);
        let b = ChangeLog::new(8, 10);
        let snapshot = a.with("pods", || vec![obj("a", 1)], |log, p| (log.current(), p));
        let rv = snapshot.0[0]["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(a.position(&rv), Some(snapshot.1));
        assert_eq!(b.position(&rv), None);
        assert_eq!(a.position("abc"), None);
        assert_eq!(a.position("12"), None);
        let wake = a.subscribe();
        a.with("pods", || vec![obj("a", 2)], |_, _| ());
        assert!(wake.has_changed().unwrap());
        let events = a.since("pods", snapshot.1).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(a.since("configmaps", 0).unwrap_err(), Expired);
    }
}
