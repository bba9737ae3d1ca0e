//! `shoal sandbox --dir D --hostname H`: the pod's namespace holder (the "pause" process).
//! It forks away from the agent, starts a new session, unshares network, IPC and UTS
//! namespaces, brings `lo` up, sets the pod's hostname, records `sandbox.json` (pid and start
//! time), prints `ready` on its stdout (a pipe the agent reads) and sleeps until SIGTERM.
//! The pod's containers join its namespaces through `/proc/<pid>/ns/{net,ipc,uts}`. With
//! `--host-network` (a `hostNetwork: true` pod) it unshares only IPC: its network and UTS
//! namespaces are the node's, so the containers share the node's interfaces and hostname.

use std::io::Write;
use std::path::Path;

use super::{write_json, ProcessRecord, RuntimeError};

pub const SANDBOX_RECORD: &str = "sandbox.json";
pub const SANDBOX_LOG: &str = "sandbox.log";

/// Entry point of `shoal sandbox`; returns the first process's exit code (0 once forked).
pub fn main(dir: &Path, hostname: &str, host_network: bool) -> i32 {
    super::set_niceness(0);
    // SAFETY: `shoal sandbox` is single-threaded (no runtime, no threads spawned).
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { .. }) => return 0,
        Ok(nix::unistd::ForkResult::Child) => {}
        Err(e) => {
            eprintln!("sandbox: fork: {e}");
            return 1;
        }
    }
    let code = match hold(dir, hostname, host_network) {
        Ok(()) => 0,
        Err(e) => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "failed: {e}");
            let _ = out.flush();
            eprintln!("sandbox: {e}");
            1
        }
    };
    std::process::exit(code)
}

fn sys(what: &str) -> impl FnOnce(nix::Error) -> RuntimeError + '_ {
    move |e| RuntimeError::Spawn(format!("{what}: {e}"))
}

fn hold(dir: &Path, hostname: &str, host_network: bool) -> Result<(), RuntimeError> {
    use nix::sched::{unshare, CloneFlags};
    use nix::sys::signal::{SigSet, Signal};
    nix::unistd::setsid().map_err(sys("setsid"))?;
    if let Ok(log) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(SANDBOX_LOG))
    {
        let _ = nix::unistd::dup2_stderr(&log);
    }
    if let Ok(null) = std::fs::File::open("/dev/null") {
        let _ = nix::unistd::dup2_stdin(&null);
    }
    // Block the signals we wait for before anything can send them.
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGHUP);
    set.thread_block().map_err(sys("sigprocmask"))?;
    if host_network {
        unshare(CloneFlags::CLONE_NEWIPC).map_err(sys("unshare(ipc)"))?;
    } else {
        unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS)
            .map_err(sys("unshare(net, ipc, uts)"))?;
        nix::unistd::sethostname(hostname).map_err(sys("sethostname"))?;
        loopback_up()?;
    }
    network_hook(dir)?;
    let me = ProcessRecord::this_process()
        .ok_or_else(|| RuntimeError::Spawn("reading own /proc/self/stat".into()))?;
    write_json(&dir.join(SANDBOX_RECORD), &me)?;
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "ready");
        let _ = out.flush();
    }
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&null);
    }
    loop {
        match set.wait() {
            Ok(Signal::SIGTERM) | Ok(Signal::SIGINT) => return Ok(()),
            _ => continue,
        }
    }
}

/// Hook for the pod network (a later issue gives the sandbox a veth and an address; the
/// agent can also configure it from outside through `/proc/<pid>/ns/net`).
fn network_hook(_dir: &Path) -> Result<(), RuntimeError> {
    Ok(())
}

/// `ip link set lo up` in the current network namespace (SIOCGIFFLAGS / SIOCSIFFLAGS).
fn loopback_up() -> Result<(), RuntimeError> {
    use nix::libc;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: plain socket/ioctl calls on a zeroed ifreq whose name is NUL-terminated; the
    // socket is owned (closed on drop).
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(RuntimeError::Spawn(format!(
                "socket: {}",
                std::io::Error::last_os_error()
            )));
        }
        let sock = OwnedFd::from_raw_fd(fd);
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(RuntimeError::Spawn(format!(
                "SIOCGIFFLAGS lo: {}",
                std::io::Error::last_os_error()
            )));
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(RuntimeError::Spawn(format!(
                "SIOCSIFFLAGS lo: {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    Ok(())
}
