//! What a benchmark needs from a running cluster, whether loopback processes or the netns testnet.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::api::Api;

pub trait Cluster {
    fn len(&self) -> usize;
    fn name(&self, i: usize) -> String;
    fn api_url(&self, i: usize) -> String;
    fn api(&self) -> &Api;
    /// SIGKILL the node's agent; returns the instant taken just before the signal.
    fn kill(&mut self, i: usize) -> Result<Instant>;
    /// Start the (killed) node's agent again, with its data dir.
    fn start(&mut self, i: usize) -> Result<()>;
    fn pid(&self, i: usize) -> Option<u32>;
    fn log_path(&self, i: usize) -> PathBuf;
    /// Bytes (received, sent) by the node on its own interface, when it can be told apart.
    fn net_bytes(&self, i: usize) -> Option<(u64, u64)>;
}

/// Wait until every node in `nodes` reports every node of the cluster alive.
pub async fn wait_all_alive(
    c: &dyn Cluster,
    nodes: &[usize],
    timeout: Duration,
) -> Result<Duration> {
    let t0 = Instant::now();
    let n = c.len();
    loop {
        let mut ok = true;
        let mut last = String::new();
        for &i in nodes {
            match c.api().status(&c.api_url(i)).await {
                Ok(s) if s.alive() == n => {}
                Ok(s) => {
                    ok = false;
                    last = format!("{} sees {}/{} alive", c.name(i), s.alive(), n);
                    break;
                }
                Err(e) => {
                    ok = false;
                    last = format!("{}: {e:#}", c.name(i));
                    break;
                }
            }
        }
        if ok {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > timeout {
            bail!("cluster did not converge within {timeout:?}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn all(c: &dyn Cluster) -> Vec<usize> {
    (0..c.len()).collect()
}

/// utime + stime of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// A `kB` field of /proc/PID/status (VmRSS, VmHWM), in KiB.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Lines of the log from byte `from` on that contain `needle` (ANSI colour codes ignored).
pub fn log_lines_since(path: &std::path::Path, from: u64, needle: &str) -> Vec<String> {
    let Ok(bytes) = std::fs::read(path) else {
        return Vec::new();
    };
    let tail = bytes.get(from as usize..).unwrap_or(&[]);
    String::from_utf8_lossy(tail)
        .lines()
        .map(strip_ansi)
        .filter(|l| l.contains(needle))
        .collect()
}

pub fn file_len(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
