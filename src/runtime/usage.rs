//! CPU and memory use of containers and of the host, read from cgroups (v1 controllers and the
//! v2 unified hierarchy, both present on hybrid hosts) and `/proc`, for `metrics.k8s.io`
//! (`kubectl top`). Counters only: rates come from two samples (`rate`).
//!
//! Memory is the *working set* as the kubelet reports it: usage minus inactive file pages
//! (page cache the kernel can drop at once), never below zero.

use std::path::{Path, PathBuf};

/// One reading of a cgroup (or of the host).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reading {
    /// CPU time used since the cgroup was created, in nanoseconds.
    pub cpu_ns: u64,
    /// Working set in bytes.
    pub memory_bytes: u64,
}

/// `usage - inactive_file`, floored at zero.
pub fn working_set(usage: u64, memory_stat: &str, inactive_key: &str) -> u64 {
    let inactive = stat_value(memory_stat, inactive_key).unwrap_or(0);
    usage.saturating_sub(inactive)
}

/// The value of `key` in a `key value` per line file (`memory.stat`, `cpu.stat`).
pub fn stat_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Reads cgroups under the host's cgroup mount points.
#[derive(Clone, Debug)]
pub struct Cgroups {
    mounts: Vec<PathBuf>,
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn read_u64(path: &Path) -> Option<u64> {
    read(path)?.trim().parse().ok()
}

impl Cgroups {
    /// The cgroup mounts of this host (`/proc/self/mountinfo`).
    pub fn host() -> Cgroups {
        Cgroups {
            mounts: super::runc::cgroup_mounts(),
        }
    }

    /// Mount points given explicitly (tests lay out fake hierarchies).
    pub fn with_mounts(mounts: Vec<PathBuf>) -> Cgroups {
        Cgroups { mounts }
    }

    /// CPU nanoseconds of cgroup `rel` (relative to the hierarchy root): v1 `cpuacct.usage`
    /// where a v1 cpuacct hierarchy has the cgroup, else v2 `cpu.stat` `usage_usec`.
    fn cpu_ns(&self, rel: &str) -> Option<u64> {
        let rel = rel.trim_matches('/');
        let v1 = self
            .mounts
            .iter()
            .find_map(|m| read_u64(&m.join(rel).join("cpuacct.usage")));
        v1.or_else(|| {
            self.mounts.iter().find_map(|m| {
                let stat = read(&m.join(rel).join("cpu.stat"))?;
                stat_value(&stat, "usage_usec").map(|us| us * 1000)
            })
        })
    }

    /// Working set of cgroup `rel`: v1 `memory.usage_in_bytes` minus `total_inactive_file`,
    /// else v2 `memory.current` minus `inactive_file`.
    fn memory_bytes(&self, rel: &str) -> Option<u64> {
        let rel = rel.trim_matches('/');
        let v1 = self.mounts.iter().find_map(|m| {
            let dir = m.join(rel);
            let usage = read_u64(&dir.join("memory.usage_in_bytes"))?;
            let stat = read(&dir.join("memory.stat")).unwrap_or_default();
            Some(working_set(usage, &stat, "total_inactive_file"))
        });
        v1.or_else(|| {
            self.mounts.iter().find_map(|m| {
                let dir = m.join(rel);
                let usage = read_u64(&dir.join("memory.current"))?;
                let stat = read(&dir.join("memory.stat")).unwrap_or_default();
                Some(working_set(usage, &stat, "inactive_file"))
            })
        })
    }

    /// A reading of cgroup `rel`, if any hierarchy accounts CPU for it.
    pub fn reading(&self, rel: &str) -> Option<Reading> {
        Some(Reading {
            cpu_ns: self.cpu_ns(rel)?,
            memory_bytes: self.memory_bytes(rel).unwrap_or(0),
        })
    }
}

/// The host's CPU time in use (all CPUs, not idle or iowait) from `/proc/stat`'s `cpu` line.
pub fn host_cpu_ns(proc_stat: &str) -> Option<u64> {
    let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal [guest guest_nice: already in user]
    let busy: u64 = ticks
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    // USER_HZ is 100 on Linux: one tick is 10 ms.
    Some(busy * 10_000_000)
}

/// The host's memory working set from `/proc/meminfo`: `MemTotal - MemAvailable`.
pub fn host_memory_bytes(meminfo: &str) -> Option<u64> {
    let kib = |key: &str| -> Option<u64> {
        meminfo.lines().find_map(|l| {
            let rest = l.strip_prefix(key)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse().ok()
        })
    };
    Some(kib("MemTotal")?.saturating_sub(kib("MemAvailable")?) * 1024)
}

/// A reading of the whole host.
pub fn host_reading() -> Option<Reading> {
    Some(Reading {
        cpu_ns: host_cpu_ns(&read(Path::new("/proc/stat"))?)?,
        memory_bytes: host_memory_bytes(&read(Path::new("/proc/meminfo"))?)?,
    })
}

/// CPU use between two readings `seconds` apart, in nanocores (1e9 = one core busy).
pub fn rate(before: &Reading, after: &Reading, seconds: f64) -> u64 {
    if seconds <= 0.0 {
        return 0;
    }
    let used = after.cpu_ns.saturating_sub(before.cpu_ns) as f64;
    (used / seconds) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn v1_controllers_win_on_hybrid_hosts_and_v2_alone_works() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let (cpuacct, memory, unified) = (
            root.join("cpuacct"),
            root.join("memory"),
            root.join("unified"),
        );
        let rel = "/shoal/n1/pod-k/c";
        write(
            &cpuacct.join("shoal/n1/pod-k/c/cpuacct.usage"),
            "2500000000\n",
        );
        write(
            &memory.join("shoal/n1/pod-k/c/memory.usage_in_bytes"),
            "1000000\n",
        );
        write(
            &memory.join("shoal/n1/pod-k/c/memory.stat"),
            "cache 10\ntotal_inactive_file 200000\n",
        );
        write(&unified.join("shoal/n1/pod-k/c/cpu.stat"), "usage_usec 7\n");
        let hybrid = Cgroups::with_mounts(vec![unified.clone(), cpuacct, memory]);
        assert_eq!(
            hybrid.reading(rel),
            Some(Reading {
                cpu_ns: 2_500_000_000,
                memory_bytes: 800_000
            })
        );
        // v2 only.
        write(
            &unified.join("shoal/n1/pod-v/c/cpu.stat"),
            "usage_usec 1500000\nuser_usec 1\n",
        );
        write(
            &unified.join("shoal/n1/pod-v/c/memory.current"),
            "67108864\n",
        );
        write(
            &unified.join("shoal/n1/pod-v/c/memory.stat"),
            "anon 67000000\ninactive_file 4096\n",
        );
        let v2 = Cgroups::with_mounts(vec![unified]);
        assert_eq!(
            v2.reading("/shoal/n1/pod-v/c"),
            Some(Reading {
                cpu_ns: 1_500_000_000,
                memory_bytes: 67_108_864 - 4096
            })
        );
        assert_eq!(v2.reading("/shoal/n1/gone"), None);
        // Inactive file pages larger than usage (racy reads) never underflow.
        assert_eq!(working_set(10, "inactive_file 20\n", "inactive_file"), 0);
    }

    #[test]
    fn host_readings_and_rates() {
        let stat = "cpu  100 5 50 1000 30 1 2 3 0 0\ncpu0 1 1 1 1 1 1 1 1 0 0\n";
        assert_eq!(
            host_cpu_ns(stat),
            Some((100 + 5 + 50 + 1 + 2 + 3) * 10_000_000)
        );
        let meminfo = "MemTotal:       24000000 kB\nMemFree: 1 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(host_memory_bytes(meminfo), Some(4_000_000 * 1024));
        let a = Reading {
            cpu_ns: 1_000_000_000,
            memory_bytes: 0,
        };
        let b = Reading {
            cpu_ns: 11_000_000_000,
            memory_bytes: 0,
        };
        assert_eq!(rate(&a, &b, 10.0), 1_000_000_000);
        assert_eq!(rate(&b, &a, 10.0), 0);
        assert_eq!(rate(&a, &b, 0.0), 0);
        assert!(host_reading().is_some());
    }
}
