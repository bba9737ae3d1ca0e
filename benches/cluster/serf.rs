//! The same kill -9 procedure against HashiCorp Serf (default LAN profile), for comparison.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::stats::{self, row};

#[derive(Deserialize)]
struct Members {
    members: Vec<SerfMember>,
}

#[derive(Deserialize)]
struct SerfMember {
    name: String,
    status: String,
}

struct Agent {
    name: String,
    bind: u16,
    rpc: u16,
    log: PathBuf,
    child: Option<Child>,
}

struct Serf {
    bin: PathBuf,
    pidfile: PathBuf,
    agents: Vec<Agent>,
}

fn free_port() -> Result<u16> {
    loop {
        let t = std::net::TcpListener::bind("127.0.0.1:0")?;
        let p = t.local_addr()?.port();
        if std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok() {
            return Ok(p);
        }
    }
}

impl Serf {
    fn spawn(&mut self, i: usize) -> Result<()> {
        let a = &self.agents[i];
        let log = OpenOptions::new().create(true).append(true).open(&a.log)?;
        let mut cmd = Command::new(&self.bin);
        cmd.args([
            "agent",
            "-node",
            &a.name,
            "-bind",
            &format!("127.0.0.1:{}", a.bind),
            "-rpc-addr",
            &format!("127.0.0.1:{}", a.rpc),
        ]);
        if i > 0 {
            cmd.args(["-join", &format!("127.0.0.1:{}", self.agents[0].bind)]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("spawn serf")?;
        writeln!(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.pidfile)?,
            "{}",
            child.id()
        )?;
        self.agents[i].child = Some(child);
        Ok(())
    }

    async fn members(&self, i: usize) -> Result<Vec<SerfMember>> {
        let out = tokio::process::Command::new(&self.bin)
            .args([
                "members",
                "-format",
                "json",
                "-rpc-addr",
                &format!("127.0.0.1:{}", self.agents[i].rpc),
            ])
            .stderr(Stdio::null())
            .output()
            .await?;
        if !out.status.success() {
            bail!("serf members failed");
        }
        Ok(serde_json::from_slice::<Members>(&out.stdout)?.members)
    }

    async fn wait_all_alive(&self, timeout: Duration) -> Result<()> {
        let t0 = Instant::now();
        let n = self.agents.len();
        loop {
            let mut ok = true;
            for i in 0..n {
                let alive = self
                    .members(i)
                    .await
                    .map(|m| m.iter().filter(|m| m.status == "alive").count())
                    .unwrap_or(0);
                ok &= alive == n;
            }
            if ok {
                return Ok(());
            }
            if t0.elapsed() > timeout {
                bail!("serf cluster did not converge within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Serf {
    fn drop(&mut self) {
        for a in &mut self.agents {
            if let Some(mut c) = a.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

pub async fn detection(bin: &Path, root: &Path, n: usize, kills: usize) -> Result<String> {
    std::fs::create_dir_all(root)?;
    let mut agents = Vec::new();
    for i in 1..=n {
        agents.push(Agent {
            name: format!("s{i}"),
            bind: free_port()?,
            rpc: free_port()?,
            log: root.join(format!("s{i}.log")),
            child: None,
        });
    }
    let mut s = Serf {
        bin: bin.to_path_buf(),
        pidfile: root.join("pids"),
        agents,
    };
    s.spawn(0)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 1..n {
        s.spawn(i)?;
    }
    s.wait_all_alive(Duration::from_secs(60)).await?;
    let mut detect = Vec::new();
    let mut undetected = 0;
    for r in 0..kills {
        let victim = 1 + r % (n - 1);
        let vname = s.agents[victim].name.clone();
        let survivors: Vec<usize> = (0..n).filter(|&i| i != victim).collect();
        let mut dead: Vec<Option<Duration>> = vec![None; n];
        let mut child = s.agents[victim]
            .child
            .take()
            .context("serf agent not running")?;
        let t0 = Instant::now();
        child.kill()?;
        child.wait()?;
        loop {
            let polls = survivors.iter().map(|&i| {
                let s = &s;
                async move { (i, s.members(i).await) }
            });
            let results = futures::future::join_all(polls).await;
            let now = t0.elapsed();
            for (i, m) in results {
                let Ok(m) = m else { continue };
                if m.iter().any(|m| m.name == vname && m.status != "alive") {
                    dead[i].get_or_insert(now);
                }
            }
            if survivors.iter().all(|&i| dead[i].is_some()) || now > Duration::from_secs(60) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let d: Vec<Duration> = survivors.iter().filter_map(|&i| dead[i]).collect();
        if d.len() == survivors.len() {
            detect.push(*d.iter().max().unwrap_or(&Duration::ZERO));
        } else {
            undetected += 1;
        }
        eprintln!(
            "serf round {r}: killed {vname}; all survivors report it failed after {:?}",
            d.iter().max().filter(|_| d.len() == survivors.len())
        );
        s.spawn(victim)?;
        s.wait_all_alive(Duration::from_secs(60)).await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let sm = stats::summarize(&detect);
    let mut out = format!("### Serf (default LAN profile), loopback: {n} agents, {kills} kills, `serf members` polled every 20 ms\n\n{}\n", stats::HEADER);
    out += &format!("{}\n", row("**every survivor reports it failed**", sm));
    out += &format!("\nundetected within 60 s: {undetected}\n");
    if let Some(x) = sm {
        out += &format!(
            "\nRESULT serf_detection loopback n={n} p50_ms={:.0} p99_ms={:.0}\n",
            x.p50, x.p99
        );
    }
    Ok(out)
}
