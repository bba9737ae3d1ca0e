//! The pod network of a node: a bridge on `shoal0` with `host-local`-style leases over the
//! node's pod CIDR. [`Cni`] attaches and detaches pods either in-process over netlink
//! (`runtime::netlink`, the default) or through the real CNI plugins (Debian's
//! `containernetworking-plugins`, `SHOAL_CNI=plugins`): the network configuration, the plugin
//! invocation per the CNI spec (environment, config on stdin, result or error JSON on stdout,
//! bounded output, a timeout), and `network.json`, the pod dir's record of what the pod got.
//! Both keep the same leases and record the same result. Config generation and result
//! parsing are pure; `Cni` is the thin shell.

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use serde_json::{json, Value};

use super::RuntimeError;
use crate::model::network::{self, BRIDGE, CNI_NETWORK, POD_IFNAME};
pub use crate::model::observed::{PodAddress, PodNetwork, NO_POD_CIDR};

/// The pod dir's record of the pod's network attachment.
pub const NETWORK_RECORD: &str = "network.json";
/// The spec version we speak; the Debian 1.1.1 plugins accept 0.1.0 … 1.0.0
/// (`CNI_COMMAND=VERSION`).
pub const CNI_VERSION: &str = "1.0.0";
/// Where Debian installs the plugins.
pub const DEFAULT_PLUGIN_DIR: &str = "/usr/lib/cni";
/// The main plugin of the network (its IPAM plugin is `host-local`).
pub const PLUGIN: &str = "bridge";
/// Most bytes read from a plugin's stdout or stderr.
pub const MAX_PLUGIN_OUTPUT: u64 = 64 << 10;
/// A plugin call that takes longer is killed and reported.
pub const PLUGIN_TIMEOUT: Duration = Duration::from_secs(20);
/// How pods are attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CniMode {
    /// Netlink from the agent (`runtime::netlink`): no process per pod.
    InProcess,
    /// The `bridge` and `host-local` plugin binaries, one call per ADD/DEL/CHECK.
    Plugins,
}

impl CniMode {
    /// `SHOAL_CNI`: `in-process` (or unset) or `plugins`; anything else is refused.
    pub fn from_env() -> Result<Self, String> {
        Self::parse(std::env::var("SHOAL_CNI").ok().as_deref())
    }

    pub fn parse(value: Option<&str>) -> Result<Self, String> {
        match value {
            None | Some("") | Some("in-process") => Ok(CniMode::InProcess),
            Some("plugins") => Ok(CniMode::Plugins),
            Some(other) => Err(format!(
                "SHOAL_CNI={other:?} is not supported: use \"in-process\" (the default) or \"plugins\""
            )),
        }
    }
}

/// Where the plugins are and where `host-local` keeps its leases.
#[derive(Clone, Debug, PartialEq)]
pub struct CniConfig {
    pub mode: CniMode,
    /// Directories searched for plugin binaries (`CNI_PATH`).
    pub plugin_path: Vec<PathBuf>,
    /// `host-local`'s `dataDir`: `<data>/cni/networks` (per agent, so testnet nodes sharing a
    /// filesystem never share leases).
    pub ipam_dir: PathBuf,
    pub timeout: Duration,
}

impl CniConfig {
    /// `SHOAL_CNI` ([`CniMode::from_env`]; the agent refuses a bad value at start),
    /// `SHOAL_CNI_PATH` (colon-separated, default `/usr/lib/cni`); leases under `data_dir`.
    pub fn from_env(data_dir: &Path) -> Self {
        let mode = CniMode::from_env().unwrap_or(CniMode::InProcess);
        let path = std::env::var("SHOAL_CNI_PATH")
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| DEFAULT_PLUGIN_DIR.into());
        CniConfig {
            mode,
            plugin_path: std::env::split_paths(&path).collect(),
            ipam_dir: data_dir.join("cni").join("networks"),
            timeout: PLUGIN_TIMEOUT,
        }
    }
}

/// The network configuration given to the plugins for a node whose pod CIDR is `pod_cidr`.
pub fn network_config(pod_cidr: Ipv4Net, ipam_dir: &Path) -> Result<Value, RuntimeError> {
    let gateway = network::gateway(&pod_cidr.to_string()).ok_or_else(|| RuntimeError::Invalid {
        what: "pod CIDR".into(),
        reason: format!("{pod_cidr} has no room for a gateway and pods"),
    })?;
    Ok(json!({
        "cniVersion": CNI_VERSION,
        "name": CNI_NETWORK,
        "type": PLUGIN,
        "bridge": BRIDGE,
        "isGateway": true,
        // Masquerading is the proxy's (nftables), not the plugin's.
        "ipMasq": false,
        "hairpinMode": true,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": pod_cidr.to_string(), "gateway": gateway.to_string()}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": ipam_dir.to_string_lossy(),
        }
    }))
}

/// The pod's address from an ADD result (CNI 1.0.0 `ips`, the one on the pod's interface).
pub fn parse_result(stdout: &[u8]) -> Result<PodAddress, String> {
    let v: Value =
        serde_json::from_slice(stdout).map_err(|e| format!("the result is not JSON: {e}"))?;
    let interfaces = v["interfaces"].as_array().cloned().unwrap_or_default();
    let ips = v["ips"]
        .as_array()
        .ok_or_else(|| "the result has no \"ips\"".to_string())?;
    let on_pod = |ip: &&Value| match ip["interface"].as_u64() {
        Some(i) => interfaces
            .get(i as usize)
            .is_some_and(|itf| itf["name"] == POD_IFNAME && itf.get("sandbox").is_some()),
        None => true,
    };
    let ip = ips
        .iter()
        .filter(on_pod)
        .find(|ip| {
            ip["address"]
                .as_str()
                .is_some_and(|a| a.parse::<Ipv4Net>().is_ok())
        })
        .ok_or_else(|| format!("the result has no IPv4 address on {POD_IFNAME}"))?;
    let address: Ipv4Net = ip["address"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| "bad address".to_string())?;
    let gateway: Ipv4Addr = ip["gateway"]
        .as_str()
        .ok_or_else(|| "the pod's address has no gateway".to_string())?
        .parse()
        .map_err(|e| format!("bad gateway: {e}"))?;
    Ok(PodAddress {
        ip: address.addr(),
        prefix: address.prefix_len(),
        gateway,
    })
}

/// The error of a failed plugin call: the CNI error JSON's `msg`, `details` and `code` when
/// stdout holds one, else the exit status and stderr.
pub fn plugin_error(
    plugin: &str,
    command: &str,
    exit: &str,
    stdout: &[u8],
    stderr: &[u8],
) -> RuntimeError {
    let parsed: Option<Value> = serde_json::from_slice(stdout).ok();
    let message = match parsed
        .as_ref()
        .and_then(|v| v["msg"].as_str().map(|m| (v, m)))
    {
        Some((v, msg)) => {
            let mut m = msg.to_string();
            if let Some(d) = v["details"].as_str().filter(|d| !d.is_empty()) {
                m.push_str(": ");
                m.push_str(d);
            }
            if let Some(code) = v["code"].as_u64() {
                m.push_str(&format!(" (code {code})"));
            }
            m
        }
        None => {
            let err = String::from_utf8_lossy(stderr);
            let err = err.trim();
            let tail: String = err
                .chars()
                .rev()
                .take(1024)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            if tail.is_empty() {
                exit.to_string()
            } else {
                format!("{exit}: {tail}")
            }
        }
    };
    RuntimeError::Network(format!("CNI plugin {plugin} {command} failed: {message}"))
}

/// Runs the plugins of this node's network.
#[derive(Clone, Debug)]
pub struct Cni {
    pub config: CniConfig,
}

impl Cni {
    pub fn new(config: CniConfig) -> Self {
        Cni { config }
    }

    /// Attaches the network namespace at `netns` (`/proc/<sandbox pid>/ns/net`).
    pub fn add(
        &self,
        container_id: &str,
        netns: &Path,
        pod_cidr: Ipv4Net,
    ) -> Result<(PodAddress, Value), RuntimeError> {
        if self.config.mode == CniMode::InProcess {
            return super::netlink::add(&self.config.ipam_dir, container_id, netns, pod_cidr);
        }
        let conf = network_config(pod_cidr, &self.config.ipam_dir)?;
        let out = self.invoke("ADD", container_id, Some(netns), &conf)?;
        let address = parse_result(&out)
            .map_err(|e| RuntimeError::Network(format!("CNI plugin {PLUGIN} ADD: {e}")))?;
        let result = serde_json::from_slice(&out).unwrap_or(Value::Null);
        Ok((address, result))
    }

    /// Detaches and releases the address. Idempotent: fine when nothing is attached, and with
    /// `netns: None` when the namespace is gone (the lease is still released).
    pub fn del(
        &self,
        container_id: &str,
        netns: Option<&Path>,
        pod_cidr: Ipv4Net,
    ) -> Result<(), RuntimeError> {
        if self.config.mode == CniMode::InProcess {
            return super::netlink::del(&self.config.ipam_dir, container_id, netns);
        }
        let conf = network_config(pod_cidr, &self.config.ipam_dir)?;
        self.invoke("DEL", container_id, netns, &conf).map(|_| ())
    }

    /// Asks the plugins whether the attachment recorded in `net` is still as it was.
    pub fn check(&self, net: &PodNetwork, netns: &Path) -> Result<(), RuntimeError> {
        if self.config.mode == CniMode::InProcess {
            return super::netlink::check(&self.config.ipam_dir, net, netns);
        }
        let cidr = network::parse_cidr(&net.cidr).ok_or_else(|| RuntimeError::Invalid {
            what: NETWORK_RECORD.into(),
            reason: format!("bad CIDR {:?}", net.cidr),
        })?;
        let mut conf = network_config(cidr, &self.config.ipam_dir)?;
        conf["prevResult"] = net.result.clone().unwrap_or(Value::Null);
        self.invoke("CHECK", &net.container_id, Some(netns), &conf)
            .map(|_| ())
    }

    fn find_plugin(&self, name: &str) -> Result<PathBuf, RuntimeError> {
        self.config
            .plugin_path
            .iter()
            .map(|d| d.join(name))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                RuntimeError::Network(format!(
                    "CNI plugin {name} not found in {} (install containernetworking-plugins, or set SHOAL_CNI_PATH)",
                    self.cni_path()
                ))
            })
    }

    fn cni_path(&self) -> String {
        std::env::join_paths(&self.config.plugin_path)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// One plugin call: returns its stdout on success.
    fn invoke(
        &self,
        command: &str,
        container_id: &str,
        netns: Option<&Path>,
        conf: &Value,
    ) -> Result<Vec<u8>, RuntimeError> {
        let plugin = conf["type"].as_str().unwrap_or(PLUGIN).to_string();
        let binary = self.find_plugin(&plugin)?;
        let stdin = serde_json::to_vec(conf).map_err(|e| RuntimeError::Invalid {
            what: "CNI config".into(),
            reason: e.to_string(),
        })?;
        let mut child = Command::new(&binary)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container_id)
            .env(
                "CNI_NETNS",
                netns.map(|p| p.as_os_str()).unwrap_or_default(),
            )
            .env("CNI_IFNAME", POD_IFNAME)
            .env("CNI_PATH", self.cni_path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| RuntimeError::Network(format!("CNI plugin {}: {e}", binary.display())))?;
        if let Some(mut input) = child.stdin.take() {
            // A plugin that exits without reading its config shows up in its exit status.
            let _ = input.write_all(&stdin);
        }
        let stdout = bounded_reader(child.stdout.take());
        let stderr = bounded_reader(child.stderr.take());
        let deadline = Instant::now() + self.config.timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(RuntimeError::Network(format!(
                        "CNI plugin {plugin} {command} timed out after {:?}",
                        self.config.timeout
                    )));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => {
                    return Err(RuntimeError::Network(format!(
                        "CNI plugin {plugin} {command}: waiting: {e}"
                    )))
                }
            }
        };
        let stdout = stdout.join().unwrap_or_default();
        let stderr = stderr.join().unwrap_or_default();
        if status.success() {
            Ok(stdout)
        } else {
            Err(plugin_error(
                &plugin,
                command,
                &status.to_string(),
                &stdout,
                &stderr,
            ))
        }
    }
}

/// Reads at most [`MAX_PLUGIN_OUTPUT`] bytes of a pipe on a thread (then stops reading: a
/// plugin writing more gets EPIPE).
fn bounded_reader<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        if let Some(p) = pipe {
            let _ = p.take(MAX_PLUGIN_OUTPUT).read_to_end(&mut out);
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Ipv4Net {
        network::parse_cidr(s).unwrap()
    }

    #[test]
    fn the_mode_is_in_process_unless_plugins_are_asked_for() {
        assert_eq!(CniMode::parse(None), Ok(CniMode::InProcess));
        assert_eq!(CniMode::parse(Some("")), Ok(CniMode::InProcess));
        assert_eq!(CniMode::parse(Some("in-process")), Ok(CniMode::InProcess));
        assert_eq!(CniMode::parse(Some("plugins")), Ok(CniMode::Plugins));
        let e = CniMode::parse(Some("calico")).unwrap_err();
        assert!(e.contains("SHOAL_CNI=\"calico\" is not supported"), "{e}");
    }

    #[test]
    fn config_is_a_bridge_with_host_local_over_the_node_cidr() {
        let conf = network_config(cidr("10.244.3.0/24"), Path::new("/d/cni/networks")).unwrap();
        assert_eq!(conf["cniVersion"], "1.0.0");
        assert_eq!(conf["name"], "shoal");
        assert_eq!(conf["type"], "bridge");
        assert_eq!(conf["bridge"], "shoal0");
        assert_eq!(conf["isGateway"], true);
        assert_eq!(conf["ipMasq"], false);
        assert_eq!(conf["hairpinMode"], true);
        assert_eq!(conf["ipam"]["type"], "host-local");
        assert_eq!(
            conf["ipam"]["ranges"],
            json!([[{"subnet": "10.244.3.0/24", "gateway": "10.244.3.1"}]])
        );
        assert_eq!(conf["ipam"]["routes"], json!([{"dst": "0.0.0.0/0"}]));
        assert_eq!(conf["ipam"]["dataDir"], "/d/cni/networks");
        assert!(network_config(cidr("10.244.3.0/31"), Path::new("/d")).is_err());
    }

    const RESULT: &str = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"shoal0","mac":"d2:a2:6e:39:09:ae"},{"name":"veth40aeb584","mac":"7e:35:bc:b6:31:71"},{"name":"eth0","mac":"f6:9c:59:c6:e9:2c","sandbox":"/proc/8946/ns/net"}],"ips":[{"interface":2,"address":"10.244.3.2/24","gateway":"10.244.3.1"}],"routes":[{"dst":"0.0.0.0/0"}],"dns":{}}"#;

    #[test]
    fn result_gives_the_pods_address() {
        assert_eq!(
            parse_result(RESULT.as_bytes()),
            Ok(PodAddress {
                ip: Ipv4Addr::new(10, 244, 3, 2),
                prefix: 24,
                gateway: Ipv4Addr::new(10, 244, 3, 1),
            })
        );
    }

    #[test]
    fn results_without_a_pod_address_are_refused() {
        for (bad, why) in [
            ("not json", "not JSON"),
            (r#"{"cniVersion":"1.0.0"}"#, "no \"ips\""),
            (r#"{"ips":[]}"#, "no IPv4 address"),
            // An address on the host side only.
            (
                r#"{"interfaces":[{"name":"shoal0"}],"ips":[{"interface":0,"address":"10.0.0.2/24","gateway":"10.0.0.1"}]}"#,
                "no IPv4 address",
            ),
            (r#"{"ips":[{"address":"fd00::2/64"}]}"#, "no IPv4 address"),
            (r#"{"ips":[{"address":"10.0.0.2/24"}]}"#, "no gateway"),
            (
                r#"{"ips":[{"address":"10.0.0.2/24","gateway":"x"}]}"#,
                "bad gateway",
            ),
        ] {
            let err = parse_result(bad.as_bytes()).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn errors_name_the_plugin_and_its_message() {
        let e = plugin_error(
            "bridge",
            "ADD",
            "exit status: 1",
            br#"{"code":11,"msg":"failed to allocate for range 0","details":"no IP addresses available"}"#,
            b"",
        );
        assert_eq!(
            e.to_string(),
            "network: CNI plugin bridge ADD failed: failed to allocate for range 0: no IP addresses available (code 11)"
        );
        let e = plugin_error("bridge", "DEL", "signal: 9", b"garbage", b"panic: oops\n");
        assert_eq!(
            e.to_string(),
            "network: CNI plugin bridge DEL failed: signal: 9: panic: oops"
        );
        let e = plugin_error("bridge", "DEL", "exit status: 2", b"", b"");
        assert_eq!(
            e.to_string(),
            "network: CNI plugin bridge DEL failed: exit status: 2"
        );
    }

    #[test]
    fn within_the_current_cidr() {
        let mut net = PodNetwork {
            cidr: "10.244.3.0/24".into(),
            container_id: "k".into(),
            address: None,
            result: None,
        };
        assert!(!net.within("10.244.3.0/24"), "no address yet");
        net.address = Some(PodAddress {
            ip: Ipv4Addr::new(10, 244, 3, 7),
            prefix: 24,
            gateway: Ipv4Addr::new(10, 244, 3, 1),
        });
        assert!(net.within("10.244.3.0/24"));
        assert!(!net.within("10.244.4.0/24"), "the node's CIDR moved");
        assert!(!net.within("garbage"));
    }

    /// A fake plugin (a shell script) in a temp dir: the shell invokes it per the spec.
    fn fake_plugin(body: &str) -> (tempfile::TempDir, Cni) {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bridge");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cni = Cni::new(CniConfig {
            mode: CniMode::Plugins,
            plugin_path: vec![dir.path().to_path_buf()],
            ipam_dir: dir.path().join("ipam"),
            timeout: Duration::from_secs(2),
        });
        (dir, cni)
    }

    #[test]
    fn invocation_passes_the_environment_and_the_config() {
        let (dir, cni) = fake_plugin(&format!(
            "cat > {d}/stdin; env > {d}/env; echo '{RESULT}'",
            d = "\"$(dirname \"$0\")\""
        ));
        let (addr, result) = cni
            .add("key-1", Path::new("/proc/1/ns/net"), cidr("10.244.3.0/24"))
            .unwrap();
        assert_eq!(addr.ip, Ipv4Addr::new(10, 244, 3, 2));
        assert_eq!(result["cniVersion"], "1.0.0");
        let env = std::fs::read_to_string(dir.path().join("env")).unwrap();
        for line in [
            "CNI_COMMAND=ADD",
            "CNI_CONTAINERID=key-1",
            "CNI_NETNS=/proc/1/ns/net",
            "CNI_IFNAME=eth0",
            &format!("CNI_PATH={}", dir.path().display()),
        ] {
            assert!(env.lines().any(|l| l == line), "{line} in {env}");
        }
        let stdin: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("stdin")).unwrap()).unwrap();
        assert_eq!(
            stdin,
            network_config(cidr("10.244.3.0/24"), &dir.path().join("ipam")).unwrap()
        );
    }

    #[test]
    fn a_failing_plugin_reports_its_error() {
        let (_dir, cni) = fake_plugin(
            r#"cat >/dev/null; echo '{"cniVersion":"1.0.0","code":7,"msg":"invalid network config"}'; exit 1"#,
        );
        let e = cni
            .del("k", None, cidr("10.244.3.0/24"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "network: CNI plugin bridge DEL failed: invalid network config (code 7)"
        );
    }

    #[test]
    fn a_hanging_plugin_is_killed_at_the_timeout() {
        let (_dir, cni) = fake_plugin("exec sleep 30");
        let t0 = Instant::now();
        let e = cni
            .add("k", Path::new("/x"), cidr("10.244.3.0/24"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("timed out"), "{e}");
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "killed, not waited for"
        );
    }

    #[test]
    fn output_is_bounded() {
        let (_dir, cni) = fake_plugin("cat >/dev/null; yes x | head -c 10000000; exit 1");
        let e = cni
            .del("k", None, cidr("10.244.3.0/24"))
            .unwrap_err()
            .to_string();
        assert!(e.len() < 4096, "{} bytes", e.len());
    }

    #[test]
    fn a_missing_plugin_is_named() {
        let cni = Cni::new(CniConfig {
            mode: CniMode::Plugins,
            plugin_path: vec![PathBuf::from("/nonexistent/cni")],
            ipam_dir: PathBuf::from("/tmp/x"),
            timeout: Duration::from_secs(1),
        });
        let e = cni
            .del("k", None, cidr("10.244.3.0/24"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("CNI plugin bridge not found in /nonexistent/cni")
                && e.contains("containernetworking-plugins"),
            "{e}"
        );
    }
}
