//! `AgentSettings`: the agent's configuration, one serde struct with defaults. Persisted in the
//! data dir as `agent.json` at first start; flags given on later starts override and are saved.
//!
//! ```json
//! { "name": "n1", "listen_p2p": "0.0.0.0:7946", "listen_api": "0.0.0.0:6443",
//!   "advertise": "10.77.0.11", "join": ["10.77.0.12:7946"],
//!   "insecure_registries": ["10.77.0.1:5000"], "dns_upstreams": ["10.77.0.1:53"] }
//! ```

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use serde::{Deserialize, Deserializer, Serialize};

/// Where registry certificates are looked for unless `--registry-certs-dir` says otherwise.
pub const DEFAULT_REGISTRY_CERTS_DIR: &str = "/etc/shoal/certs.d";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentSettings {
    /// The node's name (a DNS-1123 subdomain); defaults to the host name.
    pub name: String,
    /// UDP address of the QUIC (libp2p) endpoint.
    pub listen_p2p: SocketAddr,
    /// TCP address of the HTTPS API.
    pub listen_api: SocketAddr,
    /// Address peers and clients use to reach this node; detected when absent.
    pub advertise: Option<IpAddr>,
    /// Members' p2p addresses to contact when no peer is known.
    pub join: Vec<SocketAddr>,
    /// Registries (`host` or `host:port`, normalised by [`AgentSettings::parse_registry_host`]) that may be
    /// reached over plain HTTP; every other registry is HTTPS only.
    #[serde(deserialize_with = "registry_hosts")]
    pub insecure_registries: Vec<String>,
    /// Certs directories in Docker's `certs.d` layout (`DIR/HOST[:PORT]/ca.crt`,
    /// `client.cert`, `client.key`), first match wins (`--registry-certs-dir`).
    /// docs/images.md.
    pub registry_certs_dirs: Vec<std::path::PathBuf>,
    /// Mirrors by registry (`--registry-mirror REGISTRY=URL`): base URLs tried in order before
    /// the registry itself. docs/images.md.
    #[serde(deserialize_with = "registry_mirrors")]
    pub registry_mirrors: BTreeMap<String, Vec<String>>,
    /// Where the node's DNS server forwards names outside the cluster domain: `None` (the
    /// default) means the host's `/etc/resolv.conf` nameservers that are not loopback, read
    /// at each start; an empty list means nowhere (such names get NXDOMAIN at once).
    pub dns_upstreams: Option<Vec<SocketAddr>>,
    /// Most processes (threads count) in one container, as the kubelet's `podPidsLimit`
    /// (`--pod-pids-limit`); 0 or less: no limit. docs/security.md.
    pub pod_pids_limit: i64,
    /// Host paths (absolute prefixes) that hostPath volumes may use (`--allow-host-path`).
    /// Empty, the default: none, because a hostPath gives a pod the host's files (any user
    /// who may create pods could read the cluster secret in the data dir, or write /etc).
    pub allowed_host_paths: Vec<std::path::PathBuf>,
    /// Where the replicated state lives (`--state-dir`); `None`: the data dir.
    pub state_dir: Option<std::path::PathBuf>,
    /// This node refuses to run privileged containers (`--deny-privileged`), whatever the
    /// API admitted: they wait with `CreateContainerConfigError`. docs/security.md.
    pub deny_privileged: bool,
    /// Where this node keeps the directories of its local-path PersistentVolumes
    /// (`--local-path-dir`); `None`: `<data dir>/local-path`.
    pub local_path_dir: Option<std::path::PathBuf>,
}

impl Default for AgentSettings {
    fn default() -> Self {
        AgentSettings {
            name: String::new(),
            listen_p2p: SocketAddr::from(([0, 0, 0, 0], 7946)),
            listen_api: SocketAddr::from(([0, 0, 0, 0], 6443)),
            advertise: None,
            join: Vec::new(),
            insecure_registries: Vec::new(),
            registry_certs_dirs: vec![DEFAULT_REGISTRY_CERTS_DIR.into()],
            registry_mirrors: BTreeMap::new(),
            dns_upstreams: None,
            pod_pids_limit: crate::runtime::DEFAULT_POD_PIDS_LIMIT,
            allowed_host_paths: Vec::new(),
            state_dir: None,
            deny_privileged: false,
            local_path_dir: None,
        }
    }
}

impl AgentSettings {
    /// Whether `registry` (`host` or `host:port`, as in an image reference) is listed as
    /// insecure. Hosts compare case-insensitively; ports must be equal (an entry without a
    /// port matches only the registry without one, like Docker's `insecure-registries`).
    pub fn is_insecure_registry(&self, registry: &str) -> bool {
        Self::parse_registry_host(registry).is_ok_and(|r| self.insecure_registries.contains(&r))
    }

    /// Checks an insecure-registry entry (see [`parse_registry_host`]).
    pub fn parse_registry_host(text: &str) -> Result<String, String> {
        parse_registry_host(text)
    }

    /// The advertised address: explicit, else the listen address if specific, else the first
    /// non-loopback IPv4 address of the host, else loopback.
    pub fn advertise_ip(&self) -> IpAddr {
        if let Some(ip) = self.advertise {
            return ip;
        }
        if !self.listen_p2p.ip().is_unspecified() {
            return self.listen_p2p.ip();
        }
        if_addrs::get_if_addrs()
            .ok()
            .and_then(|addrs| {
                addrs
                    .into_iter()
                    .find(|a| !a.is_loopback() && a.ip().is_ipv4())
                    .map(|a| a.ip())
            })
            .unwrap_or(IpAddr::from([127, 0, 0, 1]))
    }
}

/// One `--dns-upstream` value: `IP`, `IP:PORT` or `[IPv6]:PORT` (port 53 if absent), or
/// `none` (forward nothing), or `default` (back to the host's `/etc/resolv.conf`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsUpstream {
    Server(SocketAddr),
    None,
    Default,
}

impl DnsUpstream {
    pub fn parse(text: &str) -> Result<DnsUpstream, String> {
        let text = text.trim();
        match text {
            "none" => return Ok(DnsUpstream::None),
            "default" => return Ok(DnsUpstream::Default),
            _ => {}
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(DnsUpstream::Server(SocketAddr::new(ip, 53)));
        }
        match text.parse::<SocketAddr>() {
            Ok(addr) if addr.port() != 0 => Ok(DnsUpstream::Server(addr)),
            _ => Err(format!(
                "invalid DNS upstream {text:?} (expected IP, IP:PORT, [IPv6]:PORT, none or default)"
            )),
        }
    }

    /// The setting the flags give: `None` if they ask for the default, an empty list for
    /// `none`; mixing `none` or `default` with servers is refused.
    pub fn setting(flags: &[DnsUpstream]) -> Result<Option<Vec<SocketAddr>>, String> {
        let servers: Vec<SocketAddr> = flags
            .iter()
            .filter_map(|f| match f {
                DnsUpstream::Server(a) => Some(*a),
                _ => None,
            })
            .collect();
        let none = flags.contains(&DnsUpstream::None);
        let default = flags.contains(&DnsUpstream::Default);
        match (none, default, servers.is_empty()) {
            (false, false, _) => Ok(Some(servers)),
            (true, false, true) => Ok(Some(Vec::new())),
            (false, true, true) => Ok(None),
            _ => Err("--dns-upstream: `none` and `default` cannot be combined with servers or each other".into()),
        }
    }
}

/// Parses an insecure-registry entry (`--insecure-registry`, `insecure_registries`): `host` or `host:port`, where host is a DNS name, an IPv4
/// address or a bracketed IPv6 address, without a scheme or path. Returns it lowercased.
fn parse_registry_host(text: &str) -> Result<String, String> {
    let bad = |why: &str| {
        format!(
            "invalid registry {text:?}: {why} (expected HOST or HOST:PORT, e.g. 10.77.0.1:5000)"
        )
    };
    let entry = text.trim();
    if entry.is_empty() {
        return Err(bad("empty"));
    }
    if entry.contains("://") {
        return Err(bad("no scheme allowed"));
    }
    if entry.contains('/') {
        return Err(bad("no path allowed"));
    }
    let (host, port) = if let Some(v6) = entry.strip_prefix('[') {
        let (addr, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        if addr.parse::<Ipv6Addr>().is_err() {
            return Err(bad("not an IPv6 address inside [ ]"));
        }
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ']'"))?),
        };
        (None, port)
    } else {
        match entry.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(entry), None),
        }
    };
    if let Some(port) = port {
        match port.parse::<u16>() {
            Ok(p) if p > 0 && port.bytes().all(|b| b.is_ascii_digit()) => {}
            _ => return Err(bad("the port must be a number from 1 to 65535")),
        }
    }
    if let Some(host) = host {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if host.len() > 253 || !host.split('.').all(label_ok) {
            return Err(bad("not a host name or IP address"));
        }
    }
    Ok(entry.to_ascii_lowercase())
}

/// Parses a `--registry-mirror` value `REGISTRY=URL`: the registry as in image references
/// (`docker.io`, `host:port`) and the mirror's base URL, `https://HOST[:PORT]` or
/// `http://HOST[:PORT]` (plain HTTP only when written so), with no path. Returns both
/// normalised (lowercase, no trailing slash).
pub fn parse_registry_mirror(text: &str) -> Result<(String, String), String> {
    let (registry, url) = text.split_once('=').ok_or_else(|| {
        format!("invalid registry mirror {text:?}: expected REGISTRY=URL, e.g. docker.io=https://mirror.local:5000")
    })?;
    let registry = parse_registry_host(registry)?;
    Ok((registry, parse_mirror_url(url)?))
}

fn parse_mirror_url(url: &str) -> Result<String, String> {
    let url = url.trim();
    let bad =
        |why: &str| format!("invalid mirror URL {url:?}: {why} (expected https://HOST[:PORT])");
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "https" && scheme != "http" {
        return Err(bad("the scheme must be https or http"));
    }
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains('/') || authority.contains('?') || authority.contains('#') {
        return Err(bad("no path allowed (mirrors serve /v2/ at their root)"));
    }
    if authority.contains('@') {
        return Err(bad("no credentials allowed"));
    }
    let host = parse_registry_host(authority).map_err(|e| bad(&e))?;
    Ok(format!("{scheme}://{host}"))
}

/// Deserializes `registry_mirrors`, refusing what [`parse_registry_mirror`] refuses.
fn registry_mirrors<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, Vec<String>>, D::Error> {
    BTreeMap::<String, Vec<String>>::deserialize(deserializer)?
        .into_iter()
        .map(|(registry, urls)| {
            let registry = parse_registry_host(&registry).map_err(serde::de::Error::custom)?;
            let urls = urls
                .iter()
                .map(|u| parse_mirror_url(u).map_err(serde::de::Error::custom))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((registry, urls))
        })
        .collect()
}

/// Deserializes `insecure_registries`, refusing entries [`parse_registry_host`] refuses.
fn registry_hosts<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    Vec::<String>::deserialize(deserializer)?
        .iter()
        .map(|e| parse_registry_host(e).map_err(serde::de::Error::custom))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_mirrors_are_registry_equals_base_url() {
        assert_eq!(
            parse_registry_mirror("docker.io=https://Mirror.Local:5000/"),
            Ok(("docker.io".into(), "https://mirror.local:5000".into()))
        );
        assert_eq!(
            parse_registry_mirror("10.0.0.1:5000=http://10.0.0.2:5000"),
            Ok(("10.0.0.1:5000".into(), "http://10.0.0.2:5000".into()))
        );
        for bad in [
            "docker.io",
            "docker.io=mirror.local",
            "docker.io=ftp://mirror.local",
            "docker.io=https://mirror.local/v2",
            "docker.io=https://u:p@mirror.local",
            "http://docker.io=https://m",
            "docker.io=https://",
        ] {
            assert!(parse_registry_mirror(bad).is_err(), "{bad}");
        }
        let json = r#"{"registry_mirrors": {"docker.io": ["https://m:5000"]}}"#;
        let s: AgentSettings = serde_json::from_str(json).unwrap();
        assert_eq!(
            s.registry_mirrors["docker.io"],
            vec!["https://m:5000".to_string()]
        );
        assert_eq!(
            s.registry_certs_dirs,
            vec![std::path::PathBuf::from(DEFAULT_REGISTRY_CERTS_DIR)]
        );
        let bad = r#"{"registry_mirrors": {"docker.io": ["https://m:5000/path"]}}"#;
        assert!(serde_json::from_str::<AgentSettings>(bad).is_err());
    }

    #[test]
    fn registry_hosts_are_host_or_host_port() {
        for (given, stored) in [
            ("10.77.0.1:5000", "10.77.0.1:5000"),
            ("Registry.Local", "registry.local"),
            ("localhost:5000", "localhost:5000"),
            ("[::1]:5000", "[::1]:5000"),
            ("[fd00::1]", "[fd00::1]"),
            (" reg-1.example.com ", "reg-1.example.com"),
        ] {
            assert_eq!(parse_registry_host(given).as_deref(), Ok(stored), "{given}");
        }
        for (given, why) in [
            ("", "empty"),
            ("http://10.77.0.1:5000", "no scheme"),
            ("10.77.0.1:5000/v2", "no path"),
            ("host:", "port"),
            ("host:0", "port"),
            ("host:70000", "port"),
            ("host:+5", "port"),
            ("host:5000:1", "port"),
            ("bad_host", "host name"),
            ("-a.example", "host name"),
            ("a..b", "host name"),
            ("[::1", "unclosed"),
            ("[zz]:5000", "IPv6"),
        ] {
            let err = parse_registry_host(given).unwrap_err();
            assert!(err.contains(why), "{given}: {err}");
            assert!(err.contains("HOST:PORT"), "{err}");
        }
    }

    #[test]
    fn dns_upstreams_parse_and_persist() {
        use DnsUpstream::*;
        let server = |s: &str| Server(s.parse().unwrap());
        assert_eq!(DnsUpstream::parse("10.0.0.2"), Ok(server("10.0.0.2:53")));
        assert_eq!(
            DnsUpstream::parse("10.0.0.2:5353"),
            Ok(server("10.0.0.2:5353"))
        );
        assert_eq!(DnsUpstream::parse("fd00::1"), Ok(server("[fd00::1]:53")));
        assert_eq!(
            DnsUpstream::parse("[fd00::1]:54"),
            Ok(server("[fd00::1]:54"))
        );
        assert_eq!(DnsUpstream::parse("none"), Ok(None));
        assert_eq!(DnsUpstream::parse("default"), Ok(Default));
        for bad in [
            "",
            "dns.google",
            "10.0.0.2:0",
            "10.0.0.2:70000",
            "10.0.0.300",
        ] {
            let err = DnsUpstream::parse(bad).unwrap_err();
            assert!(err.contains("expected IP"), "{bad}: {err}");
        }
        let a = server("10.0.0.2:53");
        assert_eq!(DnsUpstream::setting(&[]), Ok(Some(Vec::new())));
        assert_eq!(DnsUpstream::setting(&[None]), Ok(Some(Vec::new())));
        assert_eq!(DnsUpstream::setting(&[Default]), Ok(Option::None));
        assert_eq!(
            DnsUpstream::setting(&[a, a]),
            Ok(Some(vec!["10.0.0.2:53".parse().unwrap(); 2]))
        );
        assert!(DnsUpstream::setting(&[a, None]).is_err());
        assert!(DnsUpstream::setting(&[None, Default]).is_err());
        let settings = AgentSettings {
            dns_upstreams: Some(vec!["10.0.0.2:53".parse().unwrap()]),
            ..AgentSettings::default()
        };
        let back: AgentSettings =
            serde_json::from_str(&serde_json::to_string(&settings).unwrap()).unwrap();
        assert_eq!(back, settings);
        let old: AgentSettings = serde_json::from_str(r#"{"name": "n1"}"#).unwrap();
        assert_eq!(old.dns_upstreams, Option::None);
    }

    #[test]
    fn insecure_registries_persist_and_match_exactly() {
        let settings = AgentSettings {
            insecure_registries: vec!["10.77.0.1:5000".into(), "plain.local".into()],
            ..AgentSettings::default()
        };
        let json = serde_json::to_string(&settings).unwrap();
        let back: AgentSettings = serde_json::from_str(&json).unwrap();
        assert_eq!(back, settings);
        assert!(settings.is_insecure_registry("10.77.0.1:5000"));
        assert!(settings.is_insecure_registry("PLAIN.local"));
        assert!(!settings.is_insecure_registry("10.77.0.1"));
        assert!(!settings.is_insecure_registry("plain.local:5000"));
        assert!(!settings.is_insecure_registry("docker.io"));
        // Older files without the field still load; bad entries are refused with the reason.
        let old: AgentSettings = serde_json::from_str(r#"{"name": "n1"}"#).unwrap();
        assert!(old.insecure_registries.is_empty());
        let err =
            serde_json::from_str::<AgentSettings>(r#"{"insecure_registries": ["http://x:5000"]}"#)
                .unwrap_err();
        assert!(err.to_string().contains("no scheme allowed"), "{err}");
    }
}
