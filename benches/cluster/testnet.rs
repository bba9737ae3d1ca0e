//! The netns testnet (`testnet/up.sh N`, already up) seen as a benchmark cluster.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::api::Api;
use crate::cluster::Cluster;

pub struct Testnet {
    scripts: PathBuf,
    run: PathBuf,
    n: usize,
    api: Api,
}

impl Testnet {
    /// `scripts` is the `testnet/` directory; its `run/` must hold an up testnet of `n` nodes.
    pub fn open(scripts: &Path, n: usize) -> Result<Self> {
        let run = scripts.join("run");
        let ca = std::fs::read(run.join("n1/data/tls/ca.crt"))
            .context("testnet CA (is the testnet up?)")?;
        let token = std::fs::read_to_string(run.join("n1/data/admin-token"))?;
        Ok(Self {
            scripts: scripts.to_path_buf(),
            run,
            n,
            api: Api::new(&ca, &token)?,
        })
    }

    fn node(&self, i: usize) -> String {
        format!("n{}", i + 1)
    }

    fn counter(&self, i: usize, which: &str) -> Option<u64> {
        let p = format!("/sys/class/net/shl-{}/statistics/{which}", self.node(i));
        std::fs::read_to_string(p).ok()?.trim().parse().ok()
    }
}

impl Cluster for Testnet {
    fn len(&self) -> usize {
        self.n
    }
    fn name(&self, i: usize) -> String {
        self.node(i)
    }
    fn api_url(&self, i: usize) -> String {
        format!("https://10.77.0.{}:6443", 11 + i)
    }
    fn api(&self) -> &Api {
        &self.api
    }
    fn kill(&mut self, i: usize) -> Result<Instant> {
        let pid = self.pid(i).context("no agent.pid")?;
        let at = Instant::now();
        let st = Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()?;
        if !st.success() {
            bail!("kill -9 {pid} failed");
        }
        Ok(at)
    }
    fn start(&mut self, i: usize) -> Result<()> {
        let st = Command::new(self.scripts.join("start.sh"))
            .arg(self.node(i))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if !st.success() {
            bail!("testnet/start.sh {} failed", self.node(i));
        }
        Ok(())
    }
    fn pid(&self, i: usize) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.run.join(self.node(i)).join("agent.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        crate::cluster::cpu_ticks(pid).map(|_| pid)
    }
    fn log_path(&self, i: usize) -> PathBuf {
        self.run.join(self.node(i)).join("agent.log")
    }
    fn net_bytes(&self, i: usize) -> Option<(u64, u64)> {
        // The host side of the node's veth: what it transmits, the node receives.
        Some((self.counter(i, "tx_bytes")?, self.counter(i, "rx_bytes")?))
    }
}
