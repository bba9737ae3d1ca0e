//! Harness for multi-agent tests on loopback: starts real `shoal` processes on free ports in
//! temp dirs, talks to their HTTPS APIs with the cluster CA and admin token, and kills every
//! process it started when dropped.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub fn shoal_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_shoal"))
}

/// Polls `f` every 100 ms until it returns `Some`, or fails the test naming `what`.
pub fn poll<T>(what: &str, deadline: Duration, f: impl FnMut() -> Option<T>) -> T {
    poll_explained(what, deadline, f, String::new)
}

/// [`poll`], failing with what `explain` says then (a log, the state seen last).
pub fn poll_explained<T>(
    what: &str,
    deadline: Duration,
    mut f: impl FnMut() -> Option<T>,
    explain: impl FnOnce() -> String,
) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > end {
            panic!(
                "timed out after {deadline:?} waiting for: {what}\n{}",
                explain()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn free_port() -> u16 {
    // A port free for both TCP and UDP right now.
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub struct Node {
    pub name: String,
    pub dir: PathBuf,
    pub p2p: SocketAddr,
    pub api: SocketAddr,
    pub kubeconfig: PathBuf,
    pub join: Vec<SocketAddr>,
    /// More `shoal agent` arguments for this node's next launch.
    pub extra_args: Vec<String>,
    child: Option<Child>,
}

impl Node {
    pub fn log_path(&self) -> PathBuf {
        self.dir.with_extension("log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The agent's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

pub struct Cluster {
    pub tmp: tempfile::TempDir,
    pub token: String,
    pub admin_token: String,
    pub ca: Vec<u8>,
    pub nodes: Vec<Node>,
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
}

fn spawn(args: &[String], log: &Path) -> Child {
    let out = std::fs::File::create(log).unwrap();
    Command::new(shoal_bin())
        .args(args)
        .env("RUST_LOG", "info,libp2p=warn")
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawning shoal")
}

impl Cluster {
    fn init(name: &str, extra: &[String]) -> (tempfile::TempDir, Node, String) {
        let tmp = tempfile::tempdir().unwrap();
        let (p2p, api) = (free_port(), free_port());
        let dir = tmp.path().join(name);
        let mut args: Vec<String> = vec![
            "init".into(),
            "--data-dir".into(),
            dir.display().to_string(),
            "--name".into(),
            name.into(),
        ];
        args.extend([
            "--listen-p2p".into(),
            format!("127.0.0.1:{p2p}"),
            "--listen-api".into(),
            format!("127.0.0.1:{api}"),
        ]);
        args.extend(extra.iter().cloned());
        let out = Command::new(shoal_bin())
            .args(&args)
            .output()
            .expect("shoal init");
        assert!(
            out.status.success(),
            "shoal init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let node = Node {
            name: name.into(),
            kubeconfig: dir.join("admin.kubeconfig"),
            dir,
            p2p: format!("127.0.0.1:{p2p}").parse().unwrap(),
            api: format!("127.0.0.1:{api}").parse().unwrap(),
            join: vec![],
            extra_args: vec![],
            child: None,
        };
        (tmp, node, token)
    }

    fn assemble(tmp: tempfile::TempDir, first: Node, token: String) -> Cluster {
        let admin_token = std::fs::read_to_string(first.dir.join("admin-token"))
            .unwrap()
            .trim()
            .to_string();
        let ca = std::fs::read(first.dir.join("tls/ca.crt")).unwrap();
        shoal::install_crypto_provider();
        let client = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Cluster {
            tmp,
            token,
            admin_token,
            ca,
            nodes: vec![first],
            rt,
            client,
        }
    }

    /// A cluster of `n` agents named n1..nN, all admitted and Ready on n1.
    pub fn start(n: usize) -> Cluster {
        let (tmp, first, token) = Self::init("n1", &[]);
        let mut c = Self::assemble(tmp, first, token);
        c.launch(0);
        for _ in 2..=n {
            c.add_node(vec![]);
        }
        let names: Vec<String> = c.nodes.iter().map(|n| n.name.clone()).collect();
        poll(
            "all agents Ready on every node",
            Duration::from_secs(60),
            || {
                c.nodes
                    .iter()
                    .all(|o| names.iter().all(|n| c.node_ready(o, n) == Some(true)))
                    .then_some(())
            },
        );
        c
    }

    /// Launches one more agent, n<N+1>, joining through n1, with `extra_args` (not waited for).
    pub fn add_node(&mut self, extra_args: Vec<String>) -> usize {
        let i = self.nodes.len() + 1;
        let node = Node {
            name: format!("n{i}"),
            dir: self.tmp.path().join(format!("n{i}")),
            p2p: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            api: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            kubeconfig: self.tmp.path().join(format!("n{i}.kubeconfig")),
            join: vec![self.nodes[0].p2p],
            extra_args,
            child: None,
        };
        self.nodes.push(node);
        self.write_kubeconfig(i - 1);
        self.launch(i - 1);
        i - 1
    }

    /// A cluster that was only initialised (never started): for its token.
    pub fn init_only(name: &str) -> Cluster {
        let (tmp, first, token) = Self::init(name, &[]);
        Self::assemble(tmp, first, token)
    }

    pub fn restore_from(backup: &Path, token: &str, name: &str) -> Cluster {
        let (tmp, first, new_token) = Self::init(
            name,
            &[
                "--restore".into(),
                backup.display().to_string(),
                "--token".into(),
                token.into(),
            ],
        );
        let mut c = Self::assemble(tmp, first, new_token);
        c.launch(0);
        c
    }

    fn write_kubeconfig(&self, i: usize) {
        use base64::Engine;
        let n = &self.nodes[i];
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca);
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: {0}\n  cluster:\n    server: https://{1}\n    certificate-authority-data: {ca}\nusers:\n- name: admin\n  user:\n    token: {2}\ncontexts:\n- name: {0}\n  context:\n    cluster: {0}\n    user: admin\ncurrent-context: {0}\n",
            n.name, n.api, self.admin_token
        );
        std::fs::write(&n.kubeconfig, text).unwrap();
    }

    fn agent_args(&self, i: usize) -> Vec<String> {
        let n = &self.nodes[i];
        let mut args = vec![
            "agent".to_string(),
            "--data-dir".into(),
            n.dir.display().to_string(),
        ];
        args.extend([
            "--name".into(),
            n.name.clone(),
            "--listen-p2p".into(),
            n.p2p.to_string(),
            "--listen-api".into(),
            n.api.to_string(),
        ]);
        if !n.dir.join("cluster.cbor").exists() {
            args.extend(["--token".into(), self.token.clone()]);
        }
        for j in &n.join {
            args.extend(["--join".into(), j.to_string()]);
        }
        args.extend(n.extra_args.iter().cloned());
        args
    }

    fn launch(&mut self, i: usize) {
        let args = self.agent_args(i);
        // This run logs to `<node>.run.log`; `kill` appends it to `<node>.log`.
        let child = spawn(&args, &self.nodes[i].log_path().with_extension("run.log"));
        self.nodes[i].child = Some(child);
    }

    pub fn log(&self, node: &Node) -> String {
        let mut s = std::fs::read_to_string(node.log_path()).unwrap_or_default();
        s +=
            &std::fs::read_to_string(node.log_path().with_extension("run.log")).unwrap_or_default();
        s
    }

    /// kill -9 of the node's agent.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let log = self.nodes[i].log_path();
        let run = std::fs::read_to_string(log.with_extension("run.log")).unwrap_or_default();
        let mut all = std::fs::read_to_string(&log).unwrap_or_default();
        all += &run;
        let _ = std::fs::write(&log, all);
        let _ = std::fs::remove_file(log.with_extension("run.log"));
    }

    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.launch(i);
    }

    pub fn restart_with_join(&mut self, i: usize, join: SocketAddr) {
        self.kill(i);
        self.nodes[i].join = vec![join];
        self.launch(i);
    }

    pub fn stop_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }

    /// Starts an agent that tries to join this cluster with `token`; it is killed on drop.
    pub fn spawn_joiner(&self, name: &str, token: &str) -> Intruder {
        let dir = self.tmp.path().join(format!("x-{name}"));
        let log = self.tmp.path().join(format!("x-{name}.log"));
        let args = vec![
            "agent".to_string(),
            "--data-dir".into(),
            dir.display().to_string(),
            "--name".into(),
            name.into(),
            "--listen-p2p".into(),
            format!("127.0.0.1:{}", free_port()),
            "--listen-api".into(),
            format!("127.0.0.1:{}", free_port()),
            "--join".into(),
            self.nodes[0].p2p.to_string(),
            "--join".into(),
            self.nodes[1].p2p.to_string(),
            "--token".into(),
            token.into(),
        ];
        Intruder {
            name: name.into(),
            dir,
            log: log.clone(),
            child: spawn(&args, &log),
        }
    }

    pub fn shoal_ok(&self, args: &[&str]) -> String {
        let out = Command::new(shoal_bin()).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "shoal {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    // ---- API ----

    pub fn request(
        &self,
        node: &Node,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Option<(u16, Value)> {
        let url = format!("https://{}{path}", node.api);
        self.rt.block_on(async {
            let mut req = self
                .client
                .request(method, url)
                .bearer_auth(&self.admin_token);
            if let Some(b) = body {
                req = req.json(&b);
            }
            let resp = req.send().await.ok()?;
            let code = resp.status().as_u16();
            let value = resp.json::<Value>().await.unwrap_or(Value::Null);
            Some((code, value))
        })
    }

    /// `GET path` on the node's API with `token` (none: no Authorization header), as text:
    /// `(status code, content type, body)`.
    pub fn get_text(&self, node: &Node, path: &str, token: Option<&str>) -> (u16, String, String) {
        let url = format!("https://{}{path}", node.api);
        self.rt.block_on(async {
            let mut req = self.client.get(url);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await.expect("GET on the API");
            let code = resp.status().as_u16();
            let ctype = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            (code, ctype, resp.text().await.unwrap_or_default())
        })
    }

    /// `GET /metrics` as Prometheus' scraper asks for it (OpenMetrics first).
    pub fn rt_get_openmetrics(&self, node: &Node) -> String {
        let url = format!("https://{}/metrics", node.api);
        self.rt.block_on(async {
            let resp = self
                .client
                .get(url)
                .bearer_auth(&self.admin_token)
                .header(
                    "accept",
                    "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
                )
                .send()
                .await
                .expect("GET /metrics");
            let ctype = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
            resp.text().await.unwrap_or_default()
        })
    }

    fn get(&self, node: &Node, path: &str) -> Option<Value> {
        match self.request(node, reqwest::Method::GET, path, None) {
            Some((200, v)) => Some(v),
            _ => None,
        }
    }

    pub fn status(&self, node: &Node) -> Value {
        poll(
            &format!("status of {}", node.name),
            Duration::from_secs(30),
            || self.get(node, "/shoal/v1/status"),
        )
    }

    pub fn create_configmap(&self, node: &Node, name: &str, value: &str) {
        let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": value}});
        let (code, resp) = poll(
            &format!("API of {}", node.name),
            Duration::from_secs(30),
            || {
                self.request(
                    node,
                    reqwest::Method::POST,
                    "/api/v1/namespaces/default/configmaps",
                    Some(body.clone()),
                )
            },
        );
        assert_eq!(
            code, 201,
            "creating configmap {name} on {}: {resp}",
            node.name
        );
    }

    pub fn configmap_value(&self, node: &Node, name: &str) -> Option<String> {
        let v = self.get(
            node,
            &format!("/api/v1/namespaces/default/configmaps/{name}"),
        )?;
        v["data"]["k"].as_str().map(String::from)
    }

    pub fn configmap_names(&self, node: &Node) -> Vec<String> {
        let Some(v) = self.get(node, "/api/v1/namespaces/default/configmaps") else {
            return vec![];
        };
        let mut names: Vec<String> = v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["metadata"]["name"].as_str().map(String::from))
            .collect();
        names.sort();
        names
    }

    /// Whether `observer` sees node `name` Ready (`None`: unknown to it or API not up).
    pub fn node_ready(&self, observer: &Node, name: &str) -> Option<bool> {
        let v = self.get(observer, &format!("/api/v1/nodes/{name}"))?;
        let cond = v["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Ready")?
            .clone();
        Some(cond["status"] == "True")
    }

    /// Waits until every node of `group` names the same leader, in the group, and returns it.
    pub fn agreed_leader(&self, group: &[&Node], deadline: Duration) -> String {
        poll("the group agrees on one leader", deadline, || {
            let leaders: Vec<Option<String>> = group
                .iter()
                .map(|n| {
                    self.get(n, "/shoal/v1/status")
                        .and_then(|s| s["leader"].as_str().map(String::from))
                })
                .collect();
            let first = leaders[0].clone()?;
            (leaders.iter().all(|l| l.as_deref() == Some(first.as_str()))
                && group.iter().any(|n| n.name == first))
            .then_some(first)
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}

pub struct Intruder {
    pub name: String,
    pub dir: PathBuf,
    log: PathBuf,
    child: Child,
}

impl Intruder {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Intruder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
