//! ControllerRevisions (apps/v1), pure: the history of a StatefulSet's or DaemonSet's pod
//! templates, as Kubernetes' controllers keep it (`docs/workloads.md`, "ControllerRevisions").
//!
//! One revision per distinct template: `<owner>-<hash>` (the hash of the template, as the pods'
//! `controller-revision-hash` label has it), labelled with the template's labels plus
//! `controller-revision-hash: <hash>`, controlled by its owner, with the owner's annotations
//! (but `kubectl.kubernetes.io/last-applied-configuration`) and `data` holding the patch
//! kubectl's rollbacker sends back, `{"spec":{"template":{...,"$patch":"replace"}}}`.
//! `revision` numbers increase: a new template gets max+1, and a template that becomes current
//! again (an undo) keeps its object, renumbered max+1. Revisions beyond
//! `revisionHistoryLimit` (default 10) that no pod runs and that are not current are deleted,
//! lowest numbers first. The leader writes them; running [`sync`] on its own result writes
//! nothing. Two leaders that each made a revision of another template may give both the same
//! number: the one current after the heal is renumbered max+1 (a tie is never left standing).

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::hash::derived_uid;
use super::object::{self, controller};
use super::snapshot::Write;
use crate::model::workload::CONTROLLER_REVISIONS;

/// The label naming a revision's template hash (on revisions and on the owner's pods).
pub const HASH_LABEL: &str = "controller-revision-hash";
/// How many old revisions are kept when the owner does not say (Kubernetes' default).
pub const DEFAULT_HISTORY_LIMIT: i64 = 10;
/// Owner annotation not copied to its revisions (it only repeats the owner's manifest).
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// `<owner>-<hash>`.
pub fn name(owner: &str, hash: &str) -> String {
    format!("{owner}-{hash}")
}

/// The `data` of a revision of `template`: the strategic-merge patch kubectl 1.32's
/// StatefulSet and DaemonSet rollbackers send back to restore it.
pub fn patch_of(template: &Value) -> Value {
    let mut template = match template {
        t @ Value::Object(_) => t.clone(),
        _ => json!({}),
    };
    template["$patch"] = json!("replace");
    json!({"spec": {"template": template}})
}

/// The template a revision holds (its `data` without the `$patch` directive), if any.
pub fn template_of(revision: &Value) -> Option<Value> {
    let mut template = revision["data"]["spec"]["template"].clone();
    template.as_object_mut()?.remove("$patch");
    Some(template)
}

/// `revision` of a ControllerRevision (0 when absent).
pub fn number(revision: &Value) -> i64 {
    revision["revision"].as_i64().unwrap_or(0)
}

/// The revisions in `namespace` controlled by the owner of `owner_uid`, by number then name.
pub fn owned<'a>(revisions: &'a [Value], namespace: &str, owner_uid: &str) -> Vec<&'a Value> {
    let mut out: Vec<&Value> = revisions
        .iter()
        .filter(|r| object::namespace(r) == namespace)
        .filter(|r| matches!(controller(r), Some((_, uid)) if uid == owner_uid))
        .collect();
    out.sort_by(|a, b| (number(a), object::name(a)).cmp(&(number(b), object::name(b))));
    out
}

/// The revision named `name` among `owned` (the owner's), if any.
pub fn find<'a>(owned: &[&'a Value], name: &str) -> Option<&'a Value> {
    owned.iter().copied().find(|r| object::name(r) == name)
}

/// A StatefulSet or DaemonSet whose history [`sync`] keeps.
pub struct Owner<'a> {
    pub object: &'a Value,
    /// `StatefulSet` or `DaemonSet`.
    pub kind: &'static str,
    /// The hash of its current template (`template_hash` of it without nulls).
    pub hash: String,
    /// The template as hashed (nulls dropped).
    pub template: Value,
    /// Names of the revisions its pods run: never trimmed.
    pub live: BTreeSet<String>,
}

fn new_revision(owner: &Owner<'_>, name: &str, revision: i64, now: DateTime<Utc>) -> Value {
    let mut labels = match &owner.template["metadata"]["labels"] {
        l @ Value::Object(_) => l.clone(),
        _ => json!({}),
    };
    labels[HASH_LABEL] = json!(owner.hash);
    let mut annotations = match &owner.object["metadata"]["annotations"] {
        a @ Value::Object(_) => a.clone(),
        _ => json!({}),
    };
    if let Some(m) = annotations.as_object_mut() {
        m.remove(LAST_APPLIED);
    }
    let mut meta = json!({
        "name": name,
        "namespace": object::namespace(owner.object),
        "uid": derived_uid("ControllerRevision", object::uid(owner.object), name),
        "labels": labels,
        "ownerReferences": object::owner_reference(owner.object, owner.kind),
        "creationTimestamp": object::timestamp(now),
        "resourceVersion": object::resource_version(now),
    });
    if annotations.as_object().is_some_and(|m| !m.is_empty()) {
        meta["annotations"] = annotations;
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "ControllerRevision",
        "metadata": meta,
        "data": patch_of(&owner.template),
        "revision": revision,
    })
}

fn put(revision: &Value) -> Write {
    Write::PutObject {
        resource: CONTROLLER_REVISIONS,
        namespace: object::namespace(revision).to_string(),
        name: object::name(revision).to_string(),
        object: revision.clone(),
    }
}

/// `spec.revisionHistoryLimit` of an owner (default 10; negative reads as 0).
pub fn history_limit(owner: &Value) -> usize {
    owner["spec"]["revisionHistoryLimit"]
        .as_i64()
        .unwrap_or(DEFAULT_HISTORY_LIMIT)
        .max(0) as usize
}

/// Keeps `owner`'s history among `revisions` (all stored ControllerRevisions): the revision of
/// its current template exists and has the one highest number, and at most
/// `revisionHistoryLimit` others that no pod runs are kept. Returns the writes, and the
/// revision of the current template as it is after them (`None` while a revision of that name
/// belongs to another owner: it waits for garbage collection).
pub fn sync(
    owner: &Owner<'_>,
    revisions: &[Value],
    now: DateTime<Utc>,
) -> (Vec<Write>, Option<Value>) {
    let namespace = object::namespace(owner.object);
    let owned = owned(revisions, namespace, object::uid(owner.object));
    let current_name = name(object::name(owner.object), &owner.hash);
    let max = owned.iter().map(|r| number(r)).max().unwrap_or(0);
    let mut writes = Vec::new();
    let current = match find(&owned, &current_name) {
        Some(existing) => {
            let n = number(existing);
            let tied = owned
                .iter()
                .any(|r| number(r) == n && object::name(r) != current_name);
            if n < max || tied {
                let mut renumbered = existing.clone();
                renumbered["revision"] = json!(max + 1);
                renumbered["metadata"]["resourceVersion"] = json!(object::resource_version(now));
                writes.push(put(&renumbered));
                Some(renumbered)
            } else {
                Some(existing.clone())
            }
        }
        None => {
            let taken = revisions
                .iter()
                .any(|r| object::namespace(r) == namespace && object::name(r) == current_name);
            if taken {
                None
            } else {
                let made = new_revision(owner, &current_name, max + 1, now);
                writes.push(put(&made));
                Some(made)
            }
        }
    };
    let old: Vec<&Value> = owned
        .iter()
        .copied()
        .filter(|r| object::name(r) != current_name && !owner.live.contains(object::name(r)))
        .collect();
    let limit = history_limit(owner.object);
    for r in old.iter().take(old.len().saturating_sub(limit)) {
        writes.push(Write::DeleteObject {
            resource: CONTROLLER_REVISIONS,
            namespace: namespace.to_string(),
            name: object::name(r).to_string(),
        });
    }
    (writes, current)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn owner_object(limit: Option<i64>) -> Value {
        let mut o = json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "u-web",
                         "annotations": {"kubernetes.io/change-cause": "v1", LAST_APPLIED: "{}"}},
            "spec": {},
        });
        if let Some(l) = limit {
            o["spec"]["revisionHistoryLimit"] = json!(l);
        }
        o
    }

    fn owner<'a>(object: &'a Value, image: &str, live: &[&str]) -> Owner<'a> {
        let template = json!({"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "c", "image": image}]}});
        Owner {
            object,
            kind: "StatefulSet",
            hash: format!("h{image}"),
            template,
            live: live.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn apply(revisions: &mut Vec<Value>, writes: &[Write]) {
        for w in writes {
            match w {
                Write::PutObject { name, object, .. } => {
                    revisions.retain(|r| object::name(r) != name);
                    revisions.push(object.clone());
                }
                Write::DeleteObject { name, .. } => revisions.retain(|r| object::name(r) != name),
                _ => panic!("unexpected {w:?}"),
            }
        }
    }

    fn numbers(revisions: &[Value]) -> Vec<(String, i64)> {
        let mut v: Vec<_> = revisions
            .iter()
            .map(|r| (object::name(r).to_string(), number(r)))
            .collect();
        v.sort_by_key(|(_, n)| *n);
        v
    }

    #[test]
    fn a_revision_holds_kubectls_patch_and_the_owners_labels_and_annotations() {
        let o = owner_object(None);
        let (writes, current) = sync(&owner(&o, "a", &[]), &[], DateTime::UNIX_EPOCH);
        assert_eq!(writes.len(), 1);
        let r = current.unwrap();
        assert_eq!(object::name(&r), "web-ha");
        assert_eq!(number(&r), 1);
        assert_eq!(
            r["metadata"]["labels"],
            json!({"app": "web", HASH_LABEL: "ha"})
        );
        assert_eq!(
            r["metadata"]["annotations"],
            json!({"kubernetes.io/change-cause": "v1"})
        );
        assert_eq!(controller(&r), Some(("StatefulSet", "u-web")));
        assert_eq!(r["data"]["spec"]["template"]["$patch"], "replace");
        assert_eq!(
            template_of(&r).unwrap(),
            owner(&o, "a", &[]).template,
            "the template comes back without the directive"
        );
    }

    #[test]
    fn an_undo_renumbers_the_old_revision_and_the_history_is_trimmed() {
        let o = owner_object(Some(1));
        let mut revisions = Vec::new();
        for image in ["a", "b", "a", "c"] {
            let (writes, _) = sync(&owner(&o, image, &[]), &revisions, DateTime::UNIX_EPOCH);
            apply(&mut revisions, &writes);
        }
        // a:1, b:2, a→3, c:4; limit 1 keeps one old revision besides the current one.
        assert_eq!(
            numbers(&revisions),
            vec![("web-ha".into(), 3), ("web-hc".into(), 4)]
        );
        // A revision a pod still runs is kept beyond the limit.
        let (writes, _) = sync(
            &owner(&o, "d", &["web-ha"]),
            &revisions,
            DateTime::UNIX_EPOCH,
        );
        apply(&mut revisions, &writes);
        assert_eq!(
            numbers(&revisions),
            vec![
                ("web-ha".into(), 3),
                ("web-hc".into(), 4),
                ("web-hd".into(), 5)
            ]
        );
    }

    #[test]
    fn a_tie_left_by_two_leaders_is_broken_and_a_strangers_name_is_waited_for() {
        let o = owner_object(None);
        let (w1, a) = sync(&owner(&o, "a", &[]), &[], DateTime::UNIX_EPOCH);
        let (_, b) = sync(&owner(&o, "b", &[]), &[], DateTime::UNIX_EPOCH);
        assert!(!w1.is_empty());
        let mut revisions = vec![a.unwrap(), b.unwrap()];
        let (writes, current) = sync(&owner(&o, "b", &[]), &revisions, DateTime::UNIX_EPOCH);
        apply(&mut revisions, &writes);
        assert_eq!(number(&current.unwrap()), 2);
        assert_eq!(
            numbers(&revisions),
            vec![("web-ha".into(), 1), ("web-hb".into(), 2)]
        );
        let mut stranger = revisions[0].clone();
        stranger["metadata"]["ownerReferences"][0]["uid"] = json!("u-old");
        let (writes, current) = sync(&owner(&o, "a", &[]), &[stranger], DateTime::UNIX_EPOCH);
        assert!(writes.is_empty() && current.is_none());
    }

    proptest! {
        /// Whatever the sequence of templates and limits: sync is idempotent, the current
        /// template's revision has the one highest number, numbers are unique, and at most
        /// `limit` revisions besides the current one are kept.
        #[test]
        fn history_stays_ordered_unique_and_bounded(
            steps in proptest::collection::vec((0u8..5, 0i64..4), 1..30),
        ) {
            let mut revisions = Vec::new();
            for (image, limit) in steps {
                let o = owner_object(Some(limit));
                let image = image.to_string();
                let me = owner(&o, &image, &[]);
                let (writes, current) = sync(&me, &revisions, DateTime::UNIX_EPOCH);
                apply(&mut revisions, &writes);
                let (again, _) = sync(&me, &revisions, DateTime::UNIX_EPOCH);
                prop_assert!(again.is_empty(), "not idempotent: {again:?}");
                let current = current.unwrap();
                let ns: Vec<i64> = revisions.iter().map(number).collect();
                let unique: BTreeSet<i64> = ns.iter().copied().collect();
                prop_assert_eq!(unique.len(), ns.len());
                prop_assert_eq!(ns.iter().max().copied(), Some(number(&current)));
                prop_assert!(revisions.len() <= limit as usize + 1);
            }
        }
    }
}
