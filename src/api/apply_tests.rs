//! Tests of `apply.rs`: ownership by apply and by ordinary writes, conflicts, removal.

use super::*;
use crate::api::resources::{service_merge_keys, workload_merge_keys};

fn req(manager: &str, force: bool) -> Apply<'_> {
    Apply {
        manager,
        force,
        api_version: "v1",
        now: "2026-12-07T09:00:00Z",
        keys: workload_merge_keys,
    }
}

fn update<'a>(manager: &'a str, subresource: &'a str) -> Update<'a> {
    Update {
        manager,
        api_version: "v1",
        now: "2026-12-07T10:00:00Z",
        keys: workload_merge_keys,
        subresource,
    }
}

fn cm(data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": data})
}

fn deploy(containers: Value) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
           "spec": {"template": {"spec": {"containers": containers}}}})
}

fn managers(object: &Value) -> Vec<(String, Value)> {
    object["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["manager"].as_str().unwrap().to_string(),
                e["fieldsV1"].clone(),
            )
        })
        .collect()
}

#[test]
fn create_then_reapply_removes_what_is_no_longer_applied() {
    let first = apply(None, &cm(json!({"a": "1", "b": "2"})), &req("m", false)).unwrap();
    assert_eq!(first["data"], json!({"a": "1", "b": "2"}));
    assert_eq!(
        managers(&first),
        vec![("m".into(), json!({"f:data": {"f:a": {}, "f:b": {}}}))]
    );
    let entry = &first["metadata"]["managedFields"][0];
    assert_eq!(entry["operation"], "Apply");
    assert_eq!(entry["fieldsType"], "FieldsV1");
    assert_eq!(entry["time"], "2026-12-07T09:00:00Z");
    let second = apply(Some(&first), &cm(json!({"a": "3"})), &req("m", false)).unwrap();
    assert_eq!(second["data"], json!({"a": "3"}));
    assert_eq!(
        managers(&second),
        vec![("m".into(), json!({"f:data": {"f:a": {}}}))]
    );
    // Nothing applied any more: the emptied map goes, and so does the entry.
    let third = apply(Some(&second), &cm(json!(null)), &req("m", false)).unwrap();
    assert_eq!(third.get("data"), None, "{third}");
    assert_eq!(third["metadata"].get("managedFields"), None, "{third}");
}

#[test]
fn another_manager_conflicts_unless_forced_and_shares_equal_values() {
    let first = apply(None, &cm(json!({"a": "1", "b": "2"})), &req("m", false)).unwrap();
    let err = apply(Some(&first), &cm(json!({"a": "9"})), &req("other", false)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "Apply failed with 1 conflict: conflict with \"m\" using v1: .data.a"
    );
    // The same value is shared, not a conflict.
    let shared = apply(Some(&first), &cm(json!({"b": "2"})), &req("other", false)).unwrap();
    assert_eq!(managers(&shared).len(), 2);
    // Forced: `other` takes `a` over; `m` keeps `b`.
    let forced = apply(Some(&first), &cm(json!({"a": "9"})), &req("other", true)).unwrap();
    assert_eq!(forced["data"], json!({"a": "9", "b": "2"}));
    assert_eq!(
        managers(&forced),
        vec![
            ("m".into(), json!({"f:data": {"f:b": {}}})),
            ("other".into(), json!({"f:data": {"f:a": {}}}))
        ]
    );
    // `m` stops applying `a`: it no longer owns it, so `other`'s value stays.
    let again = apply(Some(&forced), &cm(json!({"b": "2"})), &req("m", false)).unwrap();
    assert_eq!(again["data"], json!({"a": "9", "b": "2"}));
    // A field still owned by another manager is kept when one stops applying it.
    let both = apply(Some(&shared), &cm(json!({"a": "1"})), &req("m", false)).unwrap();
    assert_eq!(both["data"], json!({"a": "1", "b": "2"}));
}

#[test]
fn associative_lists_are_owned_per_item() {
    let first = apply(
        None,
        &deploy(json!([{"name": "a", "image": "x"}, {"name": "b", "image": "y"}])),
        &req("m", false),
    )
    .unwrap();
    let fields = &managers(&first)[0].1;
    assert_eq!(
        fields["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"a\"}"],
        json!({".": {}, "f:name": {}, "f:image": {}})
    );
    // Item `a` is no longer applied: it goes whole; `b` is merged.
    let second = apply(
        Some(&first),
        &deploy(json!([{"name": "b", "image": "z"}])),
        &req("m", false),
    )
    .unwrap();
    assert_eq!(
        second["spec"]["template"]["spec"]["containers"],
        json!([{"name": "b", "image": "z"}])
    );
    let err = apply(
        Some(&second),
        &deploy(json!([{"name": "b", "image": "w"}])),
        &req("o", false),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains(".spec.template.spec.containers[name=\"b\"].image"),
        "{err}"
    );
    // Another manager adds its own container: both lists of items merge.
    let sidecar = apply(
        Some(&second),
        &deploy(json!([{"name": "s", "image": "s"}])),
        &req("o", false),
    )
    .unwrap();
    assert_eq!(
        sidecar["spec"]["template"]["spec"]["containers"],
        json!([{"name": "s", "image": "s"}, {"name": "b", "image": "z"}])
    );
    // `m` stops applying `b` while `o` owns a field in it: the item and that field stay.
    let shared = apply(
        Some(&sidecar),
        &deploy(json!([{"name": "s", "image": "s"}, {"name": "b", "image": "z", "args": ["x"]}])),
        &req("o", false),
    )
    .unwrap();
    let dropped = apply(Some(&shared), &deploy(json!([])), &req("m", false)).unwrap();
    assert_eq!(
        dropped["spec"]["template"]["spec"]["containers"],
        json!([{"name": "s", "image": "s"}, {"name": "b", "image": "z", "args": ["x"]}]),
        "{dropped}"
    );
}

#[test]
fn ports_are_keyed_by_port_and_protocol() {
    let ports = |p: Value| deploy(json!([{"name": "a", "image": "x", "ports": p}]));
    let first = apply(
        None,
        &ports(json!([{"containerPort": 53}, {"containerPort": 53, "protocol": "UDP"}])),
        &req("m", false),
    )
    .unwrap();
    let c = &managers(&first)[0].1["f:spec"]["f:template"]["f:spec"]["f:containers"]
        ["k:{\"name\":\"a\"}"]["f:ports"];
    assert!(
        c.get("k:{\"containerPort\":53,\"protocol\":\"TCP\"}")
            .is_some(),
        "{c}"
    );
    assert!(
        c.get("k:{\"containerPort\":53,\"protocol\":\"UDP\"}")
            .is_some(),
        "{c}"
    );
    let second = apply(
        Some(&first),
        &ports(json!([{"containerPort": 53, "protocol": "UDP"}])),
        &req("m", false),
    )
    .unwrap();
    assert_eq!(
        second["spec"]["template"]["spec"]["containers"][0]["ports"],
        json!([{"containerPort": 53, "protocol": "UDP"}])
    );
    // A Service's ports: port and protocol.
    let svc = |p: Value| json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": p}});
    let request = Apply {
        keys: service_merge_keys,
        ..req("m", false)
    };
    let s = apply(
        None,
        &svc(json!([{"port": 80, "targetPort": 8080}])),
        &request,
    )
    .unwrap();
    assert!(managers(&s)[0].1["f:spec"]["f:ports"]
        .get("k:{\"port\":80,\"protocol\":\"TCP\"}")
        .is_some());
}

#[test]
fn what_cannot_be_applied_is_refused() {
    let refused = |applied: Value| match apply(None, &applied, &req("m", false)) {
        Err(ApplyError::Invalid(message)) => message,
        other => panic!("{applied} was not refused: {other:?}"),
    };
    assert!(refused(cm(json!({"$patch": "replace"}))).contains("directives"));
    let mut with_managed = cm(json!({}));
    with_managed["metadata"]["managedFields"] = json!([]);
    assert!(refused(with_managed).contains("managedFields must be nil"));
    assert_eq!(
        refused(deploy(json!([{"image": "x"}]))),
        ".spec.template.spec.containers: element 0: associative list with keys has an element \
         that omits key field \"name\" (and doesn't have default value)"
    );
    assert_eq!(
        refused(deploy(json!([{"name": "a"}, {"name": "a"}]))),
        ".spec.template.spec.containers: duplicate entries for key [name=\"a\"]"
    );
    assert!(refused(deploy(json!(["a"]))).contains("not a map"));
}

#[test]
fn updates_own_what_they_change() {
    // A create by `kubectl-create` owns every field it wrote.
    let mut created = cm(json!({"a": "1", "b": "2"}));
    record_update(None, &mut created, &update("kubectl-create", "")).unwrap();
    assert_eq!(
        managers(&created),
        vec![(
            "kubectl-create".into(),
            json!({"f:data": {"f:a": {}, "f:b": {}}})
        )]
    );
    assert_eq!(
        created["metadata"]["managedFields"][0]["operation"],
        "Update"
    );
    // An edit of `a` and a removal of `b`: the editor owns `a`, nobody owns `b`.
    let mut edited = created.clone();
    edited["data"] = json!({"a": "9"});
    record_update(Some(&created), &mut edited, &update("kubectl-edit", "")).unwrap();
    assert_eq!(
        managers(&edited),
        vec![("kubectl-edit".into(), json!({"f:data": {"f:a": {}}}))]
    );
    // An applier that owns `a` loses it to an update; it conflicts with the updater next.
    let applied = apply(None, &cm(json!({"a": "1"})), &req("kubectl", false)).unwrap();
    let mut patched = applied.clone();
    patched["data"]["a"] = json!("2");
    record_update(Some(&applied), &mut patched, &update("kubectl-patch", "")).unwrap();
    assert_eq!(managers(&patched)[0].0, "kubectl-patch");
    let err = apply(
        Some(&patched),
        &cm(json!({"a": "1"})),
        &req("kubectl", false),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "Apply failed with 1 conflict: conflict with \"kubectl-patch\" using v1 at \
         2026-12-07T10:00:00Z: .data.a"
    );
    // An unchanged write records nothing new.
    let mut same = patched.clone();
    record_update(Some(&patched), &mut same, &update("other", "")).unwrap();
    assert_eq!(same, patched);
}

#[test]
fn subresource_writes_and_sent_managed_fields() {
    let created = apply(
        None,
        &json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "d"}, "spec": {"replicas": 1}}),
        &req("kubectl", false),
    )
    .unwrap();
    let mut scaled = created.clone();
    scaled["spec"]["replicas"] = json!(3);
    record_update(
        Some(&created),
        &mut scaled,
        &update("kubectl-scale", "scale"),
    )
    .unwrap();
    let entries = scaled["metadata"]["managedFields"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["subresource"], "scale");
    assert_eq!(
        entries[0]["fieldsV1"],
        json!({"f:spec": {"f:replicas": {}}})
    );
    // `[{}]` resets ownership; an empty list keeps what was there.
    let mut reset = scaled.clone();
    reset["metadata"]["managedFields"] = json!([{}]);
    record_update(Some(&scaled), &mut reset, &update("x", "")).unwrap();
    assert_eq!(reset["metadata"].get("managedFields"), None, "{reset}");
    let mut kept = scaled.clone();
    kept["metadata"]["managedFields"] = json!([]);
    record_update(Some(&scaled), &mut kept, &update("x", "")).unwrap();
    assert_eq!(
        kept["metadata"]["managedFields"],
        scaled["metadata"]["managedFields"]
    );
    // Malformed entries are refused naming the field.
    let mut bad = scaled.clone();
    bad["metadata"]["managedFields"] = json!([{"manager": "x", "operation": "Merge"}]);
    let err = record_update(Some(&scaled), &mut bad, &update("x", "")).unwrap_err();
    assert!(
        matches!(&err, ApplyError::ManagedFields { field, .. } if field == "metadata.managedFields[0].operation"),
        "{err:?}"
    );
}

proptest::proptest! {
    /// FieldsV1 round-trips, and applying the same configuration twice changes nothing.
    #[test]
    fn fields_round_trip_and_apply_is_idempotent(
        data in proptest::collection::btree_map("[a-c]{1,2}", "[x-z]{0,2}", 0..5),
        labels in proptest::collection::btree_map("[a-c]", "[x-z]", 0..3),
    ) {
        let mut applied = cm(json!(data));
        applied["metadata"]["labels"] = json!(labels);
        let set = fields_of(&applied, workload_merge_keys).unwrap();
        proptest::prop_assert_eq!(from_fields_v1(&to_fields_v1(&set)).unwrap(), set);
        let once = apply(None, &applied, &req("m", false)).unwrap();
        let twice = apply(Some(&once), &applied, &req("m", false)).unwrap();
        proptest::prop_assert_eq!(once, twice);
    }

    /// Whatever two managers apply in turn, every field in the object that either applied
    /// last is owned by someone, and a manager's re-apply never conflicts with itself.
    #[test]
    fn two_managers_forcing_in_turn_own_what_they_applied(
        a in proptest::collection::btree_map("[a-c]", "[x-z]", 1..4),
        b in proptest::collection::btree_map("[a-c]", "[x-z]", 1..4),
    ) {
        let first = apply(None, &cm(json!(a)), &req("m", false)).unwrap();
        let second = apply(Some(&first), &cm(json!(b)), &req("o", true)).unwrap();
        for (k, v) in &b {
            proptest::prop_assert_eq!(&second["data"][k], &json!(v));
        }
        let owned: BTreeSet<String> = managers(&second)
            .iter()
            .flat_map(|(_, f)| f["f:data"].as_object().cloned().unwrap_or_default().into_iter().map(|(k, _)| k))
            .collect();
        for k in second["data"].as_object().into_iter().flatten().map(|(k, _)| k) {
            proptest::prop_assert!(owned.contains(&format!("f:{k}")), "{} unowned", k);
        }
        proptest::prop_assert!(apply(Some(&second), &cm(json!(b)), &req("o", false)).is_ok());
    }

    /// One manager applying container lists in turn: the object holds exactly the containers
    /// of its last configuration, with their images, whatever it applied before.
    #[test]
    fn a_manager_alone_gets_exactly_its_last_list(
        before in proptest::collection::btree_map("[a-d]", "[x-z]", 0..4),
        after in proptest::collection::btree_map("[a-d]", "[x-z]", 0..4),
    ) {
        let list = |m: &std::collections::BTreeMap<String, String>| {
            json!(m.iter().map(|(n, i)| json!({"name": n, "image": i})).collect::<Vec<_>>())
        };
        let first = apply(None, &deploy(list(&before)), &req("m", false)).unwrap();
        let second = apply(Some(&first), &deploy(list(&after)), &req("m", false)).unwrap();
        let containers = &second["spec"]["template"]["spec"]["containers"];
        if after.is_empty() {
            proptest::prop_assert!(containers.as_array().is_none_or(|c| c.is_empty()), "{}", second);
        } else {
            proptest::prop_assert_eq!(containers, &list(&after));
        }
    }
}
