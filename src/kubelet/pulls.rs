//! The kubelet's image pulls, the shell side: each container's image resolved in the node's
//! store and judged by the planner (`plan::image`: `imagePullPolicy`, back-off after a failure),
//! pulls run in the background (one per image and credentials, however many pods wait) and
//! reported to the planner's [`Ledger`] (which counts failures and writes the events),
//! credentials from the pod's `imagePullSecrets`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Container;
use tokio::sync::mpsc;

use super::plan::image::{self, ImageFacts};
use super::plan::{Action, DesiredPod, EventTarget, ImageState, Ledger, Outcome};
use super::Reports;
use crate::model::image::default_pull_policy;
use crate::model::image::{Credentials, PullRequest};
use crate::runtime::image::pull::{PullError, Puller};
use crate::runtime::image::{reference, ImageError, ImageStore};
use crate::runtime::observe::{AttemptState, ObservedPod};
use crate::runtime::ImageInfo;
use crate::state::shared::Shared;

/// The image pulls of one node.
#[derive(Clone)]
pub struct Pulls {
    puller: Option<Arc<Puller>>,
}

/// One round's verdicts: the state of every container's image, the images ready to run (by
/// reference as written in the pod), which of those this kubelet has just pulled, and the
/// events of the pulls this round started.
#[derive(Default)]
pub struct Verdicts {
    pub states: BTreeMap<(String, String), ImageState>,
    pub ready: BTreeMap<String, ImageInfo>,
    pub pulled: BTreeSet<String>,
    pub events: Vec<Action>,
}

/// What a round's evaluation shares between containers.
pub struct Round<'a> {
    pub shared: &'a Shared,
    pub observed: &'a BTreeMap<String, ObservedPod>,
    pub ledger: &'a mut Ledger,
    pub reports: &'a Reports,
    pub wake: &'a mpsc::Sender<()>,
    pub now: DateTime<Utc>,
    /// Images looked up in the store this round, by reference.
    local: BTreeMap<String, Option<ImageInfo>>,
}

impl<'a> Round<'a> {
    pub fn new(
        shared: &'a Shared,
        observed: &'a BTreeMap<String, ObservedPod>,
        ledger: &'a mut Ledger,
        reports: &'a Reports,
        wake: &'a mpsc::Sender<()>,
        now: DateTime<Utc>,
    ) -> Self {
        Round {
            shared,
            observed,
            ledger,
            reports,
            wake,
            now,
            local: BTreeMap::new(),
        }
    }
}

impl Pulls {
    pub fn new(puller: Option<Arc<Puller>>) -> Self {
        Pulls { puller }
    }

    pub fn store(&self) -> Option<&ImageStore> {
        self.puller.as_ref().map(|p| p.store())
    }

    /// Decides each desired container's image state, starting the pulls that are due.
    pub fn evaluate(
        &self,
        round: &mut Round<'_>,
        desired: &BTreeMap<String, DesiredPod>,
    ) -> Verdicts {
        let mut out = Verdicts::default();
        for d in desired.values() {
            for c in d.all_containers() {
                let state = self.container_image(round, d, c, &mut out);
                out.states.insert((d.key.clone(), c.name.clone()), state);
            }
        }
        out
    }

    /// The state of one container's image; a ready image goes into `out.ready`.
    fn container_image(
        &self,
        round: &mut Round<'_>,
        d: &DesiredPod,
        c: &Container,
        out: &mut Verdicts,
    ) -> ImageState {
        let image = c.image.clone().unwrap_or_default();
        let policy = c
            .image_pull_policy
            .clone()
            // Admission sets it on every pod; this covers pods stored before it did.
            .unwrap_or_else(|| default_pull_policy(&image).to_string());
        let parsed = match reference::parse(&image) {
            Ok(r) => r,
            Err(e) => {
                return ImageState::Unavailable {
                    reason: "InvalidImageName".into(),
                    message: format!("Failed to apply default image tag \"{image}\": {e}"),
                }
            }
        };
        // Pulls (and their back-off) are per image and credentials: a pod without the right
        // Secret must not hold back one that has it.
        let creds = pull_credentials(round.shared, d, &parsed);
        let key = record_key(&parsed, creds.as_ref());
        let present = round
            .local
            .entry(image.clone())
            .or_insert_with(|| self.resolve(&image).ok())
            .clone();
        let verdict = image::verdict(ImageFacts {
            image: &image,
            policy: &policy,
            present: present.is_some(),
            record: round.ledger.pull(&key),
            running: running(round.observed, &d.key, &c.name),
            created: created_at(d),
            now: round.now,
        });
        if let (ImageState::Ready, Some(info)) = (&verdict.state, present) {
            if verdict.just_pulled {
                out.pulled.insert(image.clone());
            }
            out.ready.insert(image.clone(), info);
        }
        if let Some(failures) = verdict.pull {
            let target = EventTarget {
                namespace: d.namespace(),
                name: d.name(),
                uid: d.uid(),
            };
            out.events
                .extend(self.start(round, target, &image, key, creds, failures));
        }
        verdict.state
    }

    fn resolve(&self, image: &str) -> Result<ImageInfo, ImageError> {
        let store = self
            .store()
            .ok_or_else(|| ImageError::NotFound(image.to_string()))?;
        let r = store.resolve(image)?;
        Ok(ImageInfo {
            reference: r.reference,
            digest: r.digest,
            entrypoint: r.config.entrypoint,
            cmd: r.config.cmd,
            env: r.config.env,
            working_dir: r.config.working_dir,
            user: r.config.user,
            layers: r.layers,
        })
    }

    /// Starts a pull in the background (its outcome goes to `round.reports`); returns the
    /// events of its start.
    fn start(
        &self,
        round: &mut Round<'_>,
        target: EventTarget,
        image: &str,
        record: String,
        credentials: Option<Credentials>,
        failures: u32,
    ) -> Vec<Action> {
        let Some(puller) = self.puller.clone() else {
            let message = "this node has no image store";
            round
                .ledger
                .pull_impossible(record, failures, message, round.now);
            return Vec::new();
        };
        let started = Outcome::PullStarted {
            record: record.clone(),
            target: target.clone(),
            image: image.to_string(),
            failures,
        };
        let events = round.ledger.record(started, round.now);
        let reports = round.reports.clone();
        let wake = round.wake.clone();
        let image = image.to_string();
        tokio::spawn(async move {
            let outcome = pull(&puller, record, target, image, credentials).await;
            reports.push(outcome);
            let _ = wake.try_send(());
        });
        events
    }
}

/// Pulls `image` and says how it went.
async fn pull(
    puller: &Arc<Puller>,
    record: String,
    target: EventTarget,
    image: String,
    credentials: Option<Credentials>,
) -> Outcome {
    let began = std::time::Instant::now();
    let req = PullRequest {
        reference: image.clone(),
        credentials,
    };
    match puller.pull(&req, None).await {
        Ok(img) => {
            let size: u64 = puller
                .store()
                .list()
                .iter()
                .find(|s| s.digest == img.digest)
                .map(|s| s.size)
                .unwrap_or(0);
            Outcome::Pulled {
                record,
                target,
                image,
                seconds: began.elapsed().as_secs_f64(),
                size,
            }
        }
        Err(e) => {
            let error = e.to_string();
            tracing::warn!(%image, %error, "image pull failed");
            Outcome::PullFailed {
                record,
                target,
                image,
                error,
                unreachable: matches!(e, PullError::Unreachable(_)),
            }
        }
    }
}

/// When the pod was created (whole seconds).
fn created_at(d: &DesiredPod) -> Option<DateTime<Utc>> {
    d.pod
        .metadata
        .creation_timestamp
        .as_ref()
        .and_then(|t| DateTime::<Utc>::from_timestamp(t.0.as_second(), 0))
}

/// Whether the container runs already (or is being created) on this node.
fn running(observed: &BTreeMap<String, ObservedPod>, key: &str, container: &str) -> bool {
    observed
        .get(key)
        .and_then(|o| o.containers.get(container))
        .is_some_and(|oc| {
            matches!(
                oc.latest.state,
                AttemptState::Running { .. } | AttemptState::Creating
            )
        })
}

/// The pull-record key of an image pulled with `creds`: the reference, and a digest of the
/// credentials (never the credentials themselves).
fn record_key(image: &reference::Reference, creds: Option<&Credentials>) -> String {
    match creds {
        None => image.to_string(),
        Some(c) => {
            use sha2::Digest as _;
            let h = sha2::Sha256::new()
                .chain_update(c.username.as_bytes())
                .chain_update([0])
                .chain_update(c.password.as_bytes())
                .finalize();
            format!("{image} creds:{}", hex::encode(&h[..8]))
        }
    }
}

/// Credentials for `image` from the pod's `imagePullSecrets` (the first Secret with an entry
/// for the image's registry). Secrets that are missing or malformed are skipped with a log.
fn pull_credentials(
    shared: &Shared,
    d: &DesiredPod,
    image: &reference::Reference,
) -> Option<Credentials> {
    let names: Vec<String> = d
        .pod
        .spec
        .as_ref()?
        .image_pull_secrets
        .iter()
        .flatten()
        .map(|s| s.name.clone())
        .collect();
    if names.is_empty() {
        return None;
    }
    let registry = image.name.split('/').next().unwrap_or_default().to_string();
    let ns = d.namespace();
    for name in names {
        let Some(secret) = crate::state::secrets::get_secret(shared, &ns, &name) else {
            tracing::info!(namespace = %ns, secret = %name, "imagePullSecret not found");
            continue;
        };
        match crate::model::secret::registry_credentials(&secret, &registry) {
            Ok(Some(c)) => return Some(c),
            Ok(None) => {}
            Err(e) => tracing::info!(namespace = %ns, secret = %name, error = %e,
                "unusable imagePullSecret"),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_per_credentials_and_never_hold_them() {
        let r = reference::parse("10.0.0.1:5000/app:1").unwrap();
        let a = Credentials {
            username: "u".into(),
            password: "pw-a".into(),
        };
        let b = Credentials {
            username: "u".into(),
            password: "pw-b".into(),
        };
        let keys = [
            record_key(&r, None),
            record_key(&r, Some(&a)),
            record_key(&r, Some(&b)),
        ];
        assert_eq!(keys[0], "10.0.0.1:5000/app:1");
        assert_ne!(keys[1], keys[2]);
        assert_eq!(keys[1], record_key(&r, Some(&a.clone())));
        assert!(keys.iter().all(|k| !k.contains("pw-")), "{keys:?}");
    }

    #[test]
    fn default_policy_follows_kubernetes() {
        assert_eq!(default_pull_policy("busybox"), "Always");
        assert_eq!(default_pull_policy("busybox:latest"), "Always");
        assert_eq!(default_pull_policy("busybox:1.36"), "IfNotPresent");
        assert_eq!(
            default_pull_policy(&format!("busybox@sha256:{}", "a".repeat(64))),
            "IfNotPresent"
        );
        assert_eq!(default_pull_policy("10.0.0.1:5000/app"), "Always");
    }
}
