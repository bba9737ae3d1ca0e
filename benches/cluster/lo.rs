//! A cluster of agents on loopback: one process per agent, distinct ports, data dirs under a root.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::api::Api;
use crate::cluster::{self, Cluster};

struct Agent {
    name: String,
    data: PathBuf,
    p2p: u16,
    api: u16,
    log: PathBuf,
    child: Option<Child>,
}

pub struct Loopback {
    bin: PathBuf,
    pidfile: PathBuf,
    token: String,
    agents: Vec<Agent>,
    api: Api,
}

/// Ports handed out in this run: the kernel can return a port bound and released a moment
/// ago to the next `bind(0)`, and two agents given the same port fail (one at its listen).
static TAKEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// A port free now (for TCP with `tcp`, else UDP) and not handed out before in this run.
fn free_port(tcp: bool) -> Result<u16> {
    for _ in 0..1000 {
        let port = match tcp {
            true => std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port(),
            false => std::net::UdpSocket::bind("127.0.0.1:0")?
                .local_addr()?
                .port(),
        };
        if TAKEN.lock().expect("ports").insert(port) {
            return Ok(port);
        }
    }
    bail!("no free port not handed out already")
}

fn free_tcp_port() -> Result<u16> {
    free_port(true)
}

fn free_udp_port() -> Result<u16> {
    free_port(false)
}

impl Loopback {
    /// `shoal init` the first agent, start it, then start `n - 1` joiners and wait until every
    /// agent sees all `n` alive.
    pub async fn start(bin: &Path, root: &Path, prefix: &str, n: usize) -> Result<Self> {
        std::fs::create_dir_all(root)?;
        let mut agents = Vec::with_capacity(n);
        for i in 1..=n {
            let name = format!("{prefix}{i}");
            let dir = root.join(&name);
            std::fs::create_dir_all(&dir)?;
            agents.push(Agent {
                data: dir.join("data"),
                log: dir.join("agent.log"),
                name,
                p2p: free_udp_port()?,
                api: free_tcp_port()?,
                child: None,
            });
        }
        let a0 = &agents[0];
        let out = Command::new(bin)
            .args(["init", "--data-dir"])
            .arg(&a0.data)
            .args([
                "--name",
                &a0.name,
                "--listen-p2p",
                &format!("127.0.0.1:{}", a0.p2p),
                "--listen-api",
                &format!("127.0.0.1:{}", a0.api),
            ])
            .stderr(Stdio::null())
            .output()
            .context("shoal init")?;
        if !out.status.success() {
            bail!("shoal init failed: {}", out.status);
        }
        let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let ca = std::fs::read(a0.data.join("tls/ca.crt"))?;
        let admin = std::fs::read_to_string(a0.data.join("admin-token"))?;
        let api = Api::new(&ca, &admin)?;
        let mut c = Loopback {
            bin: bin.to_path_buf(),
            pidfile: root.join("pids"),
            token,
            agents,
            api,
        };
        c.spawn(0, false)?;
        c.wait_up(0).await?;
        if let Some(status) = c.agents[0]
            .child
            .as_mut()
            .and_then(|ch| ch.try_wait().ok()?)
        {
            bail!(
                "the first agent exited at start ({status}; log {})",
                c.agents[0].log.display()
            );
        }
        // Joiners in small batches, so that 50 agents do not all handshake with the seed at once.
        for batch in (1..n).collect::<Vec<_>>().chunks(8) {
            for &i in batch {
                c.spawn(i, true)?;
            }
            c.wait_up(batch[batch.len() - 1]).await?;
            c.restart_failed_joiners(batch).await?;
        }
        let took = cluster::wait_all_alive(&c, &cluster::all(&c), Duration::from_secs(240)).await?;
        eprintln!(
            "loopback cluster of {n} converged ({:.1} s after the last start)",
            took.as_secs_f64()
        );
        Ok(c)
    }

    /// A joiner that exited at start (its port was taken meanwhile by another process: it
    /// stops at once, saying so in its log) starts again, on new ports, from an empty data
    /// dir, at most 3 times.
    async fn restart_failed_joiners(&mut self, batch: &[usize]) -> Result<()> {
        for &i in batch {
            for attempt in 1..=3 {
                let exited = match self.agents[i].child.as_mut() {
                    Some(child) => child.try_wait()?,
                    None => None,
                };
                let Some(status) = exited else { break };
                eprintln!(
                    "agent {} exited at start ({status}; log {}): new ports, attempt {attempt}",
                    self.name(i),
                    self.agents[i].log.display()
                );
                self.agents[i].child = None;
                let _ = std::fs::remove_dir_all(&self.agents[i].data);
                self.agents[i].p2p = free_udp_port()?;
                self.agents[i].api = free_tcp_port()?;
                self.spawn(i, true)?;
                self.wait_up(i).await?;
            }
        }
        Ok(())
    }

    /// Waits until agent `i` serves its API, or has exited (the caller restarts it).
    async fn wait_up(&mut self, i: usize) -> Result<()> {
        let t0 = Instant::now();
        while self.api.status(&self.api_url(i)).await.is_err() {
            if let Some(child) = self.agents[i].child.as_mut() {
                if child.try_wait()?.is_some() {
                    return Ok(());
                }
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!(
                    "agent {} did not serve its API within 30 s (log: {})",
                    self.name(i),
                    self.agents[i].log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    fn spawn(&mut self, i: usize, first_join: bool) -> Result<()> {
        let a = &self.agents[i];
        let log = OpenOptions::new().create(true).append(true).open(&a.log)?;
        let mut cmd = Command::new(&self.bin);
        cmd.args(["agent", "--data-dir"]).arg(&a.data);
        if first_join {
            let seed = format!("127.0.0.1:{}", self.agents[0].p2p);
            cmd.args(["--name", &a.name, "--join", &seed, "--token", &self.token]);
            cmd.args([
                "--listen-p2p",
                &format!("127.0.0.1:{}", a.p2p),
                "--listen-api",
                &format!("127.0.0.1:{}", a.api),
            ]);
        }
        cmd.env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        let child = cmd.spawn().context("spawn shoal agent")?;
        let mut pids: File = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.pidfile)?;
        writeln!(pids, "{}", child.id())?;
        self.agents[i].child = Some(child);
        Ok(())
    }
}

impl Cluster for Loopback {
    fn len(&self) -> usize {
        self.agents.len()
    }
    fn name(&self, i: usize) -> String {
        self.agents[i].name.clone()
    }
    fn api_url(&self, i: usize) -> String {
        format!("https://127.0.0.1:{}", self.agents[i].api)
    }
    fn api(&self) -> &Api {
        &self.api
    }
    fn kill(&mut self, i: usize) -> Result<Instant> {
        let mut child = self.agents[i].child.take().context("agent not running")?;
        let at = Instant::now();
        child.kill()?; // SIGKILL
        child.wait()?;
        Ok(at)
    }
    fn start(&mut self, i: usize) -> Result<()> {
        self.spawn(i, false)
    }
    fn pid(&self, i: usize) -> Option<u32> {
        self.agents[i].child.as_ref().map(|c| c.id())
    }
    fn log_path(&self, i: usize) -> PathBuf {
        self.agents[i].log.clone()
    }
    fn net_bytes(&self, _i: usize) -> Option<(u64, u64)> {
        None // one loopback interface for all agents: per-node traffic cannot be told apart
    }
}

impl Drop for Loopback {
    fn drop(&mut self) {
        for a in &mut self.agents {
            if let Some(mut c) = a.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
