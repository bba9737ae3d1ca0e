//! A thin Kubernetes-API client for the workload benchmarks: pods and deployments in the
//! `default` namespace, pod lists and pod watch streams, and `runc list` per testnet node.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// The image every testnet node has imported (`testnet/busybox-image.sh`).
pub const IMAGE: &str = "shoal.test/busybox:1";

/// What the benchmarks read of a pod.
#[derive(Debug, Clone)]
pub struct PodInfo {
    pub name: String,
    pub node: Option<String>,
    pub phase: String,
    /// Every container status reports `ready: true` (false when there are none).
    pub ready: bool,
}

impl PodInfo {
    pub fn from_value(v: &Value) -> Option<Self> {
        let name = v["metadata"]["name"].as_str()?.to_string();
        let node = v["spec"]["nodeName"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        let phase = v["status"]["phase"].as_str().unwrap_or("").to_string();
        let ready = match v["status"]["containerStatuses"].as_array() {
            Some(cs) if !cs.is_empty() => cs.iter().all(|c| c["ready"] == true),
            _ => false,
        };
        Some(Self {
            name,
            node,
            phase,
            ready,
        })
    }
    pub fn running(&self) -> bool {
        self.phase == "Running"
    }
}

/// A pod event seen on a watch stream, stamped when its chunk arrived.
#[derive(Debug)]
pub struct PodEvent {
    pub kind: String,
    pub pod: PodInfo,
    pub at: Instant,
}

/// HTTPS client of the testnet's APIs (cluster CA, admin token) plus its scripts and runc roots.
#[derive(Clone)]
pub struct Kube {
    client: reqwest::Client,
    token: String,
    scripts: PathBuf,
    pub nodes: usize,
}

/// A pod running `sleep 3600` from the testnet image; no requests. The grace period is 1 s:
/// `sleep` as PID 1 ignores SIGTERM, and the default 30 s would dominate every deletion.
pub fn sleep_pod_spec() -> Value {
    json!({
        "terminationGracePeriodSeconds": 1,
        "containers": [{ "name": "main", "image": IMAGE, "command": ["sleep", "3600"] }],
    })
}

impl Kube {
    /// `scripts` is the `testnet/` directory of an up testnet of `nodes` nodes.
    pub fn open(scripts: &Path, nodes: usize) -> Result<Self> {
        let run = scripts.join("run");
        let ca = std::fs::read(run.join("n1/data/tls/ca.crt"))
            .context("testnet CA (is the testnet up?)")?;
        let token = std::fs::read_to_string(run.join("n1/data/admin-token"))?;
        let client = crate::api::cluster_client(&ca)?;
        Ok(Self {
            client,
            token: token.trim().to_string(),
            scripts: scripts.to_path_buf(),
            nodes,
        })
    }

    pub fn node_name(&self, i: usize) -> String {
        format!("n{}", i + 1)
    }

    pub fn url(&self, i: usize) -> String {
        format!("https://10.77.0.{}:6443", 11 + i)
    }

    async fn send(&self, req: reqwest::RequestBuilder, what: &str) -> Result<Value> {
        let resp = req
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .with_context(|| what.to_string())?;
        let status = resp.status();
        let body = resp.bytes().await.with_context(|| what.to_string())?;
        if !status.is_success() {
            bail!(
                "{what}: HTTP {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(400)])
            );
        }
        Ok(serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    /// POST `body` to `path` (e.g. `/apis/batch/v1/namespaces/default/jobs`) on node `node`.
    pub async fn post(&self, node: usize, path: &str, body: &Value) -> Result<Value> {
        let url = format!("{}{path}", self.url(node));
        self.send(self.client.post(url).json(body), &format!("POST {path}"))
            .await
    }

    /// GET `path` on node `node`.
    pub async fn get(&self, node: usize, path: &str) -> Result<Value> {
        let url = format!("{}{path}", self.url(node));
        self.send(self.client.get(url), &format!("GET {path}"))
            .await
    }

    pub async fn create_pod(&self, node: usize, name: &str, labels: &Value) -> Result<()> {
        let body = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": name, "labels": labels },
            "spec": sleep_pod_spec(),
        });
        let url = format!("{}/api/v1/namespaces/default/pods", self.url(node));
        self.send(
            self.client.post(url).json(&body),
            &format!("create pod {name}"),
        )
        .await?;
        Ok(())
    }

    pub async fn delete_pod(&self, node: usize, name: &str) -> Result<()> {
        let url = format!("{}/api/v1/namespaces/default/pods/{name}", self.url(node));
        self.send(self.client.delete(url), &format!("delete pod {name}"))
            .await?;
        Ok(())
    }

    /// A Deployment `name` of `replicas` sleep pods labelled `app: name`.
    pub async fn create_deployment(&self, node: usize, name: &str, replicas: usize) -> Result<()> {
        let body = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": { "name": name },
            "spec": {
                "replicas": replicas,
                "selector": { "matchLabels": { "app": name } },
                "template": {
                    "metadata": { "labels": { "app": name } },
                    "spec": sleep_pod_spec(),
                },
            },
        });
        let url = format!(
            "{}/apis/apps/v1/namespaces/default/deployments",
            self.url(node)
        );
        self.send(
            self.client.post(url).json(&body),
            &format!("create deployment {name}"),
        )
        .await?;
        Ok(())
    }

    pub async fn delete_deployment(&self, node: usize, name: &str) -> Result<()> {
        let url = format!(
            "{}/apis/apps/v1/namespaces/default/deployments/{name}",
            self.url(node)
        );
        self.send(
            self.client.delete(url),
            &format!("delete deployment {name}"),
        )
        .await?;
        Ok(())
    }

    /// Pods in `default` matching `selector` (a label selector, may be empty), and the list's
    /// resourceVersion.
    pub async fn list_pods(&self, node: usize, selector: &str) -> Result<(String, Vec<PodInfo>)> {
        let req = self
            .client
            .get(format!("{}/api/v1/namespaces/default/pods", self.url(node)))
            .query(&[("labelSelector", selector)]);
        let v = self.send(req, "list pods").await?;
        let rv = v["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let pods = v["items"]
            .as_array()
            .map(|items| items.iter().filter_map(PodInfo::from_value).collect())
            .unwrap_or_default();
        Ok((rv, pods))
    }

    /// Open a pod watch on `node` (from `resource_version` when not empty) for pods matching
    /// `selector`, forwarding every event; the stream is reopened (from the last version seen)
    /// if the server ends it. Returns once the first stream's response headers arrived.
    pub async fn watch_pods(
        &self,
        node: usize,
        selector: &str,
        resource_version: &str,
        tx: mpsc::UnboundedSender<PodEvent>,
    ) -> Result<tokio::task::JoinHandle<()>> {
        let base = format!(
            "{}/api/v1/namespaces/default/pods?watch=true&labelSelector={}",
            self.url(node),
            selector.replace('=', "%3D").replace(',', "%2C")
        );
        let url_from = move |rv: &str| {
            if rv.is_empty() {
                base.clone()
            } else {
                format!("{base}&resourceVersion={rv}")
            }
        };
        let first = self
            .stream(&url_from(resource_version))
            .await
            .with_context(|| format!("watch {}", url_from(resource_version)))?;
        let kube = self.clone();
        let mut rv = resource_version.to_string();
        Ok(tokio::spawn(async move {
            let mut resp = Some(first);
            loop {
                let r = match resp.take() {
                    Some(r) => r,
                    None => match kube.stream(&url_from(&rv)).await {
                        Ok(r) => r,
                        Err(e) => {
                            eprintln!("watch {}: {e:#}; retrying", url_from(&rv));
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            continue;
                        }
                    },
                };
                if forward(r, &tx, &mut rv).await.is_err() {
                    return; // receiver gone: the benchmark is over
                }
            }
        }))
    }

    async fn stream(&self, url: &str) -> Result<reqwest::Response> {
        Ok(self
            .client
            .get(url)
            .bearer_auth(&self.token)
            .send()
            .await?
            .error_for_status()?)
    }

    /// Ids of the runc containers of node `i` (`runc --root testnet/run/nK/runc list -q`).
    pub fn runc_ids(&self, i: usize) -> Result<Vec<String>> {
        let root = self
            .scripts
            .join("run")
            .join(self.node_name(i))
            .join("runc");
        if !root.exists() {
            return Ok(Vec::new());
        }
        let out = Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(["list", "-q"])
            .stderr(Stdio::piped())
            .output()
            .context("runc list (is runc installed?)")?;
        if !out.status.success() {
            bail!(
                "runc --root {} list: {}",
                root.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect())
    }

    /// Every node's containers, as `nK/id`.
    /// `testnet/run`: the nodes' data dirs and agent logs.
    /// `testnet/run`, absolute: agents name their pods' dirs by absolute path, and `--testnet`
    /// is often given relative (`benches/run.sh` passes `testnet`).
    pub fn run_dir(&self) -> PathBuf {
        let run = self.scripts.join("run");
        std::fs::canonicalize(&run).unwrap_or(run)
    }

    /// Live `shoal sandbox` processes of the testnet's nodes (their `--dir` is under a node's
    /// data dir in `testnet/run`).
    pub fn sandbox_processes(&self) -> usize {
        let prefix = self.run_dir();
        let mut n = 0;
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            if args.len() >= 4
                && args[1] == b"sandbox"
                && args[2] == b"--dir"
                && std::path::Path::new(&*String::from_utf8_lossy(args[3])).starts_with(&prefix)
            {
                n += 1;
            }
        }
        n
    }

    /// Lines of all agent logs (`testnet/run/nK/agent.log`) that contain `needle`.
    pub fn log_lines(&self, needle: &str) -> usize {
        (0..self.nodes)
            .map(|i| {
                std::fs::read_to_string(self.run_dir().join(self.node_name(i)).join("agent.log"))
                    .map(|t| t.lines().filter(|l| l.contains(needle)).count())
                    .unwrap_or(0)
            })
            .sum()
    }

    pub fn runc_all(&self) -> Result<std::collections::BTreeSet<String>> {
        let mut all = std::collections::BTreeSet::new();
        for i in 0..self.nodes {
            let node = self.node_name(i);
            all.extend(
                self.runc_ids(i)?
                    .into_iter()
                    .map(|id| format!("{node}/{id}")),
            );
        }
        Ok(all)
    }

    /// Run a testnet script (`kill.sh`, `start.sh`) on node `i`.
    pub fn script(&self, name: &str, i: usize) -> Result<()> {
        let out = Command::new(self.scripts.join(name))
            .arg(self.node_name(i))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()?;
        if !out.status.success() {
            bail!(
                "testnet/{name} {}: {}",
                self.node_name(i),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

/// Read newline-delimited watch events until the stream ends; Err when the receiver is gone.
async fn forward(
    mut resp: reqwest::Response,
    tx: &mpsc::UnboundedSender<PodEvent>,
    rv: &mut String,
) -> Result<(), ()> {
    let mut buf: Vec<u8> = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        let at = Instant::now();
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let Ok(ev) = serde_json::from_slice::<Value>(&line) else {
                continue;
            };
            let Some(kind) = ev["type"].as_str() else {
                continue;
            };
            if let Some(v) = ev["object"]["metadata"]["resourceVersion"].as_str() {
                *rv = v.to_string();
            }
            let Some(pod) = PodInfo::from_value(&ev["object"]) else {
                continue;
            };
            tx.send(PodEvent {
                kind: kind.to_string(),
                pod,
                at,
            })
            .map_err(|_| ())?;
        }
    }
    Ok(())
}

/// Poll `cond` every `every` until it returns `Some`, or give up after `timeout`.
pub async fn poll_until<T, F, Fut>(every: Duration, timeout: Duration, mut cond: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let t0 = Instant::now();
    loop {
        if let Some(v) = cond().await {
            return Some(v);
        }
        if t0.elapsed() > timeout {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

impl Kube {
    /// States (`alive`, `suspect`, `dead`, ...) of the members as node `i` reports them.
    pub async fn members(&self, i: usize) -> Result<Vec<(String, String)>> {
        let v = self
            .send(
                self.client.get(format!("{}/shoal/v1/status", self.url(i))),
                "status",
            )
            .await?;
        Ok(v["members"]
            .as_array()
            .map(|ms| {
                ms.iter()
                    .filter_map(|m| {
                        Some((
                            m["name"].as_str()?.to_string(),
                            m["state"].as_str()?.to_string(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Wait until every node reports all `nodes` members alive.
    pub async fn wait_all_alive(&self, timeout: Duration) -> Result<Duration> {
        let t0 = Instant::now();
        loop {
            let mut ok = true;
            for i in 0..self.nodes {
                match self.members(i).await {
                    Ok(ms) if ms.iter().filter(|(_, s)| s == "alive").count() == self.nodes => {}
                    _ => {
                        ok = false;
                        break;
                    }
                }
            }
            if ok {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > timeout {
                bail!(
                    "not every node sees {} members alive within {timeout:?}",
                    self.nodes
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The real kubectl against the testnet (its kubeconfig, context `n1`).
pub struct Kubectl {
    kubeconfig: PathBuf,
}

impl Kubectl {
    /// `scripts` is the `testnet/` directory of an up testnet.
    pub fn new(scripts: &Path) -> Self {
        Self {
            kubeconfig: scripts.join("run/kubeconfig"),
        }
    }

    pub fn run(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["--context", "n1"])
            .args(args)
            .output()
            .context("running kubectl")?;
        if !out.status.success() {
            bail!(
                "kubectl {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `(name, ready)` of the pods of `app` that are not being deleted.
    pub fn pods(&self, app: &str) -> Result<Vec<(String, bool)>> {
        let out = self.run(&["get", "pods", "-l", &format!("app={app}"), "-o", "json"])?;
        let list: Value = serde_json::from_str(&out)?;
        Ok(list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .map(|p| {
                let ready = p["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True");
                (
                    p["metadata"]["name"].as_str().unwrap_or("").to_string(),
                    ready,
                )
            })
            .collect())
    }
}
