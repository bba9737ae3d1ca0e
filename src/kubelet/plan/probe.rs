//! Probes and lifecycle hooks, pure: the probe specs of a container (Kubernetes' defaults,
//! named ports resolved), and the [`Tracker`] of every running attempt's probes — when each is
//! due, consecutive successes and failures, and the verdict the planner reads (`started`,
//! `ready`, a liveness or startup failure that restarts the container). Time is an argument;
//! the prober shell (`crate::kubelet::prober`) runs the probes and reports their outcomes.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use k8s_openapi::api::core::v1::{
    Container, ExecAction, HTTPGetAction, LifecycleHandler, Probe, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Kubernetes' probe defaults.
pub const DEFAULT_PERIOD: i64 = 10;
pub const DEFAULT_TIMEOUT: i64 = 1;
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 3;
pub const DEFAULT_SUCCESS_THRESHOLD: u32 = 1;
/// While a probe keeps failing, its `Unhealthy` event is repeated at most this often.
pub const UNHEALTHY_REPEAT: i64 = 60;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ProbeKind {
    Startup,
    Liveness,
    Readiness,
}

impl ProbeKind {
    /// `Liveness`, as in "Liveness probe failed: …".
    pub fn title(self) -> &'static str {
        match self {
            ProbeKind::Startup => "Startup",
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
        }
    }
    /// `liveness`, as in "failed liveness probe".
    pub fn lower(self) -> &'static str {
        match self {
            ProbeKind::Startup => "startup",
            ProbeKind::Liveness => "liveness",
            ProbeKind::Readiness => "readiness",
        }
    }
}

/// What a probe or hook does, its port resolved against the container's ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handler {
    /// Run in the container; exit code 0 succeeds.
    Exec { command: Vec<String> },
    /// GET; a status in 200–399 succeeds. `host`: the pod's IP when unset.
    Http {
        scheme: String,
        host: Option<String>,
        port: u16,
        path: String,
        headers: Vec<(String, String)>,
    },
    /// A TCP connection succeeds.
    Tcp { host: Option<String>, port: u16 },
}

/// A port by number, or by the name of one of the container's ports.
fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("port {n} is out of range 1-65535")),
        IntOrString::String(name) => {
            if let Ok(n) = name.parse::<i32>() {
                return resolve_port(&IntOrString::Int(n), container);
            }
            container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok().filter(|p| *p != 0))
                .ok_or_else(|| {
                    format!(
                        "port {name:?} is not a named port of container {:?}",
                        container.name
                    )
                })
        }
    }
}

/// The handler of a probe or hook: exactly one of exec, httpGet, tcpSocket (admission refuses
/// the rest; what slips through is an error the probe reports).
fn handler_of(
    exec: Option<&ExecAction>,
    http: Option<&HTTPGetAction>,
    tcp: Option<&TCPSocketAction>,
    container: &Container,
) -> Result<Handler, String> {
    match (exec, http, tcp) {
        (Some(e), None, None) => {
            let command = e.command.clone().unwrap_or_default();
            if command.is_empty() {
                return Err("exec handler without a command".into());
            }
            Ok(Handler::Exec { command })
        }
        (None, Some(h), None) => Ok(Handler::Http {
            scheme: h.scheme.clone().unwrap_or_else(|| "HTTP".into()),
            host: h.host.clone().filter(|h| !h.is_empty()),
            port: resolve_port(&h.port, container)?,
            path: match h.path.as_deref() {
                None | Some("") => "/".into(),
                Some(p) if p.starts_with('/') => p.into(),
                Some(p) => format!("/{p}"),
            },
            headers: h
                .http_headers
                .iter()
                .flatten()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect(),
        }),
        (None, None, Some(t)) => Ok(Handler::Tcp {
            host: t.host.clone().filter(|h| !h.is_empty()),
            port: resolve_port(&t.port, container)?,
        }),
        (None, None, None) => Err("no handler (exec, httpGet or tcpSocket) given".into()),
        _ => Err("more than one handler given".into()),
    }
}

/// A container's probe with its defaults applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSpec {
    pub kind: ProbeKind,
    /// The handler, or why it cannot run (every attempt then fails with this message).
    pub handler: Result<Handler, String>,
    pub initial_delay: i64,
    pub period: i64,
    pub timeout: i64,
    pub success_threshold: u32,
    pub failure_threshold: u32,
    /// The probe's own `terminationGracePeriodSeconds` (liveness and startup kills).
    pub grace: Option<i64>,
}

fn positive(v: Option<i32>, default: i64) -> i64 {
    v.map(i64::from).filter(|v| *v > 0).unwrap_or(default)
}

pub fn probe_spec(kind: ProbeKind, probe: &Probe, container: &Container) -> ProbeSpec {
    let threshold = |v: Option<i32>, d: u32| {
        v.and_then(|v| u32::try_from(v).ok())
            .filter(|v| *v > 0)
            .unwrap_or(d)
    };
    ProbeSpec {
        kind,
        handler: handler_of(
            probe.exec.as_ref(),
            probe.http_get.as_ref(),
            probe.tcp_socket.as_ref(),
            container,
        ),
        initial_delay: probe
            .initial_delay_seconds
            .map(i64::from)
            .unwrap_or(0)
            .max(0),
        period: positive(probe.period_seconds, DEFAULT_PERIOD),
        timeout: positive(probe.timeout_seconds, DEFAULT_TIMEOUT),
        success_threshold: if kind == ProbeKind::Readiness {
            threshold(probe.success_threshold, DEFAULT_SUCCESS_THRESHOLD)
        } else {
            1
        },
        failure_threshold: threshold(probe.failure_threshold, DEFAULT_FAILURE_THRESHOLD),
        grace: probe.termination_grace_period_seconds.filter(|g| *g >= 0),
    }
}

/// The container's probes, startup first.
pub fn probes_of(container: &Container) -> Vec<ProbeSpec> {
    [
        (ProbeKind::Startup, container.startup_probe.as_ref()),
        (ProbeKind::Liveness, container.liveness_probe.as_ref()),
        (ProbeKind::Readiness, container.readiness_probe.as_ref()),
    ]
    .into_iter()
    .filter_map(|(kind, p)| p.map(|p| probe_spec(kind, p, container)))
    .collect()
}

/// The container's `lifecycle.preStop` handler, if it has one.
pub fn pre_stop_of(container: &Container) -> Option<Result<Handler, String>> {
    let hook: &LifecycleHandler = container.lifecycle.as_ref()?.pre_stop.as_ref()?;
    Some(hook_handler(hook, container))
}

/// The containers with a preStop hook, trimmed to what running it needs (name, ports,
/// lifecycle): kept in the pod dir, so the hook also runs once the pod is deleted.
pub fn hooked_containers<'a>(
    containers: impl IntoIterator<Item = &'a Container>,
) -> Vec<Container> {
    containers
        .into_iter()
        .filter(|c| c.lifecycle.as_ref().is_some_and(|l| l.pre_stop.is_some()))
        .map(|c| Container {
            name: c.name.clone(),
            ports: c.ports.clone(),
            lifecycle: c.lifecycle.clone(),
            ..Container::default()
        })
        .collect()
}

/// The container's `lifecycle.postStart` handler, if it has one.
pub fn post_start_of(container: &Container) -> Option<Result<Handler, String>> {
    let hook = container.lifecycle.as_ref()?.post_start.as_ref()?;
    Some(hook_handler(hook, container))
}

/// A lifecycle hook's handler (exec, httpGet; tcpSocket is deprecated for hooks but harmless).
pub fn hook_handler(hook: &LifecycleHandler, container: &Container) -> Result<Handler, String> {
    if hook.sleep.is_some() {
        return Err("sleep hooks are not supported".into());
    }
    handler_of(
        hook.exec.as_ref(),
        hook.http_get.as_ref(),
        hook.tcp_socket.as_ref(),
        container,
    )
}

/// What the planner learns from a container attempt's probes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The attempt these results are of.
    pub restart: u32,
    /// The startup probe succeeded (or there is none).
    pub started: bool,
    /// Started, and the readiness probe succeeds (or there is none).
    pub ready: bool,
    /// A liveness or startup probe failed past its threshold: the container must be
    /// restarted (the probe's kind and its last failure message).
    pub kill: Option<(ProbeKind, String)>,
    /// The probe's own grace period for that kill.
    pub kill_grace: Option<i64>,
    /// Probes whose latest outcome is a failure: kind, when the failures in a row began, and
    /// the latest message.
    pub failing: Vec<(ProbeKind, DateTime<Utc>, String)>,
}

/// The verdict of a running attempt the tracker has no results of yet: started unless a
/// startup probe must pass, ready unless a startup or readiness probe must pass.
pub fn initial_verdict(container: &Container, restart: u32) -> Verdict {
    let startup = container.startup_probe.is_some();
    Verdict {
        restart,
        started: !startup,
        ready: !startup && container.readiness_probe.is_none(),
        kill: None,
        kill_grace: None,
        failing: Vec::new(),
    }
}

/// A running container attempt whose probes are tracked.
#[derive(Clone, Debug, PartialEq)]
pub struct RunningAttempt {
    pub pod: String,
    pub container: Container,
    pub restart: u32,
    pub started_at: DateTime<Utc>,
}

/// Which probe run an outcome belongs to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RunId {
    pub pod: String,
    pub container: String,
    pub kind: ProbeKind,
    pub restart: u32,
}

/// A probe to run now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeRun {
    pub id: RunId,
    pub handler: Result<Handler, String>,
    pub timeout: i64,
}

#[derive(Clone, Debug)]
struct State {
    restart: u32,
    started_at: DateTime<Utc>,
    spec: ProbeSpec,
    next_due: DateTime<Utc>,
    in_flight: bool,
    /// The outcome kind of the latest runs and how many in a row.
    last: Option<bool>,
    run: u32,
    /// The result after thresholds: `None` unknown (startup before its first verdict).
    result: Option<bool>,
    /// First failure of the current failures in a row, latest message.
    failing: Option<(DateTime<Utc>, String)>,
}

impl State {
    fn new(spec: ProbeSpec, attempt: &RunningAttempt) -> Self {
        let result = match spec.kind {
            ProbeKind::Liveness => Some(true),
            ProbeKind::Readiness => Some(false),
            ProbeKind::Startup => None,
        };
        State {
            restart: attempt.restart,
            started_at: attempt.started_at,
            next_due: attempt.started_at + Duration::seconds(spec.initial_delay),
            spec,
            in_flight: false,
            last: None,
            run: 0,
            result,
            failing: None,
        }
    }

    /// Whether the probe has nothing more to do for this attempt: a startup probe that
    /// succeeded, or a liveness/startup probe that failed (the container is being killed).
    fn finished(&self) -> bool {
        match self.spec.kind {
            ProbeKind::Startup => self.result.is_some(),
            ProbeKind::Liveness => self.result == Some(false),
            ProbeKind::Readiness => false,
        }
    }
}

type Key = (String, String, ProbeKind);

/// Every running attempt's probes. One per node, shared by the kubelet round (which syncs it
/// with what runs and reads verdicts) and the prober (which runs what is due).
#[derive(Clone, Debug, Default)]
pub struct Tracker {
    states: BTreeMap<Key, State>,
}

impl Tracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Tracks exactly the probes of `running`: a new attempt (restart number or start time
    /// changed) starts from scratch; probes of containers no longer running are dropped.
    pub fn sync(&mut self, running: &[RunningAttempt]) {
        let mut keep = BTreeMap::new();
        for attempt in running {
            for spec in probes_of(&attempt.container) {
                let key = (
                    attempt.pod.clone(),
                    attempt.container.name.clone(),
                    spec.kind,
                );
                let state = match self.states.remove(&key) {
                    Some(s)
                        if s.restart == attempt.restart
                            && s.started_at == attempt.started_at
                            && s.spec == spec =>
                    {
                        s
                    }
                    _ => State::new(spec, attempt),
                };
                keep.insert(key, state);
            }
        }
        self.states = keep;
    }

    /// Whether the startup probe of the container (if any) has passed.
    fn started(&self, pod: &str, container: &str) -> bool {
        self.states
            .get(&(pod.to_string(), container.to_string(), ProbeKind::Startup))
            .is_none_or(|s| s.result == Some(true))
    }

    /// The probes due at `now`, marked in flight (each is due again a period after it was
    /// sent, once its outcome is back). Liveness and readiness wait for the startup probe.
    pub fn due(&mut self, now: DateTime<Utc>) -> Vec<ProbeRun> {
        let gated: Vec<Key> = self
            .states
            .keys()
            .filter(|(p, c, k)| *k != ProbeKind::Startup && !self.started(p, c))
            .cloned()
            .collect();
        let mut out = Vec::new();
        for (key, s) in self.states.iter_mut() {
            if s.in_flight || s.finished() || now < s.next_due || gated.contains(key) {
                continue;
            }
            s.in_flight = true;
            s.next_due = now + Duration::seconds(s.spec.period);
            out.push(ProbeRun {
                id: RunId {
                    pod: key.0.clone(),
                    container: key.1.clone(),
                    kind: key.2,
                    restart: s.restart,
                },
                handler: s.spec.handler.clone(),
                timeout: s.spec.timeout,
            });
        }
        out
    }

    /// When the next probe is due (not counting those in flight or gated).
    pub fn next_due(&self) -> Option<DateTime<Utc>> {
        self.states
            .iter()
            .filter(|((p, c, k), s)| {
                !s.in_flight && !s.finished() && (*k == ProbeKind::Startup || self.started(p, c))
            })
            .map(|(_, s)| s.next_due)
            .min()
    }

    /// Records a run's outcome (`Err(message)`: failed). Returns whether anything the planner
    /// reads changed (a result flipped, or failures began). Outcomes of an attempt no longer
    /// tracked are dropped.
    pub fn record(&mut self, id: &RunId, outcome: Result<(), String>, now: DateTime<Utc>) -> bool {
        let key = (id.pod.clone(), id.container.clone(), id.kind);
        let Some(s) = self.states.get_mut(&key) else {
            return false;
        };
        if s.restart != id.restart {
            return false;
        }
        s.in_flight = false;
        let ok = outcome.is_ok();
        if s.last == Some(ok) {
            s.run = s.run.saturating_add(1);
        } else {
            s.last = Some(ok);
            s.run = 1;
        }
        let before = (s.result, s.failing.is_some());
        match outcome {
            Ok(()) => s.failing = None,
            Err(message) => {
                let since = s.failing.as_ref().map_or(now, |(t, _)| *t);
                s.failing = Some((since, message));
            }
        }
        let threshold = if ok {
            s.spec.success_threshold
        } else {
            s.spec.failure_threshold
        };
        if s.run >= threshold {
            s.result = Some(ok);
        }
        before != (s.result, s.failing.is_some())
    }

    /// The verdict of attempt `restart` of a container (its initial verdict if untracked).
    pub fn verdict(&self, pod: &str, container: &Container, restart: u32) -> Verdict {
        let mut v = initial_verdict(container, restart);
        let get = |kind| {
            self.states
                .get(&(pod.to_string(), container.name.clone(), kind))
                .filter(|s| s.restart == restart)
        };
        let startup = get(ProbeKind::Startup);
        let liveness = get(ProbeKind::Liveness);
        let readiness = get(ProbeKind::Readiness);
        if container.startup_probe.is_some() {
            v.started = startup.is_some_and(|s| s.result == Some(true));
        }
        v.ready = v.started
            && match (&container.readiness_probe, readiness) {
                (None, _) => true,
                (Some(_), Some(s)) => s.result == Some(true),
                (Some(_), None) => false,
            };
        for s in [startup, liveness].into_iter().flatten() {
            if s.result == Some(false) && v.kill.is_none() {
                let message = s
                    .failing
                    .as_ref()
                    .map(|(_, m)| m.clone())
                    .unwrap_or_default();
                v.kill = Some((s.spec.kind, message));
                v.kill_grace = s.spec.grace;
            }
        }
        for s in [startup, liveness, readiness].into_iter().flatten() {
            if let Some((since, message)) = &s.failing {
                v.failing.push((s.spec.kind, *since, message.clone()));
            }
        }
        v
    }

    /// How many probes are tracked.
    pub fn len(&self) -> usize {
        self.states.len()
    }

    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn t(ms: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 29, 9, 0, 0).unwrap() + Duration::milliseconds(ms)
    }

    fn container(probes: serde_json::Value) -> Container {
        let mut c = json!({"name": "app", "image": "busybox",
            "ports": [{"name": "http", "containerPort": 8080}]});
        for (k, v) in probes.as_object().unwrap() {
            c[k] = v.clone();
        }
        serde_json::from_value(c).unwrap()
    }

    fn attempt(c: &Container, restart: u32, at: i64) -> RunningAttempt {
        RunningAttempt {
            pod: "b1".into(),
            container: c.clone(),
            restart,
            started_at: t(at),
        }
    }

    /// Runs every due probe at `now` with `outcome`; the kinds that ran.
    fn step(tr: &mut Tracker, now: i64, outcome: Result<(), &str>) -> Vec<ProbeKind> {
        let runs = tr.due(t(now));
        for r in &runs {
            tr.record(&r.id, outcome.map_err(str::to_string), t(now));
        }
        runs.iter().map(|r| r.id.kind).collect()
    }

    #[test]
    fn defaults_and_handlers() {
        let c = container(json!({
            "livenessProbe": {"httpGet": {"port": "http", "path": "healthz",
                "httpHeaders": [{"name": "X-A", "value": "1"}]}},
            "readinessProbe": {"tcpSocket": {"port": 9000}, "successThreshold": 2},
            "startupProbe": {"exec": {"command": ["true"]}, "successThreshold": 5}
        }));
        let specs = probes_of(&c);
        assert_eq!(specs.len(), 3);
        let live = &specs[1];
        assert_eq!(live.kind, ProbeKind::Liveness);
        assert_eq!(
            (
                live.period,
                live.timeout,
                live.failure_threshold,
                live.success_threshold
            ),
            (10, 1, 3, 1)
        );
        assert_eq!(
            live.handler,
            Ok(Handler::Http {
                scheme: "HTTP".into(),
                host: None,
                port: 8080,
                path: "/healthz".into(),
                headers: vec![("X-A".into(), "1".into())],
            })
        );
        assert_eq!(specs[2].success_threshold, 2);
        assert_eq!(
            specs[2].handler,
            Ok(Handler::Tcp {
                host: None,
                port: 9000
            })
        );
        // successThreshold other than 1 is not honoured for startup (admission refuses it).
        assert_eq!(specs[0].success_threshold, 1);
        assert_eq!(
            specs[0].handler,
            Ok(Handler::Exec {
                command: vec!["true".into()]
            })
        );
    }

    #[test]
    fn bad_handlers_are_errors_not_panics() {
        let c = container(json!({
            "livenessProbe": {"tcpSocket": {"port": "metrics"}},
            "readinessProbe": {"tcpSocket": {"port": 70000}},
            "startupProbe": {"exec": {"command": ["true"]}, "tcpSocket": {"port": 1}}
        }));
        let specs = probes_of(&c);
        assert!(specs[0]
            .handler
            .as_ref()
            .unwrap_err()
            .contains("more than one"));
        assert!(specs[1]
            .handler
            .as_ref()
            .unwrap_err()
            .contains("\"metrics\" is not a named port"));
        assert!(specs[2].handler.as_ref().unwrap_err().contains("70000"));
        let none = container(json!({"livenessProbe": {"periodSeconds": 1}}));
        assert!(probes_of(&none)[0].handler.is_err());
    }

    #[test]
    fn due_times_follow_initial_delay_and_period() {
        let c = container(json!({"livenessProbe": {"exec": {"command": ["x"]},
            "initialDelaySeconds": 5, "periodSeconds": 2}}));
        let mut tr = Tracker::new();
        tr.sync(&[attempt(&c, 0, 0)]);
        assert_eq!(tr.next_due(), Some(t(5000)));
        assert!(step(&mut tr, 4999, Ok(())).is_empty());
        assert_eq!(step(&mut tr, 5000, Ok(())), vec![ProbeKind::Liveness]);
        assert_eq!(tr.next_due(), Some(t(7000)));
        assert!(step(&mut tr, 6000, Ok(())).is_empty());
        // In flight: not due again until its outcome is back.
        let runs = tr.due(t(7000));
        assert_eq!(runs.len(), 1);
        assert!(tr.due(t(10_000)).is_empty());
        assert_eq!(tr.next_due(), None);
        tr.record(&runs[0].id, Ok(()), t(10_000));
        assert_eq!(tr.next_due(), Some(t(9000)));
    }

    #[test]
    fn liveness_kills_after_failure_threshold() {
        let c = container(json!({"livenessProbe": {"exec": {"command": ["x"]},
            "periodSeconds": 1, "failureThreshold": 3}}));
        let mut tr = Tracker::new();
        tr.sync(&[attempt(&c, 0, 0)]);
        let v = tr.verdict("b1", &c, 0);
        assert!(v.started && v.ready && v.kill.is_none());
        step(&mut tr, 0, Ok(()));
        step(&mut tr, 1000, Err("gone"));
        step(&mut tr, 2000, Err("gone"));
        let v = tr.verdict("b1", &c, 0);
        assert!(v.kill.is_none(), "two failures of three");
        assert_eq!(
            v.failing,
            vec![(ProbeKind::Liveness, t(1000), "gone".into())]
        );
        // A success in between starts the count again.
        step(&mut tr, 3000, Ok(()));
        assert!(tr.verdict("b1", &c, 0).failing.is_empty());
        for s in 4..=6 {
            step(&mut tr, s * 1000, Err("still gone"));
        }
        let v = tr.verdict("b1", &c, 0);
        assert_eq!(v.kill, Some((ProbeKind::Liveness, "still gone".into())));
        assert_eq!(v.failing[0].1, t(4000));
        // Failed: no more runs for this attempt.
        assert!(step(&mut tr, 7000, Ok(())).is_empty());
        // The next attempt starts afresh.
        tr.sync(&[attempt(&c, 1, 8000)]);
        let v = tr.verdict("b1", &c, 1);
        assert!(v.kill.is_none() && v.failing.is_empty());
        assert_eq!(step(&mut tr, 8000, Ok(())), vec![ProbeKind::Liveness]);
        // Outcomes of the old attempt are dropped.
        let old = RunId {
            pod: "b1".into(),
            container: "app".into(),
            kind: ProbeKind::Liveness,
            restart: 0,
        };
        assert!(!tr.record(&old, Err("late".into()), t(9000)));
        assert!(tr.verdict("b1", &c, 1).failing.is_empty());
    }

    #[test]
    fn readiness_starts_false_and_follows_thresholds() {
        let c = container(json!({"readinessProbe": {"exec": {"command": ["x"]},
            "periodSeconds": 1, "successThreshold": 2, "failureThreshold": 2}}));
        let mut tr = Tracker::new();
        tr.sync(&[attempt(&c, 0, 0)]);
        assert!(!tr.verdict("b1", &c, 0).ready);
        assert!(!initial_verdict(&c, 0).ready);
        step(&mut tr, 0, Ok(()));
        assert!(!tr.verdict("b1", &c, 0).ready, "one success of two");
        step(&mut tr, 1000, Ok(()));
        assert!(tr.verdict("b1", &c, 0).ready);
        step(&mut tr, 2000, Err("503"));
        assert!(tr.verdict("b1", &c, 0).ready, "one failure of two");
        step(&mut tr, 3000, Err("503"));
        let v = tr.verdict("b1", &c, 0);
        assert!(!v.ready && v.kill.is_none(), "readiness never kills");
        step(&mut tr, 4000, Ok(()));
        step(&mut tr, 5000, Ok(()));
        assert!(tr.verdict("b1", &c, 0).ready);
    }

    #[test]
    fn startup_gates_liveness_and_readiness_and_can_kill() {
        let c = container(json!({
            "startupProbe": {"exec": {"command": ["s"]}, "periodSeconds": 1, "failureThreshold": 3},
            "livenessProbe": {"exec": {"command": ["l"]}, "periodSeconds": 1},
            "readinessProbe": {"exec": {"command": ["r"]}, "periodSeconds": 1}
        }));
        let mut tr = Tracker::new();
        tr.sync(&[attempt(&c, 0, 0)]);
        let v = tr.verdict("b1", &c, 0);
        assert!(!v.started && !v.ready);
        assert_eq!(step(&mut tr, 0, Err("not yet")), vec![ProbeKind::Startup]);
        assert_eq!(step(&mut tr, 1000, Ok(())), vec![ProbeKind::Startup]);
        let v = tr.verdict("b1", &c, 0);
        assert!(v.started && !v.ready, "started, readiness not run yet");
        let ran = step(&mut tr, 2000, Ok(()));
        assert_eq!(ran, vec![ProbeKind::Liveness, ProbeKind::Readiness]);
        assert!(tr.verdict("b1", &c, 0).ready);

        // A startup probe failing past its threshold kills like liveness.
        tr.sync(&[attempt(&c, 1, 10_000)]);
        for s in 10..13 {
            assert_eq!(
                step(&mut tr, s * 1000, Err("down")),
                vec![ProbeKind::Startup]
            );
        }
        let v = tr.verdict("b1", &c, 1);
        assert_eq!(v.kill, Some((ProbeKind::Startup, "down".into())));
        assert!(!v.started);
        assert!(
            step(&mut tr, 20_000, Ok(())).is_empty(),
            "liveness stays gated"
        );
    }

    #[test]
    fn sync_drops_gone_containers_and_keeps_unchanged_ones() {
        let c = container(json!({"readinessProbe": {"exec": {"command": ["x"]}}}));
        let mut tr = Tracker::new();
        tr.sync(&[attempt(&c, 0, 0)]);
        step(&mut tr, 0, Ok(()));
        tr.sync(&[attempt(&c, 0, 0)]);
        assert!(
            tr.verdict("b1", &c, 0).ready,
            "same attempt keeps its results"
        );
        tr.sync(&[]);
        assert!(tr.is_empty());
        assert!(!tr.verdict("b1", &c, 0).ready);
    }

    #[test]
    fn record_reports_changes_only() {
        let c =
            container(json!({"readinessProbe": {"exec": {"command": ["x"]}, "periodSeconds": 1}}));
        let mut tr = Tracker::new();
        tr.sync(&[attempt(&c, 0, 0)]);
        let r = tr.due(t(0)).remove(0);
        assert!(tr.record(&r.id, Ok(()), t(0)), "became ready");
        let r = tr.due(t(1000)).remove(0);
        assert!(!tr.record(&r.id, Ok(()), t(1000)), "still ready");
        let r = tr.due(t(2000)).remove(0);
        assert!(tr.record(&r.id, Err("x".into()), t(2000)), "failures began");
        let r = tr.due(t(3000)).remove(0);
        assert!(!tr.record(&r.id, Err("x".into()), t(3000)));
    }
}
