//! A container's image under its `imagePullPolicy`: ready, being pulled, a pull to start, or
//! why it cannot be used (`ErrImagePull`, then `ImagePullBackOff` with Kubernetes' back-off,
//! `ErrImageNeverPull`). Pure: the shell resolves the local image and runs the pulls.

use chrono::{DateTime, Duration, Utc};

use super::outcome::PullRecord;
use super::ImageState;
use crate::model::backoff::Backoff;

/// For this long after a failure the container shows `ErrImagePull`, then `ImagePullBackOff`.
const ERR_IMAGE_PULL_FOR: i64 = 3;

/// A pull that ended this recently counts as "just pulled" (no "already present" event).
const JUST_PULLED_FOR: i64 = 60;

/// The back-off (seconds) after `failures` failed pulls in a row: Kubernetes' 10 s, doubling
/// per failure up to 5 min.
pub fn backoff_after(failures: u32) -> i64 {
    Backoff::KUBELET.after(failures.max(1))
}

/// What the decision looks at for one container.
#[derive(Clone, Copy, Debug)]
pub struct ImageFacts<'a> {
    /// The reference as the pod writes it.
    pub image: &'a str,
    /// `Always`, `IfNotPresent` or `Never`.
    pub policy: &'a str,
    /// The image is in the node's store.
    pub present: bool,
    /// The pull record of this image and the pod's credentials.
    pub record: Option<&'a PullRecord>,
    /// The container runs already (no pull for it, whatever the policy).
    pub running: bool,
    /// When the pod was created (a pull done before it is not fresh for `Always`).
    pub created: Option<DateTime<Utc>>,
    pub now: DateTime<Utc>,
}

/// The decision for one container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageVerdict {
    pub state: ImageState,
    /// Ready and pulled by this kubelet within the last minute.
    pub just_pulled: bool,
    /// Start a pull now; the failures in a row before it.
    pub pull: Option<u32>,
}

/// Decides the state of a container's image.
pub fn verdict(f: ImageFacts<'_>) -> ImageVerdict {
    let verdict = |state| ImageVerdict {
        state,
        just_pulled: false,
        pull: None,
    };
    let fresh = match f.record {
        Some(PullRecord::Done { at }) => f.created.is_none_or(|c| *at >= c - Duration::seconds(1)),
        Some(PullRecord::Failed { unreachable, .. }) => *unreachable,
        _ => false,
    };
    let ready = match (f.policy, f.present) {
        (_, false) => false,
        ("Always", true) => fresh || f.running,
        (_, true) => true,
    };
    if ready {
        let just_pulled = matches!(f.record,
            Some(PullRecord::Done { at }) if f.now - *at < Duration::seconds(JUST_PULLED_FOR));
        return ImageVerdict {
            state: ImageState::Ready,
            just_pulled,
            pull: None,
        };
    }
    if f.policy == "Never" {
        return verdict(ImageState::Unavailable {
            reason: "ErrImageNeverPull".into(),
            message: format!(
                "Container image \"{}\" is not present with pull policy of Never",
                f.image
            ),
        });
    }
    match f.record {
        Some(PullRecord::Running { .. }) => verdict(ImageState::Pulling),
        Some(PullRecord::Failed {
            at,
            failures,
            message,
            ..
        }) if f.now < *at + Duration::seconds(backoff_after(*failures)) => {
            verdict(if f.now - *at < Duration::seconds(ERR_IMAGE_PULL_FOR) {
                ImageState::Unavailable {
                    reason: "ErrImagePull".into(),
                    message: message.clone(),
                }
            } else {
                ImageState::Unavailable {
                    reason: "ImagePullBackOff".into(),
                    message: format!("Back-off pulling image \"{}\": {message}", f.image),
                }
            })
        }
        other => {
            let failures = match other {
                Some(PullRecord::Failed { failures, .. }) => *failures,
                _ => 0,
            };
            ImageVerdict {
                state: ImageState::Pulling,
                just_pulled: false,
                pull: Some(failures),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    fn facts<'a>(policy: &'a str, present: bool, record: Option<&'a PullRecord>) -> ImageFacts<'a> {
        ImageFacts {
            image: "busybox:1",
            policy,
            present,
            record,
            running: false,
            created: Some(t(0)),
            now: t(100),
        }
    }

    fn reason(v: &ImageVerdict) -> &str {
        match &v.state {
            ImageState::Unavailable { reason, .. } => reason,
            ImageState::Ready => "Ready",
            ImageState::Pulling => "Pulling",
        }
    }

    #[test]
    fn backoff_doubles_to_five_minutes() {
        let b: Vec<i64> = (1..=8).map(backoff_after).collect();
        assert_eq!(b, vec![10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(backoff_after(u32::MAX), 300);
    }

    #[test]
    fn policies_decide_when_a_present_image_is_used() {
        assert_eq!(
            verdict(facts("IfNotPresent", true, None)).state,
            ImageState::Ready
        );
        assert_eq!(
            verdict(facts("Always", true, None)).pull,
            Some(0),
            "Always pulls"
        );
        let done = PullRecord::Done { at: t(50) };
        let v = verdict(facts("Always", true, Some(&done)));
        assert!(v.state == ImageState::Ready && v.just_pulled);
        let old = PullRecord::Done { at: t(-10) };
        assert_eq!(
            verdict(facts("Always", true, Some(&old))).pull,
            Some(0),
            "pulled before the pod"
        );
        let mut running = facts("Always", true, None);
        running.running = true;
        assert_eq!(verdict(running).state, ImageState::Ready);
        assert_eq!(
            reason(&verdict(facts("Never", false, None))),
            "ErrImageNeverPull"
        );
        assert_eq!(verdict(facts("IfNotPresent", false, None)).pull, Some(0));
    }

    #[test]
    fn a_failed_pull_shows_err_image_pull_then_back_off_then_retries() {
        let failed = PullRecord::Failed {
            at: t(100),
            failures: 2,
            message: "refused".into(),
            unreachable: false,
        };
        let at = |now| {
            let mut f = facts("IfNotPresent", false, Some(&failed));
            f.now = t(now);
            verdict(f)
        };
        assert_eq!(reason(&at(101)), "ErrImagePull");
        assert_eq!(reason(&at(110)), "ImagePullBackOff");
        assert_eq!(at(119).pull, None);
        assert_eq!(at(120).pull, Some(2), "after 20 s, the third attempt");
        let running = PullRecord::Running { failures: 2 };
        assert_eq!(
            verdict(facts("Always", false, Some(&running))).state,
            ImageState::Pulling
        );
        // An unreachable registry lets `Always` use the image it has.
        let unreachable = PullRecord::Failed {
            at: t(100),
            failures: 1,
            message: "unreachable".into(),
            unreachable: true,
        };
        assert_eq!(
            verdict(facts("Always", true, Some(&unreachable))).state,
            ImageState::Ready
        );
    }
}
