//! Tidy checks of architecture invariants (in the spirit of rust-analyzer's `xtask/src/tidy.rs`):
//! the pure cores never import the I/O world, never read clocks, and every module says what it
//! owns in a `//!` line.

use std::path::{Path, PathBuf};

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
