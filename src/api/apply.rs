//! Field ownership, pure: server-side apply (`application/apply-patch+yaml`) and the
//! `metadata.managedFields` every other write keeps. The set of fields an applied
//! configuration names, ownership of fields per field manager (FieldsV1), conflicts between
//! managers, the merge that removes what a manager stopped applying, and the `Update` entries
//! of ordinary writes. The shell (`objects.rs`) reads the request and stores the result.
//!
//! A faithful subset of Kubernetes' structured-merge-diff: lists with a strategic-merge key
//! are associative (`k:{...}` items, keyed as Kubernetes keys them: containers by `name`,
//! container ports by `containerPort` and `protocol`, ...), every other list is atomic (owned
//! as a whole); maps are granular (`f:` per field).

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

use super::patch::MergeKeys;

/// One step of a field path, as FieldsV1 writes it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Elem {
    /// `f:<name>`: a field of a map.
    Field(String),
    /// `k:<json>`: the item of an associative list with these key values.
    Key(String),
    /// `.`: the list item itself (its existence).
    Item,
    /// Any other FieldsV1 element (`v:`, `i:`) kept as written.
    Other(String),
}

pub type Path = Vec<Elem>;
/// The leaves a manager owns.
pub type FieldSet = BTreeSet<Path>;

/// Metadata fields the server sets, never owned.
const SERVER_METADATA: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

/// Key fields with a default, used when an item omits them (Kubernetes: `protocol: TCP`).
const KEY_DEFAULTS: &[(&str, &str)] = &[("protocol", "TCP")];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub manager: String,
    pub api_version: String,
    /// The owner's subresource (`scale`), empty for the object itself.
    pub subresource: String,
    /// When the owner's fields last changed, for an Update owner (Kubernetes prints it).
    pub time: Option<String>,
    pub path: Path,
}

impl Conflict {
    /// The owner as Kubernetes names it in a conflict: `"kubectl" with subresource "scale"
    /// using apps/v1 at 2026-12-07T10:00:00Z`.
    pub fn owner(&self) -> String {
        let mut out = format!("{:?}", self.manager);
        if !self.subresource.is_empty() {
            out.push_str(&format!(" with subresource {:?}", self.subresource));
        }
        out.push_str(&format!(" using {}", self.api_version));
        if let Some(time) = &self.time {
            out.push_str(&format!(" at {time}"));
        }
        out
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApplyError {
    #[error("{}", conflicts_message(.0))]
    Conflicts(Vec<Conflict>),
    /// The applied configuration cannot be applied (400).
    #[error("{0}")]
    Invalid(String),
    /// `metadata.managedFields` sent by a client is malformed (422 on that field).
    #[error("{field}: {message}")]
    ManagedFields { field: String, message: String },
}

/// Kubernetes' wording: `Apply failed with 1 conflict: conflict with "m" using v1: .data.a`.
fn conflicts_message(conflicts: &[Conflict]) -> String {
    let n = conflicts.len();
    let list: Vec<String> = conflicts
        .iter()
        .map(|c| format!("conflict with {}: {}", c.owner(), display(&c.path)))
        .collect();
    let noun = if n == 1 { "conflict" } else { "conflicts" };
    format!("Apply failed with {n} {noun}: {}", list.join("\n"))
}

/// A path as Kubernetes prints it: `.spec.containers[name="c"].image`.
pub fn display(path: &[Elem]) -> String {
    let mut out = String::new();
    for elem in path {
        match elem {
            Elem::Field(name) => {
                out.push('.');
                out.push_str(name);
            }
            Elem::Key(key) => {
                let fields: Map<String, Value> = serde_json::from_str(key).unwrap_or_default();
                let parts: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
                out.push_str(&format!("[{}]", parts.join(",")));
            }
            Elem::Item => {}
            Elem::Other(text) => out.push_str(&format!("[{text}]")),
        }
    }
    out
}

fn join(dotted: &str, field: &str) -> String {
    if dotted.is_empty() {
        field.to_string()
    } else {
        format!("{dotted}.{field}")
    }
}

/// The key fields of the associative list at `dotted`, as Kubernetes keys it, from the kind's
/// strategic-merge key; `None`: the list is atomic.
fn list_keys(keys: MergeKeys, dotted: &str) -> Option<Vec<&'static str>> {
    Some(match keys(dotted)? {
        "containerPort" => vec!["containerPort", "protocol"],
        "port" => vec!["port", "protocol"],
        "topologyKey" => vec!["topologyKey", "whenUnsatisfiable"],
        key => vec![key],
    })
}

/// Why an item of an associative list has no usable key.
enum KeyError {
    NotAnObject,
    Omits(&'static str),
}

/// The key of an item of an associative list (`{"name":"c"}`), defaults filled in.
fn item_key(item: &Value, fields: &[&'static str]) -> Result<Map<String, Value>, KeyError> {
    let map = item.as_object().ok_or(KeyError::NotAnObject)?;
    let mut key = Map::new();
    for field in fields {
        match map.get(*field).filter(|v| !v.is_null()) {
            Some(v) => {
                key.insert((*field).to_string(), v.clone());
            }
            None => {
                let (_, default) = KEY_DEFAULTS
                    .iter()
                    .find(|(f, _)| f == field)
                    .ok_or(KeyError::Omits(field))?;
                key.insert((*field).to_string(), json!(default));
            }
        }
    }
    Ok(key)
}

/// Whether `item` has the key `key` (defaults filled in).
fn has_key(item: &Value, key: &Map<String, Value>) -> bool {
    let Some(map) = item.as_object() else {
        return false;
    };
    key.iter()
        .all(|(f, v)| match map.get(f).filter(|x| !x.is_null()) {
            Some(x) => x == v,
            None => KEY_DEFAULTS
                .iter()
                .any(|(d, default)| d == f && v == &json!(default)),
        })
}

/// How [`walk`] treats an associative list whose items cannot all be keyed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Keying {
    /// An applied configuration: refused, naming the list.
    Strict,
    /// A stored object or an update: the list is owned as a whole.
    Lenient,
}

/// The fields an applied configuration names (its leaves, and the items of its associative
/// lists), without identity, server-set metadata and status. Items of an associative list
/// that omit a key field or repeat a key are refused.
pub fn fields_of(applied: &Value, keys: MergeKeys) -> Result<FieldSet, ApplyError> {
    object_fields(applied, keys, Keying::Strict)
}

fn object_fields(object: &Value, keys: MergeKeys, keying: Keying) -> Result<FieldSet, ApplyError> {
    let mut out = FieldSet::new();
    if let Some(map) = object.as_object() {
        for (name, value) in map {
            match name.as_str() {
                "apiVersion" | "kind" | "status" => {}
                "metadata" => {
                    for (field, v) in value.as_object().into_iter().flatten() {
                        if !SERVER_METADATA.contains(&field.as_str()) && !v.is_null() {
                            let path = vec![Elem::Field(name.clone()), Elem::Field(field.clone())];
                            walk(v, keys, &join(name, field), path, keying, &mut out)?;
                        }
                    }
                }
                _ if value.is_null() => {}
                _ => walk(
                    value,
                    keys,
                    name,
                    vec![Elem::Field(name.clone())],
                    keying,
                    &mut out,
                )?,
            }
        }
    }
    Ok(out)
}

/// The keys of every item of the associative list `items` (at `path`), or why not.
fn keys_of_items(
    items: &[Value],
    fields: &[&'static str],
    path: &[Elem],
) -> Result<Vec<Map<String, Value>>, String> {
    let mut seen: Vec<Map<String, Value>> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let key = item_key(item, fields).map_err(|e| match e {
            KeyError::NotAnObject => format!(
                "{}: element {i}: associative list with keys has an element that is not a map",
                display(path)
            ),
            KeyError::Omits(field) => format!(
                "{}: element {i}: associative list with keys has an element that omits key \
                 field {field:?} (and doesn't have default value)",
                display(path)
            ),
        })?;
        if seen.contains(&key) {
            return Err(format!(
                "{}: duplicate entries for key {}",
                display(path),
                display(&[Elem::Key(Value::Object(key).to_string())])
            ));
        }
        seen.push(key);
    }
    Ok(seen)
}

fn walk(
    value: &Value,
    keys: MergeKeys,
    dotted: &str,
    path: Path,
    keying: Keying,
    out: &mut FieldSet,
) -> Result<(), ApplyError> {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (name, v) in map.iter().filter(|(_, v)| !v.is_null()) {
                let mut p = path.clone();
                p.push(Elem::Field(name.clone()));
                walk(v, keys, &join(dotted, name), p, keying, out)?;
            }
        }
        Value::Array(items) if !items.is_empty() => {
            let Some(fields) = list_keys(keys, dotted) else {
                out.insert(path);
                return Ok(());
            };
            let item_keys = match keys_of_items(items, &fields, &path) {
                Ok(k) => k,
                Err(message) if keying == Keying::Strict => {
                    return Err(ApplyError::Invalid(message))
                }
                Err(_) => {
                    out.insert(path);
                    return Ok(());
                }
            };
            for (item, key) in items.iter().zip(item_keys) {
                let mut p = path.clone();
                p.push(Elem::Key(Value::Object(key).to_string()));
                let mut me = p.clone();
                me.push(Elem::Item);
                out.insert(me);
                walk(item, keys, dotted, p, keying, out)?;
            }
        }
        _ => {
            out.insert(path);
        }
    }
    Ok(())
}

/// A field set as FieldsV1 (`{"f:spec": {"f:replicas": {}}}`).
pub fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut node = &mut root;
        for elem in path {
            let key = match elem {
                Elem::Field(n) => format!("f:{n}"),
                Elem::Key(k) => format!("k:{k}"),
                Elem::Item => ".".to_string(),
                Elem::Other(t) => t.clone(),
            };
            let child = node.entry(key).or_insert_with(|| json!({}));
            if !child.is_object() {
                *child = json!({});
            }
            let Value::Object(next) = child else {
                unreachable!("just made an object")
            };
            node = next;
        }
    }
    Value::Object(root)
}

/// FieldsV1 as a field set; what is not an object is refused.
pub fn from_fields_v1(fields: &Value) -> Result<FieldSet, String> {
    fn go(node: &Value, path: Path, out: &mut FieldSet) -> Result<(), String> {
        let map = node
            .as_object()
            .ok_or_else(|| "fieldsV1 nodes must be objects".to_string())?;
        if map.is_empty() && !path.is_empty() {
            out.insert(path);
            return Ok(());
        }
        for (key, child) in map {
            let elem = if key == "." {
                Elem::Item
            } else if let Some(n) = key.strip_prefix("f:") {
                Elem::Field(n.to_string())
            } else if let Some(k) = key.strip_prefix("k:") {
                match serde_json::from_str::<Value>(k) {
                    Ok(Value::Object(_)) => Elem::Key(k.to_string()),
                    _ => return Err(format!("{key:?} is not a key of an associative list")),
                }
            } else if key.starts_with("v:") || key.starts_with("i:") {
                Elem::Other(key.clone())
            } else {
                return Err(format!("{key:?} is not a FieldsV1 element"));
            };
            let mut p = path.clone();
            p.push(elem);
            go(child, p, out)?;
        }
        Ok(())
    }
    let mut out = FieldSet::new();
    go(fields, Vec::new(), &mut out)?;
    Ok(out)
}

/// The value at `path` in `object` (`None` if absent).
fn value_at<'a>(object: &'a Value, path: &[Elem]) -> Option<&'a Value> {
    let mut node = object;
    for elem in path {
        node = match elem {
            Elem::Field(n) => node.get(n)?,
            Elem::Key(k) => {
                let key: Map<String, Value> = serde_json::from_str(k).ok()?;
                node.as_array()?.iter().find(|item| has_key(item, &key))?
            }
            Elem::Item => node,
            Elem::Other(_) => return None,
        };
    }
    Some(node)
}

fn value_at_mut<'a>(object: &'a mut Value, path: &[Elem]) -> Option<&'a mut Value> {
    let mut node = object;
    for elem in path {
        node = match elem {
            Elem::Field(n) => node.get_mut(n)?,
            Elem::Key(k) => {
                let key: Map<String, Value> = serde_json::from_str(k).ok()?;
                node.as_array_mut()?
                    .iter_mut()
                    .find(|item| has_key(item, &key))?
            }
            Elem::Item => node,
            Elem::Other(_) => return None,
        };
    }
    Some(node)
}

/// Removes the field or list item at `path` (an item's path ends in `.`).
fn remove_at(object: &mut Value, path: &[Elem]) {
    let path = match path.last() {
        Some(Elem::Item) => &path[..path.len() - 1],
        _ => path,
    };
    let Some((last, parent_path)) = path.split_last() else {
        return;
    };
    let Some(parent) = value_at_mut(object, parent_path) else {
        return;
    };
    match last {
        Elem::Field(n) => {
            if let Some(map) = parent.as_object_mut() {
                map.remove(n);
            }
        }
        Elem::Key(k) => {
            if let (Ok(key), Some(items)) = (
                serde_json::from_str::<Map<String, Value>>(k),
                parent.as_array_mut(),
            ) {
                items.retain(|item| !has_key(item, &key));
            }
        }
        _ => {}
    }
}

/// Whether the field at `path` is a key field of the list item it sits in.
fn is_key_field(path: &[Elem]) -> bool {
    match path {
        [.., Elem::Key(k), Elem::Field(f)] => serde_json::from_str::<Map<String, Value>>(k)
            .map(|key| key.contains_key(f))
            .unwrap_or(false),
        _ => false,
    }
}

/// The applied configuration as it is merged: nulls dropped (a null names no value), key
/// fields with a default filled into the items of associative lists.
fn prepare(value: &Value, keys: MergeKeys, dotted: &str) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), prepare(v, keys, &join(dotted, k))))
                .collect(),
        ),
        Value::Array(items) => {
            let fields = list_keys(keys, dotted);
            Value::Array(
                items
                    .iter()
                    .map(|item| {
                        let mut item = prepare(item, keys, dotted);
                        if let (Some(fields), Some(map)) = (&fields, item.as_object_mut()) {
                            for (field, default) in KEY_DEFAULTS {
                                if fields.contains(field) && !map.contains_key(*field) {
                                    map.insert((*field).to_string(), json!(default));
                                }
                            }
                        }
                        item
                    })
                    .collect(),
            )
        }
        other => other.clone(),
    }
}

/// `applied` merged into `live`: maps field by field, associative lists item by item (the
/// applied items in their order, then the live items it does not name), anything else
/// replaced.
fn merge(live: Option<&Value>, applied: &Value, keys: MergeKeys, dotted: &str) -> Value {
    match (live, applied) {
        (Some(Value::Object(l)), Value::Object(a)) => {
            let mut out = l.clone();
            for (k, v) in a {
                out.insert(k.clone(), merge(l.get(k), v, keys, &join(dotted, k)));
            }
            Value::Object(out)
        }
        (Some(Value::Array(l)), Value::Array(a)) => {
            let Some(fields) = list_keys(keys, dotted) else {
                return applied.clone();
            };
            let mut used = vec![false; l.len()];
            let mut out = Vec::with_capacity(a.len() + l.len());
            for item in a {
                let key = item_key(item, &fields).ok();
                let found = key.as_ref().and_then(|key| {
                    l.iter()
                        .enumerate()
                        .position(|(i, li)| !used[i] && has_key(li, key))
                });
                match found {
                    Some(i) => {
                        used[i] = true;
                        out.push(merge(Some(&l[i]), item, keys, dotted));
                    }
                    None => out.push(item.clone()),
                }
            }
            out.extend(
                l.iter()
                    .zip(&used)
                    .filter(|(_, u)| !**u)
                    .map(|(li, _)| li.clone()),
            );
            Value::Array(out)
        }
        _ => applied.clone(),
    }
}

/// One `managedFields` entry.
#[derive(Clone, Debug)]
struct Entry {
    raw: Value,
    manager: String,
    operation: String,
    subresource: String,
    fields: FieldSet,
}

impl Entry {
    fn is(&self, manager: &str, operation: &str, subresource: &str) -> bool {
        self.manager == manager && self.operation == operation && self.subresource == subresource
    }

    fn to_value(&self) -> Value {
        let mut raw = self.raw.clone();
        raw["fieldsV1"] = to_fields_v1(&self.fields);
        raw
    }
}

/// The entries of a `managedFields` list; empty objects (`[{}]` resets ownership, as in
/// Kubernetes) are skipped, malformed entries refused naming their field.
fn decode_entries(managed: &Value) -> Result<Vec<Entry>, ApplyError> {
    let bad = |i: usize, field: &str, message: String| ApplyError::ManagedFields {
        field: format!("metadata.managedFields[{i}]{field}"),
        message,
    };
    let Some(list) = managed.as_array() else {
        return match managed {
            Value::Null => Ok(Vec::new()),
            _ => Err(ApplyError::ManagedFields {
                field: "metadata.managedFields".into(),
                message: "must be a list".into(),
            }),
        };
    };
    let mut out = Vec::new();
    for (i, raw) in list.iter().enumerate() {
        let Some(map) = raw.as_object() else {
            return Err(bad(i, "", "must be an object".into()));
        };
        if map.is_empty() {
            continue;
        }
        let text = |field: &str| map.get(field).and_then(Value::as_str).unwrap_or_default();
        let operation = text("operation");
        if operation != "Apply" && operation != "Update" {
            return Err(bad(
                i,
                ".operation",
                format!(
                    "Unsupported value: {operation:?}: supported values: \"Apply\", \"Update\""
                ),
            ));
        }
        if text("fieldsType") != "FieldsV1" {
            return Err(bad(
                i,
                ".fieldsType",
                format!(
                    "Unsupported value: {:?}: supported values: \"FieldsV1\"",
                    text("fieldsType")
                ),
            ));
        }
        let fields = match map.get("fieldsV1") {
            Some(f) => from_fields_v1(f).map_err(|m| bad(i, ".fieldsV1", m))?,
            None => FieldSet::new(),
        };
        out.push(Entry {
            manager: text("manager").to_string(),
            operation: operation.to_string(),
            subresource: text("subresource").to_string(),
            fields,
            raw: raw.clone(),
        });
    }
    Ok(out)
}

/// `entries` as `managedFields`, in Kubernetes' order (Apply before Update, then by time,
/// manager, apiVersion, subresource); entries that own nothing are dropped.
fn encode_entries(object: &mut Value, entries: &[Entry]) {
    let mut list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(Entry::to_value)
        .collect();
    let order = |v: &Value| {
        ["operation", "time", "manager", "apiVersion", "subresource"]
            .map(|f| v[f].as_str().unwrap_or_default().to_string())
    };
    list.sort_by_key(order);
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(list));
        }
    }
}

fn new_entry(manager: &str, operation: &str, api_version: &str, now: &str, sub: &str) -> Value {
    let mut raw = json!({
        "manager": manager,
        "operation": operation,
        "apiVersion": api_version,
        "time": now,
        "fieldsType": "FieldsV1",
    });
    if !sub.is_empty() {
        raw["subresource"] = json!(sub);
    }
    raw
}

/// What one apply asks for.
pub struct Apply<'a> {
    pub manager: &'a str,
    pub force: bool,
    /// The object's group/version (`apps/v1`), recorded with the manager's fields.
    pub api_version: &'a str,
    /// RFC 3339, the time recorded with the manager's fields.
    pub now: &'a str,
    pub keys: MergeKeys,
}

/// Applies `applied` by `req.manager` to `live` (`None`: the object does not exist): conflicts
/// with other managers over fields whose value would change are refused unless `force` (which
/// takes them over); the applied fields are merged in; fields this manager applied before,
/// no longer applies and no other manager owns are removed; `metadata.managedFields` records
/// the manager's fields. Returns the new object.
pub fn apply(live: Option<&Value>, applied: &Value, req: &Apply) -> Result<Value, ApplyError> {
    if has_directive(applied) {
        return Err(ApplyError::Invalid(
            "patch directives ($patch, $setElementOrder, ...) are not allowed in an applied \
             configuration"
                .into(),
        ));
    }
    if !applied["metadata"]["managedFields"].is_null() {
        return Err(ApplyError::Invalid(
            "metadata.managedFields must be nil in an applied configuration".into(),
        ));
    }
    let applied = prepare(applied, req.keys, "");
    let empty = json!({});
    let live = live.unwrap_or(&empty);
    let new_fields = fields_of(&applied, req.keys)?;
    let mut others = decode_entries(&live["metadata"]["managedFields"])?;
    let mine_before: FieldSet = others
        .iter()
        .filter(|e| e.is(req.manager, "Apply", ""))
        .flat_map(|e| e.fields.iter().cloned())
        .collect();
    let mine_at = others.iter().position(|e| e.is(req.manager, "Apply", ""));
    let mine_raw = mine_at.map(|i| others[i].raw.clone());
    others.retain(|e| !e.is(req.manager, "Apply", ""));

    let mut conflicts = Vec::new();
    for entry in &others {
        for path in entry.fields.intersection(&new_fields) {
            if path.last() == Some(&Elem::Item) {
                continue;
            }
            if value_at(live, path) != value_at(&applied, path) {
                let text = |f: &str| entry.raw[f].as_str().unwrap_or_default().to_string();
                conflicts.push(Conflict {
                    manager: entry.manager.clone(),
                    api_version: text("apiVersion"),
                    subresource: entry.subresource.clone(),
                    time: Some(text("time"))
                        .filter(|t| entry.operation == "Update" && !t.is_empty()),
                    path: path.clone(),
                });
            }
        }
    }
    if !conflicts.is_empty() && !req.force {
        return Err(ApplyError::Conflicts(conflicts));
    }
    for entry in &mut others {
        for c in conflicts
            .iter()
            .filter(|c| c.manager == entry.manager && c.subresource == entry.subresource)
        {
            entry.fields.remove(&c.path);
        }
    }

    let mut merged = merge(Some(live), &applied, req.keys, "");
    let owned: FieldSet = others
        .iter()
        .flat_map(|e| e.fields.iter().cloned())
        .chain(new_fields.iter().cloned())
        .collect();
    remove_unowned(&mut merged, &mine_before, &owned);

    let mut mine = Entry {
        raw: new_entry(req.manager, "Apply", req.api_version, req.now, ""),
        manager: req.manager.to_string(),
        operation: "Apply".into(),
        subresource: String::new(),
        fields: new_fields,
    };
    if let Some(raw) = mine_raw.filter(|_| mine_before == mine.fields) {
        // Nothing changed in what this manager owns: its entry keeps its time.
        mine.raw = raw;
    }
    others.push(mine);
    encode_entries(&mut merged, &others);
    Ok(merged)
}

/// Removes from `object` the fields of `before` that nobody owns now (`owned`): a list item
/// goes whole (its key fields stay while it stays), a map left empty goes unless it is owned
/// (`metadata` stays).
fn remove_unowned(object: &mut Value, before: &FieldSet, owned: &FieldSet) {
    let held = |p: &[Elem]| owned.iter().any(|q| q.starts_with(p));
    let mut gone: Vec<Path> = Vec::new();
    for path in before.difference(owned) {
        let target: &[Elem] = match path.last() {
            Some(Elem::Item) => &path[..path.len() - 1],
            _ => path,
        };
        if held(target) || gone.iter().any(|g| target.starts_with(g)) {
            continue;
        }
        if path.last() != Some(&Elem::Item) && is_key_field(target) {
            continue;
        }
        remove_at(object, target);
        gone.push(target.to_vec());
    }
    // Maps the removals left empty, innermost first, unless someone owns them.
    for path in &gone {
        let mut parent = &path[..path.len() - 1];
        let metadata = [Elem::Field("metadata".into())];
        while matches!(parent.last(), Some(Elem::Field(_))) && parent != metadata {
            let empty = match value_at(object, parent) {
                Some(Value::Object(m)) => m.is_empty(),
                Some(Value::Array(a)) => a.is_empty(),
                _ => false,
            };
            if !empty || owned.contains(parent) {
                break;
            }
            remove_at(object, parent);
            parent = &parent[..parent.len() - 1];
        }
    }
}

/// What one ordinary write (create, update, patch, a subresource) asks for.
pub struct Update<'a> {
    pub manager: &'a str,
    pub api_version: &'a str,
    pub now: &'a str,
    pub keys: MergeKeys,
    /// `scale`, `status`, or empty for the object itself.
    pub subresource: &'a str,
}

/// Records in `object.metadata.managedFields` that `req.manager` wrote what changed from
/// `live` (`None`: a create) to `object`, as Kubernetes' `Update` operation does: the manager
/// owns the fields it set or changed, other managers lose them, and fields removed leave
/// every manager. A write that sends `managedFields` of its own (not empty) starts from
/// those (Kubernetes lets clients rewrite or reset ownership so); others keep the live ones.
pub fn record_update(
    live: Option<&Value>,
    object: &mut Value,
    req: &Update,
) -> Result<(), ApplyError> {
    let empty = json!({});
    let live = live.unwrap_or(&empty);
    let sent = &object["metadata"]["managedFields"];
    let sent_any = sent.as_array().is_some_and(|l| !l.is_empty());
    // A malformed list is refused even where it would not be used.
    let sent_entries = decode_entries(sent)?;
    let mut entries = if sent_any && req.subresource.is_empty() {
        sent_entries
    } else {
        decode_entries(&live["metadata"]["managedFields"])?
    };
    let old_fields = object_fields(live, req.keys, Keying::Lenient)?;
    let new_fields = object_fields(object, req.keys, Keying::Lenient)?;
    let changed: FieldSet = new_fields
        .iter()
        .filter(|p| match p.last() {
            Some(Elem::Item) => value_at(live, p).is_none(),
            _ => value_at(live, p) != value_at(object, p),
        })
        .cloned()
        .collect();
    let removed: FieldSet = old_fields.difference(&new_fields).cloned().collect();
    for entry in &mut entries {
        entry
            .fields
            .retain(|p| !changed.contains(p) && !removed.contains(p));
    }
    match entries
        .iter_mut()
        .find(|e| e.is(req.manager, "Update", req.subresource))
    {
        Some(mine) => {
            if !changed.is_empty() {
                mine.raw["time"] = json!(req.now);
                mine.raw["apiVersion"] = json!(req.api_version);
            }
            mine.fields.extend(changed);
        }
        None if !changed.is_empty() => entries.push(Entry {
            raw: new_entry(
                req.manager,
                "Update",
                req.api_version,
                req.now,
                req.subresource,
            ),
            manager: req.manager.to_string(),
            operation: "Update".into(),
            subresource: req.subresource.to_string(),
            fields: changed,
        }),
        None => {}
    }
    encode_entries(object, &entries);
    Ok(())
}

fn has_directive(value: &Value) -> bool {
    match value {
        Value::Object(map) => map
            .iter()
            .any(|(k, v)| k.starts_with('$') || has_directive(v)),
        Value::Array(items) => items.iter().any(has_directive),
        _ => false,
    }
}

#[cfg(test)]
#[path = "apply_tests.rs"]
mod tests;
