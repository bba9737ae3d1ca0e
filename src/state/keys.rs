//! The document's flat key space. Every entry lives directly in the root map so that no two
//! agents can ever race to create the same container object (concurrently created maps under
//! one key hide each other's contents in automerge):
//!
//! - `meta`                        cluster metadata (written once, at init or restore)
//! - `token/<sha256 hex>`          API bearer tokens, by hash
//! - `node/<name>`                 a node's own record (only that node writes it)
//! - `obj/<resource>/<ns>/<name>`  users' objects, replaced as a whole; `<ns>` is `_` when
//!   cluster-scoped
//! - `bind/<ns>/<pod>`              where the scheduler leader placed a pod
//!   (`model::workload::Binding`)
//! - `podcidr/<index>`             a node's claim of a pod subnet (only the claiming node
//!   writes it; `model::ipam`)
//! - `leader`                      the scheduler leader in office (written by the node that
//!   takes office; `membership::leader::in_office`)

pub const META: &str = "meta";
pub const TOKEN_PREFIX: &str = "token/";
pub const NODE_PREFIX: &str = "node/";
pub const OBJ_PREFIX: &str = "obj/";
pub const LEADER: &str = "leader";

/// Parsed `obj/...` key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectPath {
    pub resource: String,
    pub namespace: Option<String>,
    pub name: String,
}

pub fn object_key(resource: &str, namespace: Option<&str>, name: &str) -> String {
    format!("{OBJ_PREFIX}{resource}/{}/{name}", namespace.unwrap_or("_"))
}

impl ObjectPath {
    pub fn parse(key: &str) -> Option<ObjectPath> {
        let rest = key.strip_prefix(OBJ_PREFIX)?;
        let mut parts = rest.splitn(3, '/');
        let resource = parts.next()?.to_string();
        let ns = parts.next()?;
        let name = parts.next()?.to_string();
        Some(ObjectPath {
            resource,
            namespace: (ns != "_").then(|| ns.to_string()),
            name,
        })
    }
}

/// The smallest string greater than every string starting with `prefix` (for range scans).
pub fn prefix_end(prefix: &str) -> String {
    let mut end = prefix.to_string();
    end.push(char::MAX);
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_keys_round_trip() {
        let k = object_key("configmaps", Some("default"), "a.b");
        assert_eq!(
            ObjectPath::parse(&k).unwrap(),
            ObjectPath {
                resource: "configmaps".into(),
                namespace: Some("default".into()),
                name: "a.b".into()
            }
        );
        let k = object_key("namespaces", None, "x");
        assert_eq!(ObjectPath::parse(&k).unwrap().namespace, None);
        assert!(ObjectPath::parse("node/x").is_none());
        assert!(ObjectPath::parse("obj/x").is_none());
    }
}
