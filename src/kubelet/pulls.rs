//! The kubelet's image pulls: the state of each container's image under its
//! `imagePullPolicy`, pulls run in the background (one per image, however many pods wait),
//! back-off after a failure (10 s doubling to 300 s, as Kubernetes), credentials from the
//! pod's `imagePullSecrets`, and the events `kubectl describe pod` shows.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};
use tokio::sync::mpsc;

use super::plan::{DesiredPod, EventTarget, ImageState};
use crate::model::backoff::Backoff;
use crate::model::image::default_pull_policy;
use crate::model::image::{Credentials, PullRequest};
use crate::model::workload::EventType;
use crate::runtime::image::pull::{PullError, Puller};
use crate::runtime::image::{reference, ImageError, ImageStore};
use crate::runtime::observe::{AttemptState, ObservedPod};
use crate::runtime::ImageInfo;
use crate::state::shared::Shared;

/// For this long after a failure the container shows `ErrImagePull`, then `ImagePullBackOff`.
const ERR_IMAGE_PULL_FOR: i64 = 3;

/// The back-off (seconds) after `failures` failed pulls in a row: Kubernetes' 10 s, doubling
/// per failure up to 5 min.
pub fn backoff_after(failures: u32) -> i64 {
    Backoff::KUBELET.after(failures.max(1))
}

#[derive(Clone, Debug)]
enum Record {
    Running,
    Done {
        at: DateTime<Utc>,
    },
    Failed {
        at: DateTime<Utc>,
        failures: u32,
        message: String,
        /// The registry could not be reached (a present image may then be used).
        unreachable: bool,
    },
}

/// Pull state per normalised reference, shared with the pull tasks.
#[derive(Clone)]
pub struct Pulls {
    puller: Option<Arc<Puller>>,
    records: Arc<Mutex<BTreeMap<String, Record>>>,
}

/// One round's verdicts: the state of every container's image, the images ready to run (by
/// reference as written in the pod), and which of those this kubelet has just pulled.
#[derive(Default)]
pub struct Verdicts {
    pub states: BTreeMap<(String, String), ImageState>,
    pub ready: BTreeMap<String, ImageInfo>,
    pub pulled: BTreeSet<String>,
}

impl Pulls {
    pub fn new(puller: Option<Arc<Puller>>) -> Self {
        Pulls {
            puller,
            records: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    fn records(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Record>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn store(&self) -> Option<&ImageStore> {
        self.puller.as_ref().map(|p| p.store())
    }

    /// Decides each desired container's image state, starting the pulls that are due.
    /// `wake` is signalled when a pull ends.
    pub fn evaluate(
        &self,
        shared: &Arc<Shared>,
        desired: &BTreeMap<String, DesiredPod>,
        observed: &BTreeMap<String, ObservedPod>,
        now: DateTime<Utc>,
        wake: &mpsc::Sender<()>,
    ) -> Verdicts {
        let mut out = Verdicts::default();
        let mut local: BTreeMap<String, Result<ImageInfo, ImageError>> = BTreeMap::new();
        for d in desired.values() {
            let created = d
                .pod
                .metadata
                .creation_timestamp
                .as_ref()
                .and_then(|t| DateTime::<Utc>::from_timestamp(t.0.as_second(), 0));
            for c in d.containers() {
                let image = c.image.clone().unwrap_or_default();
                let slot = (d.key.clone(), c.name.clone());
                let policy = c
                    .image_pull_policy
                    .clone()
                    // Admission sets it on every pod; this covers pods stored before it did.
                    .unwrap_or_else(|| default_pull_policy(&image).to_string());
                let parsed = match reference::parse(&image) {
                    Ok(r) => r,
                    Err(e) => {
                        out.states.insert(
                            slot,
                            ImageState::Unavailable {
                                reason: "InvalidImageName".into(),
                                message: format!(
                                    "Failed to apply default image tag \"{image}\": {e}"
                                ),
                            },
                        );
                        continue;
                    }
                };
                // Pulls (and their back-off) are per image and credentials: a pod without the
                // right Secret must not hold back one that has it.
                let creds = pull_credentials(shared, d, &parsed);
                let key = record_key(&parsed, creds.as_ref());
                let present = local
                    .entry(image.clone())
                    .or_insert_with(|| self.resolve(&image))
                    .as_ref()
                    .ok()
                    .cloned();
                let record = self.records().get(&key).cloned();
                let fresh = match &record {
                    Some(Record::Done { at }) => {
                        created.is_none_or(|c| *at >= c - Duration::seconds(1))
                    }
                    Some(Record::Failed { unreachable, .. }) => *unreachable,
                    _ => false,
                };
                // A container that runs already needs no pull (after an agent restart, `Always`
                // would otherwise pull for every running container).
                let running = observed
                    .get(&d.key)
                    .and_then(|o| o.containers.get(&c.name))
                    .is_some_and(|oc| {
                        matches!(
                            oc.latest.state,
                            AttemptState::Running { .. } | AttemptState::Creating
                        )
                    });
                let ready = match (policy.as_str(), &present) {
                    (_, None) => false,
                    ("Always", Some(_)) => fresh || running,
                    (_, Some(_)) => true,
                };
                if ready {
                    if let Some(info) = present {
                        if matches!(record, Some(Record::Done { at }) if now - at < Duration::seconds(60))
                        {
                            out.pulled.insert(image.clone());
                        }
                        out.ready.insert(image.clone(), info);
                    }
                    out.states.insert(slot, ImageState::Ready);
                    continue;
                }
                if policy == "Never" {
                    out.states.insert(
                        slot,
                        ImageState::Unavailable {
                            reason: "ErrImageNeverPull".into(),
                            message: format!(
                                "Container image \"{image}\" is not present with pull policy of Never"
                            ),
                        },
                    );
                    continue;
                }
                let state = match record {
                    Some(Record::Running) => ImageState::Pulling,
                    Some(Record::Failed {
                        at,
                        failures,
                        message,
                        ..
                    }) if now < at + Duration::seconds(backoff_after(failures)) => {
                        if now - at < Duration::seconds(ERR_IMAGE_PULL_FOR) {
                            ImageState::Unavailable {
                                reason: "ErrImagePull".into(),
                                message,
                            }
                        } else {
                            ImageState::Unavailable {
                                reason: "ImagePullBackOff".into(),
                                message: format!("Back-off pulling image \"{image}\": {message}"),
                            }
                        }
                    }
                    _ => {
                        let failures = match record {
                            Some(Record::Failed { failures, .. }) => failures,
                            _ => 0,
                        };
                        self.start(shared.clone(), d, &image, key, creds, failures, wake);
                        ImageState::Pulling
                    }
                };
                out.states.insert(slot, state);
            }
        }
        out
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

    #[allow(clippy::too_many_arguments)]
    fn start(
        &self,
        shared: Arc<Shared>,
        d: &DesiredPod,
        image: &str,
        key: String,
        credentials: Option<Credentials>,
        failures: u32,
        wake: &mpsc::Sender<()>,
    ) {
        let target = EventTarget {
            namespace: d.namespace(),
            name: d.name(),
            uid: d.uid(),
        };
        let Some(puller) = self.puller.clone() else {
            self.records().insert(
                key,
                Record::Failed {
                    at: Utc::now(),
                    failures: failures + 1,
                    message: "this node has no image store".into(),
                    unreachable: false,
                },
            );
            return;
        };
        self.records().insert(key.clone(), Record::Running);
        super::record_event(
            &shared,
            &target,
            EventType::Normal,
            "Pulling",
            &format!("Pulling image \"{image}\""),
        );
        let records = self.records.clone();
        let image = image.to_string();
        let wake = wake.clone();
        tokio::spawn(async move {
            let began = std::time::Instant::now();
            let req = PullRequest {
                reference: image.clone(),
                credentials,
            };
            let result = puller.pull(&req, None).await;
            let now = Utc::now();
            let record = match &result {
                Ok(img) => {
                    let size: u64 = puller
                        .store()
                        .list()
                        .iter()
                        .find(|s| s.digest == img.digest)
                        .map(|s| s.size)
                        .unwrap_or(0);
                    super::record_event(
                        &shared,
                        &target,
                        EventType::Normal,
                        "Pulled",
                        &format!(
                            "Successfully pulled image \"{image}\" in {:.3}s. Image size: {size} bytes.",
                            began.elapsed().as_secs_f64()
                        ),
                    );
                    Record::Done { at: now }
                }
                Err(e) => {
                    let message = e.to_string();
                    tracing::warn!(%image, error = %message, "image pull failed");
                    super::record_event(
                        &shared,
                        &target,
                        EventType::Warning,
                        "Failed",
                        &format!("Failed to pull image \"{image}\": {message}"),
                    );
                    super::record_event(
                        &shared,
                        &target,
                        EventType::Warning,
                        "Failed",
                        "Error: ErrImagePull",
                    );
                    Record::Failed {
                        at: now,
                        failures: failures + 1,
                        message,
                        unreachable: matches!(e, PullError::Unreachable(_)),
                    }
                }
            };
            records
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key, record);
            let _ = wake.try_send(());
        });
    }
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
    fn backoff_doubles_to_five_minutes() {
        let b: Vec<i64> = (1..=8).map(backoff_after).collect();
        assert_eq!(b, vec![10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(backoff_after(u32::MAX), 300);
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
