//! The runc version check, the pure core: `runc --version`'s output → the version, and the
//! container-escape CVEs a runc that old leaves open, for the warning the agent logs at start
//! (`agent::warn_about_runc`). Upstream fixed versions; one known distribution backport.

use std::cmp::Ordering;

/// A runc version as `runc --version` prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuncVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
    /// `rc.3` of `1.4.0-rc.3` (a pre-release sorts before its release).
    pub pre: Option<String>,
    /// The whole version word (`1.1.5+ds1`).
    pub text: String,
    /// The `commit:` line (distributions put their package version there).
    pub commit: String,
}

impl RuncVersion {
    fn triple(&self) -> (u32, u32, u32) {
        (self.major, self.minor, self.patch)
    }

    /// Orders against release `(major, minor, patch)`: a pre-release is before its release.
    fn cmp_release(&self, release: (u32, u32, u32)) -> Ordering {
        match self.triple().cmp(&release) {
            Ordering::Equal if self.pre.is_some() => Ordering::Less,
            other => other,
        }
    }
}

/// Parses `runc --version` output (`runc version 1.1.12`, `commit: v1.1.12-0-g51d5e946`, ...).
/// `None` if the first line is not runc's (crun, youki: not checked).
pub fn parse(output: &str) -> Option<RuncVersion> {
    let mut lines = output.lines();
    let first = lines.next()?.trim();
    let word = first.strip_prefix("runc version ")?.trim();
    // `1.1.5+ds1`, `1.4.0-rc.3`, `1.2.8~ubuntu1` (Ubuntu's separator).
    let core_end = word.find(['+', '~', '-']).unwrap_or(word.len());
    let (core, rest) = word.split_at(core_end);
    let mut parts = core.split('.');
    let mut number = || -> Option<u32> {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 6 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        p.parse().ok()
    };
    let (major, minor) = (number()?, number()?);
    let patch = number().unwrap_or(0);
    if parts.next().is_some() {
        return None;
    }
    let pre = rest
        .strip_prefix('-')
        .map(|p| p.split('+').next().unwrap_or_default().to_string())
        .filter(|p| !p.is_empty());
    let commit = output
        .lines()
        .find_map(|l| l.trim().strip_prefix("commit:"))
        .map(|c| c.trim().to_string())
        .unwrap_or_default();
    Some(RuncVersion {
        major,
        minor,
        patch,
        pre,
        text: word.to_string(),
        commit,
    })
}

/// One CVE and the runc releases that fix it (the first fixed release of each line that got
/// the fix; a version of a later line than all of them is fixed).
struct Cve {
    id: &'static str,
    what: &'static str,
    fixed: &'static [(u32, u32, u32)],
    /// Distribution builds (by their `commit:` line) known to carry the fix.
    backported: &'static [&'static str],
}

const CVES: &[Cve] = &[
    Cve {
        id: "CVE-2024-21626",
        what: "leaked file descriptor: a container's working directory in the host (Leaky Vessels)",
        fixed: &[(1, 1, 12)],
        // Debian 12's DSA-5615 backport.
        backported: &["1.1.5+ds1-1+deb12u1"],
    },
    Cve {
        id: "CVE-2025-31133",
        what: "maskedPaths bind mounts raced to write host procfs files",
        fixed: &[(1, 2, 8), (1, 3, 3), (1, 4, 0)],
        backported: &[],
    },
    Cve {
        id: "CVE-2025-52565",
        what: "/dev/console bind mount raced to write host procfs files",
        fixed: &[(1, 2, 8), (1, 3, 3), (1, 4, 0)],
        backported: &[],
    },
    Cve {
        id: "CVE-2025-52881",
        what: "LSM and procfs writes redirected by shared mounts",
        fixed: &[(1, 2, 8), (1, 3, 3), (1, 4, 0)],
        backported: &[],
    },
];

/// Whether `v` is older than the fix of its release line: the fixed release of the same
/// `major.minor` if there is one, else the lowest fixed release above it (a line older than
/// every fixed line never got the fix), and fixed past the newest line.
fn before_fix(v: &RuncVersion, fixed: &[(u32, u32, u32)]) -> bool {
    if let Some(f) = fixed.iter().find(|f| (f.0, f.1) == (v.major, v.minor)) {
        return v.cmp_release(*f) == Ordering::Less;
    }
    fixed.iter().any(|f| v.cmp_release(*f) == Ordering::Less)
}

/// The CVEs `v` leaves open: `(id, what)`.
pub fn open_cves(v: &RuncVersion) -> Vec<(&'static str, &'static str)> {
    CVES.iter()
        .filter(|c| before_fix(v, c.fixed) && !c.backported.contains(&v.commit.as_str()))
        .map(|c| (c.id, c.what))
        .collect()
}

/// The warning to log for `v`, or `None` if it is recent enough.
pub fn warning(v: &RuncVersion) -> Option<String> {
    let open = open_cves(v);
    if open.is_empty() {
        return None;
    }
    let list: Vec<String> = open
        .iter()
        .map(|(id, what)| format!("{id} ({what})"))
        .collect();
    Some(format!(
        "runc {} (commit {}) is older than the fixes of {}: containers may escape to the host; \
         install runc 1.2.8, 1.3.3 or later (a distribution package that backports the fixes \
         is fine: check its advisories)",
        v.text,
        if v.commit.is_empty() {
            "unknown"
        } else {
            &v.commit
        },
        list.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(output: &str) -> RuncVersion {
        parse(output).unwrap_or_else(|| panic!("{output}"))
    }

    fn ids(output: &str) -> Vec<&'static str> {
        open_cves(&v(output))
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    }

    const NEW_CVES: [&str; 3] = ["CVE-2025-31133", "CVE-2025-52565", "CVE-2025-52881"];

    #[test]
    fn parses_what_runc_prints() {
        let debian = v("runc version 1.1.5+ds1\ncommit: 1.1.5+ds1-1+deb12u1\nspec: 1.0.2-dev\ngo: go1.19.8\nlibseccomp: 2.5.4\n");
        assert_eq!((debian.major, debian.minor, debian.patch), (1, 1, 5));
        assert_eq!(debian.pre, None);
        assert_eq!(debian.commit, "1.1.5+ds1-1+deb12u1");
        let rc = v("runc version 1.4.0-rc.3\ncommit: v1.4.0-rc.3-0-gabc\n");
        assert_eq!(rc.pre.as_deref(), Some("rc.3"));
        assert_eq!(v("runc version 1.2.8~ubuntu1").patch, 8);
        for bad in [
            "",
            "crun version 1.8.1",
            "runc version x.y",
            "runc version 1",
            "runc version 1.2.3.4",
            "runc version 99999999999.1.1",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn names_the_cves_each_version_leaves_open() {
        let all = ["CVE-2024-21626", NEW_CVES[0], NEW_CVES[1], NEW_CVES[2]];
        assert_eq!(ids("runc version 1.1.11"), all);
        assert_eq!(ids("runc version 1.1.12"), NEW_CVES);
        assert_eq!(ids("runc version 1.1.15"), NEW_CVES);
        assert_eq!(ids("runc version 1.2.0"), NEW_CVES);
        assert_eq!(ids("runc version 1.2.7"), NEW_CVES);
        assert!(ids("runc version 1.2.8").is_empty());
        assert_eq!(ids("runc version 1.3.2"), NEW_CVES);
        assert!(ids("runc version 1.3.3").is_empty());
        assert_eq!(ids("runc version 1.4.0-rc.2"), NEW_CVES);
        assert!(ids("runc version 1.4.0").is_empty());
        assert!(ids("runc version 1.5.1").is_empty());
        assert!(ids("runc version 2.0.0").is_empty());
        assert_eq!(ids("runc version 1.0.0-rc92"), all);
    }

    #[test]
    fn a_known_backport_closes_its_cve_only() {
        // The test machine's Debian 12 package: the 2024 fix backported, the 2025 ones not.
        let debian = "runc version 1.1.5+ds1\ncommit: 1.1.5+ds1-1+deb12u1\n";
        assert_eq!(ids(debian), NEW_CVES);
        let w = warning(&v(debian)).unwrap();
        assert!(
            w.starts_with("runc 1.1.5+ds1 (commit 1.1.5+ds1-1+deb12u1) is older than the fixes of CVE-2025-31133 ("),
            "{w}"
        );
        assert!(!w.contains("CVE-2024-21626"), "{w}");
        assert_eq!(
            warning(&v("runc version 1.3.3\ncommit: v1.3.3-0-g1\n")),
            None
        );
    }
}
