//! The standard `process_*` metrics of the agent's own process (CPU seconds, resident memory,
//! open file descriptors, start time), read from `/proc/self` on each scrape (a collector),
//! under the names every Prometheus client library uses.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

/// Clock ticks per second of `/proc/self/stat`'s times (`sysconf(_SC_CLK_TCK)`: 100 on Linux).
const CLOCK_TICKS: f64 = 100.0;
const PAGE_BYTES: i64 = 4096;

/// What one read of `/proc/self/stat` gives.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProcStat {
    /// User + system CPU seconds.
    pub cpu_seconds: f64,
    /// Resident pages.
    pub rss_pages: i64,
    /// Start, in clock ticks after boot.
    pub start_ticks: u64,
}

/// Parses the text of `/proc/PID/stat`.
pub fn parse_stat(stat: &str) -> Option<ProcStat> {
    // The command name may contain spaces and parentheses: fields resume after the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state): utime is field 14, stime 15, starttime 22, rss 24.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let start_ticks: u64 = fields.get(19)?.parse().ok()?;
    let rss_pages: i64 = fields.get(21)?.parse().ok()?;
    Some(ProcStat {
        cpu_seconds: (utime + stime) as f64 / CLOCK_TICKS,
        rss_pages,
        start_ticks,
    })
}

fn boot_time() -> Option<u64> {
    std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// Reads `/proc/self` on every scrape.
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(stat) = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .as_deref()
            .and_then(parse_stat)
        else {
            return Ok(());
        };
        let cpu = ConstCounter::new(stat.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu",
            "Total user and system CPU time spent",
            Some(&Unit::Seconds),
            cpu.metric_type(),
        )?)?;
        let rss = ConstGauge::new(stat.rss_pages * PAGE_BYTES);
        rss.encode(encoder.encode_descriptor(
            "process_resident_memory",
            "Resident memory size",
            Some(&Unit::Bytes),
            rss.metric_type(),
        )?)?;
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            let fds = ConstGauge::new(fds.count() as i64);
            fds.encode(encoder.encode_descriptor(
                "process_open_fds",
                "Number of open file descriptors",
                None,
                fds.metric_type(),
            )?)?;
        }
        if let Some(btime) = boot_time() {
            let start = ConstGauge::new(btime as f64 + stat.start_ticks as f64 / CLOCK_TICKS);
            start.encode(encoder.encode_descriptor(
                "process_start_time",
                "Start time of the process since unix epoch",
                Some(&Unit::Seconds),
                start.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat() {
        let stat = "1234 (shoal (agent)) S 1 1234 1234 0 -1 4194560 5000 0 0 0 250 50 0 0 20 0 4 0 \
                    9000 300000000 5120 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(
            parse_stat(stat),
            Some(ProcStat {
                cpu_seconds: 3.0,
                rss_pages: 5120,
                start_ticks: 9000
            })
        );
        assert_eq!(parse_stat("garbage"), None);
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(parse_stat(&own).unwrap().rss_pages > 0);
    }
}
