//! The baseline for pod start: bare `runc run --detach` of an equivalent bundle (a rootfs holding
//! the static busybox of Debian's busybox-static, `runc spec` defaults, `sleep 3600`), timed until
//! runc returns with the process started, then killed and deleted (not timed).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A bundle and a private runc root under `dir`; containers are removed on drop.
pub struct Bundle {
    dir: PathBuf,
    root: PathBuf,
    live: Vec<String>,
}

fn runc(root: &Path) -> Command {
    let mut c = Command::new("runc");
    c.arg("--root").arg(root);
    c.stdin(Stdio::null()).stdout(Stdio::null());
    c
}

fn check(out: std::process::Output, what: &str) -> Result<()> {
    if !out.status.success() {
        bail!("{what}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl Bundle {
    /// Build the bundle in `dir` from the busybox binary at `busybox` (it must be static).
    pub fn build(dir: &Path, busybox: &Path) -> Result<Self> {
        let bin = dir.join("rootfs/bin");
        std::fs::create_dir_all(&bin)?;
        std::fs::copy(busybox, bin.join("busybox"))
            .with_context(|| format!("copy {}", busybox.display()))?;
        for applet in ["sh", "sleep"] {
            let link = bin.join(applet);
            if !link.exists() {
                std::os::unix::fs::symlink("busybox", link)?;
            }
        }
        let _ = std::fs::remove_file(dir.join("config.json"));
        let out = Command::new("runc")
            .arg("spec")
            .current_dir(dir)
            .stderr(Stdio::piped())
            .output()
            .context("runc spec (is runc installed?)")?;
        check(out, "runc spec")?;
        let path = dir.join("config.json");
        let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
        spec["process"]["terminal"] = false.into();
        spec["process"]["args"] = serde_json::json!(["sleep", "3600"]);
        std::fs::write(&path, serde_json::to_vec_pretty(&spec)?)?;
        let root = dir.join("runc-root");
        std::fs::create_dir_all(&root)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            root,
            live: Vec::new(),
        })
    }

    /// `runc run --detach ID`: the time until runc returned with the container's process started.
    /// The container inherits runc's stdio, so stderr goes to a file (a pipe would stay open as
    /// long as `sleep` runs).
    pub fn run(&mut self, id: &str) -> Result<Duration> {
        let err_path = self.dir.join("runc-run.err");
        let err = std::fs::File::create(&err_path)?;
        let t0 = Instant::now();
        let st = runc(&self.root)
            .args(["run", "--detach", "--bundle"])
            .arg(&self.dir)
            .arg(id)
            .stderr(err)
            .status()?;
        let took = t0.elapsed();
        self.live.push(id.to_string());
        if !st.success() {
            let msg = std::fs::read_to_string(&err_path).unwrap_or_default();
            bail!("runc run --detach {id}: {}", msg.trim());
        }
        Ok(took)
    }

    /// `n` containers named `PREFIX-I` started with `runc run --detach`, `parallel` at a time:
    /// the wall time until the last returned with its process started. They stay until
    /// removed (or the bundle drops).
    pub fn run_parallel(&mut self, prefix: &str, n: usize, parallel: usize) -> Result<Duration> {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let (dir, root) = (&self.dir, &self.root);
        let t0 = Instant::now();
        let results: Vec<Result<Vec<String>>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..parallel.max(1))
                .map(|_| {
                    s.spawn(|| -> Result<Vec<String>> {
                        let mut ids = Vec::new();
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if i >= n {
                                return Ok(ids);
                            }
                            let id = format!("{prefix}-{i}");
                            // stderr to nowhere: a pipe would stay open as long as `sleep` runs.
                            let st = runc(root)
                                .args(["run", "--detach", "--bundle"])
                                .arg(dir)
                                .arg(&id)
                                .stderr(Stdio::null())
                                .status()?;
                            ids.push(id.clone());
                            if !st.success() {
                                bail!("runc run --detach {id}: {st}");
                            }
                        }
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| {
                    w.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("a runc thread panicked")))
                })
                .collect()
        });
        let took = t0.elapsed();
        let mut failed = None;
        for r in results {
            match r {
                Ok(ids) => self.live.extend(ids),
                Err(e) => failed = Some(e),
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(took),
        }
    }

    /// `runc kill ID KILL` + `runc delete --force ID`.
    pub fn remove(&mut self, id: &str) -> Result<()> {
        let _ = runc(&self.root)
            .args(["kill", id, "KILL"])
            .stderr(Stdio::null())
            .status();
        let out = runc(&self.root)
            .args(["delete", "--force", id])
            .stderr(Stdio::piped())
            .output()?;
        self.live.retain(|l| l != id);
        check(out, &format!("runc delete {id}"))
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        for id in std::mem::take(&mut self.live) {
            let _ = self.remove(&id);
        }
    }
}

/// The static busybox to put in the bundle: `$PATH`'s `busybox`, else the usual places.
pub fn find_busybox() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/bin".into(), "/usr/bin".into()])
        .map(|d| d.join("busybox"))
        .find(|p| p.is_file())
        .context("no busybox binary found (apt-get install busybox-static)")
}
