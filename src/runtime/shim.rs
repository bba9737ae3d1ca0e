//! `shoal shim --attempt DIR`: the monitor of one container attempt, like containerd-shim or
//! conmon. It forks away from the agent (the agent only waits for the short-lived first
//! process), starts a new session, becomes a child subreaper, mounts the container's overlay
//! rootfs in a private mount namespace of its own (so the mount lives exactly as long as the
//! container and needs no clean-up after an agent crash), runs `runc create` with pipes as the
//! container's stdout/stderr and `runc start`, copies the output into the CRI log, reaps the
//! container, records `exit.json` and deletes the runc container.
//!
//! Its stdout (a pipe the agent holds) carries one line, `started` or `failed: <reason>`, and
//! reaches EOF when the shim exits: the agent learns of starts and exits without polling.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use nix::sys::wait::{waitpid, WaitStatus};
use serde::{Deserialize, Serialize};

use super::logs::{copy_stream, LogWriter, MAX_LOG_FILE};
use super::runc::{self, OciRuntime, RuncCli};
use super::{read_json, write_json, ExitRecord, ProcessRecord, RuntimeError, StartedRecord};

/// `shim.json` in the attempt dir, written by the agent: everything the shim needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShimSpec {
    /// The runc container id.
    pub id: String,
    pub runtime: PathBuf,
    pub runc_root: PathBuf,
    /// Unpacked image layers, bottom first (overlay lower dirs).
    pub layers: Vec<PathBuf>,
    pub log_file: PathBuf,
    /// `linux.cgroupsPath` (to read the OOM counter).
    pub cgroups_path: String,
}

/// File names in an attempt dir.
pub const SHIM_SPEC: &str = "shim.json";
pub const SHIM_PID: &str = "shim.pid";
pub const CONTAINER_PID: &str = "container.pid";
pub const STARTED: &str = "started.json";
pub const EXIT: &str = "exit.json";
pub const RUNC_LOG: &str = "runc.log";
pub const SHIM_LOG: &str = "shim.log";

/// Exit code recorded when the container never ran (as CRI runtimes do).
pub const START_ERROR_CODE: i32 = 128;

/// Entry point of `shoal shim`. Returns the first process's exit code: 0 once the monitor is
/// forked off; errors before that go to stderr.
pub fn main(attempt: &Path) -> i32 {
    // The agent runs above default priority; the container (and runc) must not inherit that.
    super::set_niceness(0);
    let spec: ShimSpec = match read_json(&attempt.join(SHIM_SPEC)) {
        Ok(Some(s)) => s,
        Ok(None) => {
            eprintln!("shim: {} is missing", attempt.join(SHIM_SPEC).display());
            return 2;
        }
        Err(e) => {
            eprintln!("shim: {e}");
            return 2;
        }
    };
    // SAFETY: `shoal shim` is single-threaded up to here (no runtime, no threads spawned).
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { .. }) => return 0,
        Ok(nix::unistd::ForkResult::Child) => {}
        Err(e) => {
            eprintln!("shim: fork: {e}");
            return 1;
        }
    }
    let code = match monitor(attempt, &spec) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("shim: {e}");
            1
        }
    };
    std::process::exit(code)
}

fn notify(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn sys(what: &str) -> impl FnOnce(nix::Error) -> RuntimeError + '_ {
    move |e| RuntimeError::Spawn(format!("{what}: {e}"))
}

/// The monitor process (after the fork).
fn monitor(attempt: &Path, spec: &ShimSpec) -> Result<(), RuntimeError> {
    nix::unistd::setsid().map_err(sys("setsid"))?;
    if let Ok(log) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(attempt.join(SHIM_LOG))
    {
        let _ = nix::unistd::dup2_stderr(&log);
    }
    if let Ok(null) = std::fs::File::open("/dev/null") {
        let _ = nix::unistd::dup2_stdin(&null);
    }
    nix::sys::prctl::set_child_subreaper(true).map_err(sys("PR_SET_CHILD_SUBREAPER"))?;
    if let Some(me) = ProcessRecord::this_process() {
        write_json(&attempt.join(SHIM_PID), &me)?;
    }
    if let Err(e) = mount_rootfs(attempt, &spec.layers) {
        return start_failed(attempt, spec, &format!("mounting the rootfs: {e}"));
    }
    let (out_r, out_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys("pipe"))?;
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys("pipe"))?;
    let writer =
        LogWriter::open(&spec.log_file, MAX_LOG_FILE).map_err(super::io_err(&spec.log_file))?;
    let writer = Arc::new(Mutex::new(writer));
    let (done_tx, done_rx) = mpsc::channel();
    for (fd, stream) in [(out_r, "stdout"), (err_r, "stderr")] {
        let writer = writer.clone();
        let done = done_tx.clone();
        std::thread::spawn(move || {
            copy_stream(std::fs::File::from(fd), stream, &writer, Utc::now);
            let _ = done.send(());
        });
    }
    drop(done_tx);

    let runc = RuncCli::new(&spec.runtime, &spec.runc_root);
    let pid_file = attempt.join(CONTAINER_PID);
    let created = create(&runc, attempt, spec, &pid_file, out_w, err_w);
    let pid = match created {
        Ok(pid) => pid,
        Err(message) => {
            wait_logs(&done_rx);
            let _ = runc.delete(&spec.id, true);
            return start_failed(attempt, spec, &message);
        }
    };
    if let Err(e) = runc.start(&spec.id) {
        let _ = runc.kill(&spec.id, "KILL");
        let _ = reap(pid);
        wait_logs(&done_rx);
        let _ = runc.delete(&spec.id, true);
        let message = std::fs::read_to_string(attempt.join(RUNC_LOG))
            .ok()
            .and_then(|l| runc::last_error(&l))
            .unwrap_or_else(|| e.to_string());
        return start_failed(attempt, spec, &message);
    }
    let started_at = Utc::now();
    write_json(&attempt.join(STARTED), &StartedRecord { pid, started_at })?;
    notify("started");

    let status = reap(pid);
    wait_logs(&done_rx);
    let oom = runc::oom_killed(&spec.cgroups_path);
    if let Err(e) = runc.delete(&spec.id, true) {
        eprintln!("shim: {e}");
    }
    let (exit_code, signal) = match status {
        Some(WaitStatus::Exited(_, code)) => (code, None),
        Some(WaitStatus::Signaled(_, sig, _)) => (128 + sig as i32, Some(sig as i32)),
        _ => (255, None),
    };
    let reason = if oom {
        "OOMKilled"
    } else if exit_code == 0 {
        "Completed"
    } else {
        "Error"
    };
    write_json(
        &attempt.join(EXIT),
        &ExitRecord {
            exit_code,
            signal,
            reason: reason.into(),
            message: None,
            started_at: Some(started_at),
            finished_at: Utc::now(),
            oom_killed: oom,
        },
    )
}

/// `runc create`; the container's pid, or runc's error message.
fn create(
    runc: &RuncCli,
    attempt: &Path,
    spec: &ShimSpec,
    pid_file: &Path,
    out_w: OwnedFd,
    err_w: OwnedFd,
) -> Result<i32, String> {
    let log = attempt.join(RUNC_LOG);
    let mut cmd = runc.create_command(attempt, pid_file, &log, &spec.id);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w));
    let status = cmd.status();
    drop(cmd); // closes our copies of the write ends: EOF follows the container's exit
    let runc_error = || {
        std::fs::read_to_string(&log)
            .ok()
            .and_then(|l| runc::last_error(&l))
    };
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => return Err(runc_error().unwrap_or_else(|| format!("runc create: {s}"))),
        Err(e) => return Err(format!("{}: {e}", spec.runtime.display())),
    }
    std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|p| p.trim().parse().ok())
        .ok_or_else(|| format!("runc create left no pid in {}", pid_file.display()))
}

/// Reaps children until `pid` is among them; `None` if it vanished without being ours.
fn reap(pid: i32) -> Option<WaitStatus> {
    let target = nix::unistd::Pid::from_raw(pid);
    loop {
        match waitpid(None, None) {
            Ok(s @ (WaitStatus::Exited(p, _) | WaitStatus::Signaled(p, _, _))) if p == target => {
                return Some(s)
            }
            Ok(_) => continue,
            Err(nix::Error::EINTR) => continue,
            Err(_) => {
                // Not our child (should not happen): wait for it to disappear.
                while std::path::Path::new(&format!("/proc/{pid}")).exists() {
                    std::thread::sleep(Duration::from_millis(50));
                }
                return None;
            }
        }
    }
}

/// Waits (bounded) for both log copiers to reach EOF.
fn wait_logs(done: &mpsc::Receiver<()>) {
    for _ in 0..2 {
        if done.recv_timeout(Duration::from_secs(2)).is_err() {
            break;
        }
    }
}

fn start_failed(attempt: &Path, _spec: &ShimSpec, message: &str) -> Result<(), RuntimeError> {
    write_json(
        &attempt.join(EXIT),
        &ExitRecord {
            exit_code: START_ERROR_CODE,
            signal: None,
            reason: "StartError".into(),
            message: Some(message.chars().take(1024).collect()),
            started_at: None,
            finished_at: Utc::now(),
            oom_killed: false,
        },
    )?;
    notify(&format!("failed: {message}"));
    Ok(())
}

/// Mounts `<attempt>/rootfs` as an overlay of the layers (top first in `lowerdir`) with
/// `<attempt>/upper` and `<attempt>/work`, in a new private mount namespace of this process.
fn mount_rootfs(attempt: &Path, layers: &[PathBuf]) -> Result<(), RuntimeError> {
    use nix::mount::{mount, MsFlags};
    use nix::sched::{unshare, CloneFlags};
    if layers.is_empty() {
        return Err(RuntimeError::Image("the image has no layers".into()));
    }
    unshare(CloneFlags::CLONE_NEWNS).map_err(sys("unshare(CLONE_NEWNS)"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(sys("making / private"))?;
    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|l| l.display().to_string())
        .collect();
    for l in &lower {
        if l.contains([',', ':']) {
            return Err(RuntimeError::Image(format!(
                "layer path {l:?} cannot be an overlay lower dir"
            )));
        }
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        attempt.join("upper").display(),
        attempt.join("work").display()
    );
    mount(
        Some("overlay"),
        &attempt.join("rootfs"),
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(sys("mounting the overlay"))
}
