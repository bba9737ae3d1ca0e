//! Tidy checks of architecture invariants (in the spirit of rust-analyzer's `xtask/src/tidy.rs`):
//! imports point one way through the layers of `docs/ARCHITECTURE.md` (every `use crate::…`,
//! `super::…` and `crate::…` path is parsed and checked against the layer table), the pure cores
//! never import the I/O world, never read clocks, and every module says what it owns in a `//!`
//! line.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use syn::visit::Visit;

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
    {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

fn src() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Code outside `#[cfg(test)]` modules (tests may use whatever they like).
fn non_test_code(text: &str) -> &str {
    text.split("#[cfg(test)]").next().unwrap_or(text)
}

#[test]
fn cores_are_pure() {
    // Dirs, or single files of a module that is otherwise a shell.
    const CORES: &[&str] = &[
        "membership",
        "sched",
        "sim",
        "kubelet/plan",
        "kubelet/config.rs",
        "model/ipam.rs",
        "model/service.rs",
        "model/downward.rs",
        "model/host_port.rs",
        "state/transfer.rs",
        "dns",
        "proxy",
    ];
    const FORBIDDEN: &[&str] = &[
        "tokio",
        "libp2p",
        "std::net",
        "Instant::now",
        "SystemTime::now",
        "Utc::now",
        "std::fs",
        "thread_rng",
        "std::process",
        "HashMap",
    ];
    let mut violations = Vec::new();
    for core in CORES {
        let path = src().join(core);
        let files = if path.is_file() {
            vec![path]
        } else {
            rust_files(&path)
        };
        for file in files {
            if file.file_name().is_some_and(|n| n == "tests.rs") {
                continue; // a `#[cfg(test)] mod tests;` file
            }
            let text = std::fs::read_to_string(&file).unwrap();
            for (no, line) in non_test_code(&text).lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                for word in FORBIDDEN {
                    if code.contains(word) {
                        violations.push(format!(
                            "{}:{}: `{word}` in a pure core: {}",
                            file.display(),
                            no + 1,
                            line.trim()
                        ));
                    }
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "cores must stay deterministic and free of I/O:\n{}",
        violations.join("\n")
    );
}

#[test]
fn every_module_says_what_it_owns() {
    let missing: Vec<String> = rust_files(&src())
        .into_iter()
        .filter(|f| {
            !std::fs::read_to_string(f)
                .unwrap()
                .trim_start()
                .starts_with("//!")
        })
        .map(|f| f.display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "modules without a leading `//!` line:\n{}",
        missing.join("\n")
    );
}

#[test]
fn no_unwrap_on_peer_input_in_the_network_shell() {
    // The network shell handles what peers send: it must never unwrap or index blindly.
    let mut violations = Vec::new();
    for file in rust_files(&src().join("net")) {
        let text = std::fs::read_to_string(&file).unwrap();
        for (no, line) in non_test_code(&text).lines().enumerate() {
            if line.contains(".unwrap()")
                || line.contains("panic!(")
                || line.contains("unreachable!(")
            {
                violations.push(format!("{}:{}: {}", file.display(), no + 1, line.trim()));
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

/// The top level holds only what the project's layout allows (tools such as proptest must not
/// leave directories there).
#[test]
fn top_level_is_as_agreed() {
    const ALLOWED: &[&str] = &[
        "Cargo.toml",
        "Cargo.lock",
        "README.md",
        "justfile",
        "src",
        "testnet",
        "tests",
        "docs",
        "benches",
        "examples",
        ".ci",
        ".gitignore",
        // Build output and VCS metadata, never committed.
        "target",
        ".git",
    ];
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut extra = Vec::new();
    for entry in std::fs::read_dir(&root).expect("reading the repository root") {
        let name = entry.expect("directory entry").file_name();
        let name = name.to_string_lossy().into_owned();
        if !ALLOWED.contains(&name.as_str()) {
            extra.push(name);
        }
    }
    extra.sort();
    assert!(extra.is_empty(), "unexpected top-level entries: {extra:?}");
}

// ---- import direction ----

/// The layers of `docs/ARCHITECTURE.md`, lowest first. A module may import from any lower layer;
/// within a layer only along [`SAME_LAYER`]. A unit is a module path; a file belongs to the
/// longest unit that prefixes its module path (`kubelet::plan` before `kubelet`). Items of the
/// crate root (`crate::VERSION`, `crate::install_crypto_provider`) are open to every layer.
const LAYERS: &[(&str, &[&str])] = &[
    ("model: plain types and pure rules", &["model"]),
    (
        "pure cores",
        &[
            "membership",
            "sched",
            "kubelet::plan",
            "kubelet::config",
            "proxy",
            "dns",
        ],
    ),
    (
        "cluster identity and sealing; metrics",
        &["security", "metrics"],
    ),
    (
        "the replicated documents and the state the shells share",
        &["state"],
    ),
    ("the simulator (cores + documents in memory)", &["sim"]),
    ("shells", &["runtime", "kubelet", "net", "api"]),
    ("wiring", &["agent"]),
    ("command line", &["cli"]),
];

/// Imports allowed inside one layer: (from, to, why).
const SAME_LAYER: &[(&str, &str, &str)] = &[(
    "kubelet",
    "runtime",
    "the kubelet shell carries its plan out through the runtime",
)];

/// Upward imports excused for now, each as (from, to, why and its fix). Empty since issue 14:
/// the check fails when an entry is no longer needed, so this list only shrinks.
const NOT_YET: &[(&str, &str, &str)] = &[];

/// A `crate::` path used by a module, resolved to a module path.
#[derive(Debug)]
struct Import {
    /// The module path of the file (and inline module) that uses it.
    from: Vec<String>,
    /// The path it names, from the crate root.
    to: Vec<String>,
}

/// Collects every crate-internal path of one file outside `#[cfg(test)]` items, and the
/// `#[cfg(test)] mod name;` declarations (files that hold only tests).
struct Collector {
    module: Vec<String>,
    imports: Vec<Import>,
    test_modules: Vec<Vec<String>>,
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.meta
                .require_list()
                .is_ok_and(|l| l.tokens.to_string() == "test")
    })
}

fn item_attrs(item: &syn::Item) -> &[syn::Attribute] {
    use syn::Item;
    match item {
        Item::Const(i) => &i.attrs,
        Item::Enum(i) => &i.attrs,
        Item::ExternCrate(i) => &i.attrs,
        Item::Fn(i) => &i.attrs,
        Item::ForeignMod(i) => &i.attrs,
        Item::Impl(i) => &i.attrs,
        Item::Macro(i) => &i.attrs,
        Item::Mod(i) => &i.attrs,
        Item::Static(i) => &i.attrs,
        Item::Struct(i) => &i.attrs,
        Item::Trait(i) => &i.attrs,
        Item::TraitAlias(i) => &i.attrs,
        Item::Type(i) => &i.attrs,
        Item::Union(i) => &i.attrs,
        Item::Use(i) => &i.attrs,
        _ => &[],
    }
}

impl Collector {
    /// `segments` from the crate root, if they start with `crate`, `super` or `self`.
    fn resolve(&self, segments: &[String]) -> Option<Vec<String>> {
        let first = segments.first()?;
        match first.as_str() {
            "crate" => Some(segments[1..].to_vec()),
            "self" => Some([self.module.clone(), segments[1..].to_vec()].concat()),
            "super" => {
                let mut base = self.module.clone();
                let mut rest = segments;
                while rest.first().is_some_and(|s| s == "super") {
                    base.pop();
                    rest = &rest[1..];
                }
                Some([base, rest.to_vec()].concat())
            }
            _ => None,
        }
    }

    fn record(&mut self, segments: &[String]) {
        if let Some(to) = self.resolve(segments) {
            self.imports.push(Import {
                from: self.module.clone(),
                to,
            });
        }
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) if n.ident == "self" => self.record(&prefix.clone()),
            syn::UseTree::Name(n) => {
                let full = [prefix.clone(), vec![n.ident.to_string()]].concat();
                self.record(&full);
            }
            syn::UseTree::Rename(r) => {
                let full = [prefix.clone(), vec![r.ident.to_string()]].concat();
                self.record(&full);
            }
            syn::UseTree::Glob(_) => self.record(&prefix.clone()),
            syn::UseTree::Group(g) => {
                for item in &g.items {
                    self.use_tree(prefix, item);
                }
            }
        }
    }
}

impl<'ast> Visit<'ast> for Collector {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        if is_cfg_test(item_attrs(item)) {
            if let syn::Item::Mod(m) = item {
                if m.content.is_none() {
                    let mut path = self.module.clone();
                    path.push(m.ident.to_string());
                    self.test_modules.push(path);
                }
            }
            return;
        }
        syn::visit::visit_item(self, item);
    }

    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        self.module.push(m.ident.to_string());
        syn::visit::visit_item_mod(self, m);
        self.module.pop();
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &u.tree);
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        if p.leading_colon.is_none() {
            let segments: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
            self.record(&segments);
        }
        syn::visit::visit_path(self, p);
    }

    /// Macro bodies are tokens, not syntax: find `crate :: a :: b` runs in them.
    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        syn::visit::visit_macro(self, m);
        let text = m.tokens.to_string();
        let words: Vec<&str> = text.split_whitespace().collect();
        for (i, w) in words.iter().enumerate() {
            if *w != "crate" || (i > 0 && words[i - 1] == "$") {
                continue;
            }
            let mut segments = vec!["crate".to_string()];
            let mut j = i + 1;
            while words.get(j) == Some(&"::")
                && words
                    .get(j + 1)
                    .is_some_and(|s| s.chars().all(|c| c.is_alphanumeric() || c == '_'))
            {
                segments.push(words[j + 1].to_string());
                j += 2;
            }
            self.record(&segments);
        }
    }
}

/// The module path of a source file: `src/a/b.rs` and `src/a/b/mod.rs` → `a::b`.
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if let Some(last) = parts.pop() {
        let stem = last.trim_end_matches(".rs").to_string();
        if stem != "mod" && stem != "lib" {
            parts.push(stem);
        }
    }
    parts
}

fn units() -> Vec<(Vec<String>, usize)> {
    LAYERS
        .iter()
        .enumerate()
        .flat_map(|(rank, (_, units))| {
            units
                .iter()
                .map(move |u| (u.split("::").map(String::from).collect::<Vec<_>>(), rank))
        })
        .collect()
}

/// The unit (as `a::b`) and layer of a module path: the longest unit that prefixes it.
fn unit_of(path: &[String]) -> Option<(String, usize)> {
    units()
        .into_iter()
        .filter(|(unit, _)| path.starts_with(unit))
        .max_by_key(|(unit, _)| unit.len())
        .map(|(unit, rank)| (unit.join("::"), rank))
}

/// Checks the imports of `files` (path relative to `src/`, contents) against the layer table.
/// Returns the violations and the upward edges that [`NOT_YET`] excused.
fn check_layers(files: &[(PathBuf, String)]) -> (Vec<String>, BTreeSet<(String, String)>) {
    let mut collected = Vec::new();
    let mut test_modules = BTreeSet::new();
    let mut violations = Vec::new();
    for (rel, text) in files {
        if rel == Path::new("main.rs") {
            continue; // the binary: `shoal::` paths only
        }
        let file = match syn::parse_file(text) {
            Ok(f) => f,
            Err(e) => {
                violations.push(format!("src/{}: does not parse: {e}", rel.display()));
                continue;
            }
        };
        let mut c = Collector {
            module: module_of(rel),
            imports: Vec::new(),
            test_modules: Vec::new(),
        };
        c.visit_file(&file);
        test_modules.extend(c.test_modules);
        collected.push((rel.clone(), module_of(rel), c.imports));
    }
    let top_modules: BTreeSet<String> = collected
        .iter()
        .filter_map(|(_, m, _)| m.first().cloned())
        .collect();
    let mut excused = BTreeSet::new();
    for (rel, module, imports) in collected {
        if test_modules.iter().any(|t| module.starts_with(t)) {
            continue; // a `#[cfg(test)] mod tests;` file
        }
        let Some((from, from_rank)) = unit_of(&module) else {
            if !module.is_empty() {
                violations.push(format!(
                    "src/{}: module `{}` is in no layer of tests/tidy.rs",
                    rel.display(),
                    module.join("::")
                ));
            }
            continue;
        };
        for import in imports {
            if import.to.len() <= 1 && !import.to.first().is_some_and(|m| top_modules.contains(m)) {
                continue; // an item of the crate root
            }
            let Some((to, to_rank)) = unit_of(&import.to) else {
                violations.push(format!(
                    "src/{}: `crate::{}` is in no layer of tests/tidy.rs",
                    rel.display(),
                    import.to.join("::")
                ));
                continue;
            };
            let same_layer_ok = SAME_LAYER.iter().any(|(f, t, _)| *f == from && *t == to);
            if to == from || to_rank < from_rank || (to_rank == from_rank && same_layer_ok) {
                continue;
            }
            if NOT_YET.iter().any(|(f, t, _)| *f == from && *t == to) {
                excused.insert((from.clone(), to.clone()));
                continue;
            }
            violations.push(format!(
                "src/{} (`{}`, layer {}) imports `crate::{}` (`{to}`, layer {}): {}",
                rel.display(),
                import.from.join("::"),
                LAYERS[from_rank].0,
                import.to.join("::"),
                LAYERS[to_rank].0,
                if to_rank == from_rank {
                    "same layer, not in SAME_LAYER"
                } else {
                    "a lower layer must not import a higher one (move the shared type down)"
                }
            ));
        }
    }
    (violations, excused)
}

fn source_files() -> Vec<(PathBuf, String)> {
    rust_files(&src())
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).unwrap();
            (f.strip_prefix(src()).unwrap().to_path_buf(), text)
        })
        .collect()
}

#[test]
fn imports_point_down_the_layers() {
    let (violations, excused) = check_layers(&source_files());
    assert!(
        violations.is_empty(),
        "imports against the layer order of docs/ARCHITECTURE.md:\n{}",
        violations.join("\n")
    );
    let stale: Vec<String> = NOT_YET
        .iter()
        .filter(|(f, t, _)| !excused.contains(&(f.to_string(), t.to_string())))
        .map(|(f, t, _)| format!("{f} → {t}"))
        .collect();
    assert!(
        stale.is_empty(),
        "NOT_YET excuses edges that no longer exist (remove them): {stale:?}"
    );
}

#[test]
fn every_unit_of_the_layer_table_exists() {
    for (unit, _) in units() {
        let dir = unit.iter().fold(src(), |p, s| p.join(s));
        assert!(
            dir.is_dir() || dir.with_extension("rs").is_file(),
            "layer table names `{}`, which is no module",
            unit.join("::")
        );
    }
    for (f, t, _) in SAME_LAYER.iter().chain(NOT_YET) {
        let parse = |s: &str| s.split("::").map(String::from).collect::<Vec<_>>();
        assert!(
            unit_of(&parse(f)).is_some() && unit_of(&parse(t)).is_some(),
            "{f} → {t}"
        );
    }
}

/// The check itself: a fixture tree with one wrong import of each form must be caught, and the
/// right ones must pass.
#[test]
fn the_layer_check_catches_a_wrong_import() {
    let file = |path: &str, text: &str| (PathBuf::from(path), text.to_string());
    let good = vec![
        file("model/mod.rs", "//! m\npub mod image;\n"),
        file("model/image.rs", "//! i\npub struct Summary;\n"),
        file(
            "api/mod.rs",
            "//! a\nuse crate::model::image::Summary;\npub struct ApiThing(Summary);\n",
        ),
        file(
            "sched/mod.rs",
            "//! s\nfn f() -> crate::model::image::Summary { crate::model::image::Summary }\n\
             #[cfg(test)]\nmod tests { use crate::api::ApiThing; }\n#[cfg(test)]\nmod more;\n",
        ),
        // A tests-only file may import anything.
        file("sched/more.rs", "//! t\nuse crate::api::ApiThing;\n"),
    ];
    let (violations, _) = check_layers(&good);
    assert!(violations.is_empty(), "{violations:?}");

    let wrong = |path: &str, text: &str, culprit: &str| {
        let mut files = good.clone();
        files.push(file(path, text));
        let (violations, _) = check_layers(&files);
        assert!(
            violations
                .iter()
                .any(|v| v.contains(path) && v.contains(&format!("`crate::{culprit}"))),
            "not caught: {path}: {text}\n{violations:?}"
        );
    };
    // A `use` item, a group, a path in code, a path in a macro, through `super`.
    let api = "api::ApiThing";
    wrong("model/bad.rs", "//! b\nuse crate::api::ApiThing;\n", api);
    wrong(
        "model/bad.rs",
        "//! b\nuse crate::{model::image, api::ApiThing};\n",
        api,
    );
    wrong(
        "model/bad.rs",
        "//! b\nfn f(_: crate::api::ApiThing) {}\n",
        api,
    );
    wrong(
        "model/bad.rs",
        "//! b\nfn f() { let _ = vec![crate::api::ApiThing]; }\n",
        api,
    );
    wrong(
        "model/sub/bad.rs",
        "//! b\nuse super::super::super::api::ApiThing;\n",
        api,
    );
    // A same-layer import that SAME_LAYER does not list.
    wrong(
        "sched/bad.rs",
        "//! b\nuse crate::model::image::Summary;\nuse crate::dns::Zone;\n",
        "dns::Zone",
    );
}
