//! `nft -f` scripts from ruleset models: [`full`] atomically replaces table `ip shoal`;
//! [`diff`] turns the applied model into the desired one touching only what changed. Each
//! script is one nft transaction: it applies completely or not at all.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use super::ruleset::{Chain, Ruleset, MAPS};

/// The table (family `ip`) the proxy owns; nothing else of the host's ruleset is touched.
pub const TABLE: &str = "shoal";

/// A script and what it does, for logs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Change {
    pub script: String,
    /// Whether it replaces the whole table.
    pub full: bool,
    /// Chains created or rewritten.
    pub chains_written: usize,
    /// Chains deleted.
    pub chains_deleted: usize,
    /// Map elements added or deleted.
    pub elements: usize,
}

impl Change {
    pub fn is_empty(&self) -> bool {
        self.script.is_empty()
    }
}

fn add_chain(out: &mut String, name: &str, chain: &Chain) {
    match &chain.hook {
        Some(hook) => {
            let _ = writeln!(out, "add chain ip {TABLE} {name} {{ {hook} }}");
        }
        None => {
            let _ = writeln!(out, "add chain ip {TABLE} {name}");
        }
    }
}

fn add_rules(out: &mut String, name: &str, chain: &Chain) {
    for rule in &chain.rules {
        let _ = writeln!(out, "add rule ip {TABLE} {name} {rule}");
    }
}

fn add_set(out: &mut String, name: &str, timeout: u32) {
    let _ = writeln!(
        out,
        "add set ip {TABLE} {name} {{ type ipv4_addr ; flags dynamic,timeout ; timeout {timeout}s ; }}"
    );
}

fn add_elements<'a>(
    out: &mut String,
    map: &str,
    elements: impl Iterator<Item = (&'a String, &'a String)>,
) -> usize {
    let items: Vec<String> = elements.map(|(k, v)| format!("{k} : {v}")).collect();
    if !items.is_empty() {
        let _ = writeln!(
            out,
            "add element ip {TABLE} {map} {{ {} }}",
            items.join(", ")
        );
    }
    items.len()
}

fn delete_elements<'a>(
    out: &mut String,
    map: &str,
    keys: impl Iterator<Item = &'a String>,
) -> usize {
    let items: Vec<&str> = keys.map(String::as_str).collect();
    if !items.is_empty() {
        let _ = writeln!(
            out,
            "delete element ip {TABLE} {map} {{ {} }}",
            items.join(", ")
        );
    }
    items.len()
}

/// Replaces the whole table in one transaction: create it if missing (so the delete cannot
/// fail), delete it, and build it again. Established connections survive: their NAT lives in
/// conntrack, not in the rules.
pub fn full(desired: &Ruleset) -> Change {
    let mut out = String::new();
    let _ = writeln!(out, "add table ip {TABLE}");
    let _ = writeln!(out, "delete table ip {TABLE}");
    let _ = writeln!(out, "add table ip {TABLE}");
    for (name, decl) in MAPS {
        let _ = writeln!(out, "add map ip {TABLE} {name} {{ {decl} }}");
    }
    for (name, timeout) in &desired.sets {
        add_set(&mut out, name, *timeout);
    }
    // All chains exist before any rule or element refers to one.
    for (name, chain) in &desired.chains {
        add_chain(&mut out, name, chain);
    }
    for (name, chain) in &desired.chains {
        add_rules(&mut out, name, chain);
    }
    let mut elements = 0;
    for (map, items) in &desired.maps {
        elements += add_elements(&mut out, map, items.iter());
    }
    Change {
        script: out,
        full: true,
        chains_written: desired.chains.len(),
        chains_deleted: 0,
        elements,
    }
}

/// The script that turns `applied` into `desired`, touching only what differs: new sets and
/// chains are added, chains whose rules changed are flushed and re-filled, map elements are
/// deleted and added one by one, chains and sets nobody needs any more are flushed and
/// deleted last (after everything that referred to them is gone). An empty script means no
/// change. Falls back to [`full`] if a hooked chain's declaration changed.
pub fn diff(applied: &Ruleset, desired: &Ruleset) -> Change {
    let hooks = |r: &Ruleset| -> BTreeMap<String, Option<String>> {
        r.chains
            .iter()
            .filter(|(_, c)| c.hook.is_some())
            .map(|(n, c)| (n.clone(), c.hook.clone()))
            .collect()
    };
    let map_names = |r: &Ruleset| -> BTreeSet<String> { r.maps.keys().cloned().collect() };
    if hooks(applied) != hooks(desired) || map_names(applied) != map_names(desired) {
        return full(desired);
    }
    let mut out = String::new();
    let mut change = Change::default();

    // A set's name includes its timeout (`names::affinity_set`), so sets are only ever
    // added or deleted, never altered.
    for (name, timeout) in &desired.sets {
        if !applied.sets.contains_key(name) {
            add_set(&mut out, name, *timeout);
        }
    }
    for (name, chain) in &desired.chains {
        if !applied.chains.contains_key(name) {
            add_chain(&mut out, name, chain);
        }
    }
    for (name, chain) in &desired.chains {
        match applied.chains.get(name) {
            Some(old) if old == chain => continue,
            Some(_) => {
                let _ = writeln!(out, "flush chain ip {TABLE} {name}");
            }
            None => {}
        }
        add_rules(&mut out, name, chain);
        change.chains_written += 1;
    }
    let empty = BTreeMap::new();
    for (map, want) in &desired.maps {
        let have = applied.maps.get(map).unwrap_or(&empty);
        let gone = have
            .iter()
            .filter(|(k, v)| want.get(*k) != Some(*v))
            .map(|(k, _)| k);
        change.elements += delete_elements(&mut out, map, gone);
        let new = want.iter().filter(|(k, v)| have.get(*k) != Some(*v));
        change.elements += add_elements(&mut out, map, new);
    }
    let stale: Vec<&String> = applied
        .chains
        .keys()
        .filter(|n| !desired.chains.contains_key(*n))
        .collect();
    for name in &stale {
        let _ = writeln!(out, "flush chain ip {TABLE} {name}");
    }
    for name in &stale {
        let _ = writeln!(out, "delete chain ip {TABLE} {name}");
    }
    change.chains_deleted = stale.len();
    for name in applied.sets.keys() {
        if !desired.sets.contains_key(name) {
            let _ = writeln!(out, "delete set ip {TABLE} {name}");
        }
    }
    change.script = out;
    change
}
