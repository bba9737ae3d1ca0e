//! The API against the real `kubectl` (1.32): an in-process server on 127.0.0.1:0 over an
//! in-memory backend, a throwaway CA, and kubectl run as a child process. Raw HTTPS requests
//! (reqwest with the test CA) cover what kubectl never sends: bad input, auth failures.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use chrono::Utc;
use futures::StreamExt;
use serde_json::{json, Value};
use shoal::api::{
    self, AgentStatus, ApiConfig, Backend, BackendError, BoxFuture, ImageSummary, LogRequest,
    LogStream, MemberStatus, ObjectKey, WorkloadView,
};
use shoal::model::workload::{Binding, PodStatusRecord, SchedulingRecord};
use shoal::model::{NodeRecord, NodeSystemInfo, NodeView, Readiness};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{oneshot, watch};

const TOKEN: &str = "s3cret-test-token";
const KUBECTL: &str = "/usr/bin/kubectl";

/// The in-memory backend: a map of objects, fixed nodes, and a change counter; canned
/// workload records, events, log bytes and images stand in for the rest of the agent.
struct Fake {
    objects: Mutex<BTreeMap<ObjectKey, Value>>,
    nodes: Mutex<Vec<NodeView>>,
    tick: watch::Sender<u64>,
    view: Mutex<WorkloadView>,
    events: Mutex<Vec<Value>>,
    /// Every log request received, and the chunks each one streams.
    log_requests: Mutex<Vec<LogRequest>>,
    log_chunks: Mutex<Vec<String>>,
    upload_dir: Option<PathBuf>,
    /// `(path, size, existed)` of every archive handed to `import_image`.
    imported: Mutex<Vec<(PathBuf, u64)>>,
}

fn node(name: &str, ip: &str, readiness: Readiness, is_leader: bool) -> NodeView {
    let created = Utc::now() - chrono::Duration::minutes(42);
    NodeView {
        record: NodeRecord {
            name: name.into(),
            uid: format!("uid-{name}"),
            peer_id: format!("12D3KooW{name}"),
            p2p_addr: format!("/ip4/{ip}/udp/7946/quic-v1"),
            api_addr: format!("{ip}:6443"),
            internal_ip: ip.into(),
            created,
            labels: BTreeMap::from([("zone".to_string(), "a".to_string())]),
            capacity: BTreeMap::from([
                ("cpu".to_string(), "2".to_string()),
                ("memory".to_string(), "4026532Ki".to_string()),
                ("pods".to_string(), "110".to_string()),
            ]),
            system: NodeSystemInfo {
                os_image: "Debian GNU/Linux 12 (bookworm)".into(),
                kernel_version: "6.1.0-test".into(),
                architecture: "amd64".into(),
                operating_system: "linux".into(),
                container_runtime_version: "runc://1.1.12".into(),
                shoal_version: "0.1.0".into(),
                machine_id: format!("machine-{name}"),
                local_path_root: String::new(),
            },
        },
        readiness,
        since: created,
        is_leader,
        pod_cidr: (name == "alpha").then(|| "10.244.3.0/24".to_string()),
        pressure: None,
    }
}

impl Fake {
    fn new() -> Arc<Self> {
        Arc::new(Fake {
            objects: Mutex::new(BTreeMap::new()),
            nodes: Mutex::new(vec![
                node("alpha", "10.77.0.2", Readiness::Ready, true),
                node("beta", "10.77.0.3", Readiness::Suspect, false),
            ]),
            tick: watch::channel(0).0,
            view: Mutex::new(WorkloadView::default()),
            events: Mutex::new(Vec::new()),
            log_requests: Mutex::new(Vec::new()),
            log_chunks: Mutex::new(Vec::new()),
            upload_dir: None,
            imported: Mutex::new(Vec::new()),
        })
    }

    fn with_view(&self, f: impl FnOnce(&mut WorkloadView)) {
        f(&mut self.view.lock().unwrap());
        self.bump();
    }

    fn put(&self, resource: &str, object: Value) {
        let key = ObjectKey {
            resource: resource.into(),
            namespace: Some("default".into()),
            name: object["metadata"]["name"].as_str().unwrap().into(),
        };
        self.put_object(&key, object).unwrap();
    }

    fn get(&self, resource: &str, name: &str) -> Option<Value> {
        self.get_object(&ObjectKey {
            resource: resource.into(),
            namespace: Some("default".into()),
            name: name.into(),
        })
    }

    fn bump(&self) {
        self.tick.send_modify(|t| *t += 1);
    }

    fn set_readiness(&self, name: &str, readiness: Readiness) {
        for n in self
            .nodes
            .lock()
            .unwrap()
            .iter_mut()
            .filter(|n| n.record.name == name)
        {
            n.readiness = readiness;
            n.since = Utc::now();
        }
        self.bump();
    }
}

impl Backend for Fake {
    fn node_name(&self) -> String {
        "alpha".into()
    }
    fn nodes(&self) -> Vec<NodeView> {
        self.nodes.lock().unwrap().clone()
    }
    fn delete_node(&self, name: &str) -> Result<(), BackendError> {
        self.nodes.lock().unwrap().retain(|n| n.record.name != name);
        self.bump();
        Ok(())
    }
    fn list_objects(&self, resource: &str, namespace: Option<&str>) -> Vec<Value> {
        self.objects
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| {
                k.resource == resource
                    && (namespace.is_none() || k.namespace.as_deref() == namespace)
            })
            .map(|(_, v)| v.clone())
            .collect()
    }
    fn get_object(&self, key: &ObjectKey) -> Option<Value> {
        self.objects.lock().unwrap().get(key).cloned()
    }
    fn put_object(&self, key: &ObjectKey, object: Value) -> Result<(), BackendError> {
        self.objects.lock().unwrap().insert(key.clone(), object);
        self.bump();
        Ok(())
    }
    fn delete_object(&self, key: &ObjectKey) -> Result<Option<Value>, BackendError> {
        let old = self.objects.lock().unwrap().remove(key);
        self.bump();
        Ok(old)
    }
    fn authenticate(&self, token: &str) -> bool {
        token == TOKEN
    }
    fn status(&self) -> AgentStatus {
        AgentStatus {
            node: "alpha".into(),
            cluster_id: "test-cluster".into(),
            generation: 1,
            epoch: 3,
            view: "abcd".into(),
            leader: Some("alpha".into()),
            members: vec![MemberStatus {
                name: "alpha".into(),
                state: shoal::model::MemberState::Alive,
                incarnation: 1,
                addr: "x".into(),
            }],
            heads: vec!["00ff".into()],
            doc_bytes: 1234,
            admitted_peers: vec![],
            ..Default::default()
        }
    }
    fn backup(&self) -> Result<Vec<u8>, BackendError> {
        Ok(b"\x00backup-bytes\xff".to_vec())
    }
    fn changes(&self) -> watch::Receiver<u64> {
        self.tick.subscribe()
    }
    fn workload_view(&self) -> WorkloadView {
        self.view.lock().unwrap().clone()
    }
    fn events(&self, namespace: Option<&str>) -> Vec<Value> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| namespace.is_none_or(|ns| e["metadata"]["namespace"] == ns))
            .cloned()
            .collect()
    }
    fn pod_logs(&self, req: LogRequest) -> BoxFuture<'static, Result<LogStream, BackendError>> {
        self.log_requests.lock().unwrap().push(req.clone());
        let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = self
            .log_chunks
            .lock()
            .unwrap()
            .iter()
            .map(|c| Ok(bytes::Bytes::from(c.clone())))
            .collect();
        Box::pin(async move {
            if req.pod == "gone" {
                return Err(BackendError::NotFound("pod \"gone\" on its node".into()));
            }
            // A follow trickles its chunks, then the stream ends (the container exited).
            let delay = if req.follow { 100 } else { 0 };
            let stream = futures::stream::iter(chunks).then(move |c| async move {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                c
            });
            Ok(Box::pin(stream) as LogStream)
        })
    }
    fn upload_dir(&self) -> Option<PathBuf> {
        self.upload_dir.clone()
    }
    fn import_image(
        &self,
        archive: PathBuf,
    ) -> BoxFuture<'static, Result<Vec<ImageSummary>, BackendError>> {
        let size = std::fs::metadata(&archive).map(|m| m.len()).unwrap_or(0);
        self.imported.lock().unwrap().push((archive, size));
        Box::pin(async move {
            Ok(vec![ImageSummary {
                reference: "shoal.test/busybox:1".into(),
                digest: "sha256:abc".into(),
                size,
            }])
        })
    }
    fn images(&self) -> Vec<ImageSummary> {
        vec![ImageSummary {
            reference: "shoal.test/busybox:1".into(),
            digest: "sha256:abc".into(),
            size: 42,
        }]
    }
}

/// `SHOAL_KUBECTL_VERBOSITY=6` runs kubectl with `-v=6` and prints what it did (debugging).
fn verbosity() -> Option<String> {
    std::env::var("SHOAL_KUBECTL_VERBOSITY")
        .ok()
        .filter(|v| !v.is_empty())
}

/// A running server plus a kubeconfig pointing at it.
struct Harness {
    backend: Arc<Fake>,
    base: String,
    dir: tempfile::TempDir,
    ca_pem: String,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

fn certificates() -> (String, String, String) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "shoal test CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "shoal api");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

impl Harness {
    async fn start() -> Self {
        Self::start_with(ApiConfig::default()).await
    }

    async fn start_with(config: ApiConfig) -> Self {
        Self::start_full(config, None).await
    }

    async fn start_full(config: ApiConfig, upload_dir: Option<PathBuf>) -> Self {
        assert!(
            std::path::Path::new(KUBECTL).exists(),
            "{KUBECTL} is missing: these tests need the real kubectl 1.32 (install kubectl to /usr/bin/kubectl)"
        );
        let (ca_pem, cert_pem, key_pem) = certificates();
        let tls = Arc::new(api::tls_config(cert_pem.as_bytes(), key_pem.as_bytes()).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut backend = Fake::new();
        Arc::get_mut(&mut backend).unwrap().upload_dir = upload_dir;
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(api::serve(listener, tls, backend.clone(), config, async {
            let _ = stopped.await;
        }));
        let base = format!("https://127.0.0.1:{port}");
        let dir = tempfile::tempdir().unwrap();
        let ca_data = base64::engine::general_purpose::STANDARD.encode(&ca_pem);
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: shoal\n  cluster:\n    server: {base}\n    certificate-authority-data: {ca_data}\nusers:\n- name: admin\n  user:\n    token: {TOKEN}\ncontexts:\n- name: shoal\n  context:\n    cluster: shoal\n    user: admin\ncurrent-context: shoal\n"
        );
        std::fs::write(dir.path().join("kubeconfig"), kubeconfig).unwrap();
        Harness {
            backend,
            base,
            dir,
            ca_pem,
            stop: Some(stop),
            server: Some(server),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(KUBECTL);
        cmd.arg("--kubeconfig")
            .arg(self.path("kubeconfig"))
            .arg("--cache-dir")
            .arg(self.path("cache"))
            // Before the command's own flags, so that it stays before a `--`.
            .args(verbosity().map(|v| format!("-v={v}")))
            .args(args)
            .env("HOME", self.dir.path())
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    async fn kubectl(&self, args: &[&str]) -> std::process::Output {
        let run = self.command(args).output();
        tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} did not finish within 60s"))
            .expect("running kubectl")
    }

    /// Runs kubectl, asserts success, returns stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args).await;
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            out.status.success(),
            "kubectl {args:?} failed:\nstdout: {stdout}\nstderr: {stderr}"
        );
        if verbosity().is_some() {
            eprintln!("== kubectl {args:?}\n{stdout}{stderr}");
        } else {
            assert!(
                !stderr.contains("warning"),
                "kubectl {args:?} warned: {stderr}"
            );
        }
        stdout
    }

    /// Runs kubectl, asserts failure, returns stderr.
    async fn fails(&self, args: &[&str]) -> String {
        let out = self.kubectl(args).await;
        assert!(
            !out.status.success(),
            "kubectl {args:?} unexpectedly succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).to_string()
    }

    fn write(&self, name: &str, content: &str) -> String {
        let path = self.path(name);
        std::fs::write(&path, content).unwrap();
        path.to_string_lossy().to_string()
    }

    fn client(&self) -> reqwest::Client {
        shoal::install_crypto_provider();
        reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap()])
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client()
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let server = self.server.take().unwrap();
        tokio::time::timeout(Duration::from_secs(15), server)
            .await
            .expect("server shut down in time")
            .unwrap()
            .unwrap();
    }
}

async fn status_of(response: reqwest::Response) -> (u16, Value) {
    let code = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON (HTTP {code}): {text}"));
    (code, body)
}

fn column_positions(header: &str, names: &[&str]) {
    let mut last = 0;
    for name in names {
        let at = header
            .find(name)
            .unwrap_or_else(|| panic!("column {name} missing from {header:?}"));
        assert!(at >= last, "column {name} out of order in {header:?}");
        last = at;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_auth_discovery_and_shoal_routes() {
    let h = Harness::start().await;
    // A wrong token fails kubectl; a request without a token gets a bare 401 Status.
    let stderr = h.fails(&["--token", "wrong", "get", "nodes"]).await;
    assert!(
        stderr.contains("Unauthorized") || stderr.contains("credentials"),
        "{stderr}"
    );
    for path in [
        "/api/v1/nodes",
        "/healthz",
        "/version",
        "/shoal/v1/status",
        "/nope",
        "/openapi/v3",
    ] {
        let response = h
            .client()
            .get(format!("{}{path}", h.base))
            .send()
            .await
            .unwrap();
        let (code, body) = status_of(response).await;
        assert_eq!(code, 401, "{path}");
        assert_eq!(
            body,
            json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
                   "message":"Unauthorized","reason":"Unauthorized","code":401})
        );
    }
    let wrong = h
        .client()
        .get(format!("{}/healthz", h.base))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);

    let version = h.ok(&["version", "-o", "json"]).await;
    let version: Value = serde_json::from_str(&version).unwrap();
    assert_eq!(version["serverVersion"]["minor"], "32");
    let resources = h.ok(&["api-resources"]).await;
    for needle in [
        "configmaps",
        "cm",
        "namespaces",
        "ns",
        "nodes",
        "no",
        "ConfigMap",
    ] {
        assert!(
            resources.contains(needle),
            "api-resources lacks {needle}: {resources}"
        );
    }
    assert!(h.ok(&["api-versions"]).await.contains("v1"));
    for path in ["/healthz", "/readyz", "/livez"] {
        let response = h.req(reqwest::Method::GET, path).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200);
        assert_eq!(response.text().await.unwrap(), "ok");
    }
    let (code, index) = status_of(
        h.req(reqwest::Method::GET, "/openapi/v3")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, 200);
    let url = index["paths"]["api/v1"]["serverRelativeURL"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, doc) = status_of(h.req(reqwest::Method::GET, &url).send().await.unwrap()).await;
    assert_eq!(code, 200);
    let patch = &doc["paths"]["/api/v1/namespaces/{namespace}/configmaps/{name}"]["patch"];
    assert_eq!(
        patch["x-kubernetes-group-version-kind"]["kind"],
        "ConfigMap"
    );
    assert!(patch["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "fieldValidation"));

    let (code, status) = status_of(
        h.req(reqwest::Method::GET, "/shoal/v1/status")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(status["cluster_id"], "test-cluster");
    let backup = h
        .req(reqwest::Method::GET, "/shoal/v1/backup")
        .send()
        .await
        .unwrap();
    assert_eq!(backup.headers()["content-type"], "application/octet-stream");
    assert_eq!(
        backup.bytes().await.unwrap().as_ref(),
        b"\x00backup-bytes\xff"
    );
    h.stop().await;
}

async fn next_line(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> String {
    tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("watch output in time")
        .unwrap()
        .expect("watch still running")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_nodes() {
    let h = Harness::start().await;
    let out = h.ok(&["get", "nodes"]).await;
    let lines: Vec<&str> = out.lines().collect();
    column_positions(lines[0], &["NAME", "STATUS", "ROLES", "AGE", "VERSION"]);
    assert!(!lines[0].contains("INTERNAL-IP"));
    let alpha = lines
        .iter()
        .find(|l| l.starts_with("alpha"))
        .expect("alpha row");
    assert!(
        alpha.contains("Ready") && alpha.contains("leader") && alpha.contains("42m"),
        "{alpha}"
    );
    assert!(alpha.contains("v1.32.0-shoal.0.1.0"), "{alpha}");
    let beta = lines
        .iter()
        .find(|l| l.starts_with("beta"))
        .expect("beta row");
    assert!(
        beta.contains("NotReady") && beta.contains("<none>"),
        "{beta}"
    );

    let wide = h.ok(&["get", "nodes", "-o", "wide"]).await;
    column_positions(
        wide.lines().next().unwrap(),
        &[
            "NAME",
            "STATUS",
            "ROLES",
            "AGE",
            "VERSION",
            "INTERNAL-IP",
            "EXTERNAL-IP",
            "OS-IMAGE",
            "KERNEL-VERSION",
            "CONTAINER-RUNTIME",
        ],
    );
    assert!(
        wide.contains("10.77.0.2")
            && wide.contains("Debian GNU/Linux 12 (bookworm)")
            && wide.contains("runc://1.1.12")
    );

    let list: Value = serde_json::from_str(&h.ok(&["get", "nodes", "-o", "json"]).await).unwrap();
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    let alpha = &items[0];
    assert_eq!(alpha["metadata"]["name"], "alpha");
    assert_eq!(alpha["metadata"]["uid"], "uid-alpha");
    assert_eq!(
        alpha["metadata"]["labels"]["kubernetes.io/hostname"],
        "alpha"
    );
    assert_eq!(
        alpha["metadata"]["labels"]["node-role.kubernetes.io/leader"],
        ""
    );
    assert_eq!(
        alpha["metadata"]["annotations"]["shoal.dev/peer-id"],
        "12D3KooWalpha"
    );
    assert_eq!(
        alpha["status"]["conditions"][0]["reason"],
        "ShoalAgentReady"
    );
    assert_eq!(items[1]["status"]["conditions"][0]["status"], "Unknown");
    assert_eq!(
        items[1]["status"]["conditions"][0]["reason"],
        "NodeStatusUnknown"
    );
    assert_eq!(alpha["status"]["nodeInfo"]["machineID"], "machine-alpha");
    assert_eq!(alpha["spec"]["podCIDR"], "10.244.3.0/24");
    assert_eq!(
        alpha["spec"]["podCIDRs"],
        serde_json::json!(["10.244.3.0/24"])
    );
    assert!(items[1]["spec"].get("podCIDR").is_none(), "{}", items[1]);
    let cidrs = h
        .ok(&["get", "nodes", "-o", "jsonpath={.items[*].spec.podCIDR}"])
        .await;
    assert_eq!(cidrs.trim(), "10.244.3.0/24");

    let yaml = h.ok(&["get", "node", "alpha", "-o", "yaml"]).await;
    assert!(
        yaml.contains("kind: Node") && yaml.contains("InternalIP"),
        "{yaml}"
    );
    let one = h.ok(&["get", "node", "alpha"]).await;
    assert_eq!(one.lines().count(), 2, "{one}");
    let stderr = h.fails(&["get", "node", "gamma"]).await;
    assert!(stderr.contains("nodes \"gamma\" not found"), "{stderr}");

    let describe = h.ok(&["describe", "node", "alpha"]).await;
    for needle in [
        "Name:               alpha",
        "Roles:              leader",
        "ShoalAgentReady",
        "InternalIP:  10.77.0.2",
        "Kubelet Version:            v1.32.0-shoal.0.1.0",
        "Non-terminated Pods:",
    ] {
        assert!(
            describe.contains(needle),
            "describe lacks {needle:?}:\n{describe}"
        );
    }
    for field in ["PodCIDR:", "PodCIDRs:"] {
        assert!(
            describe
                .lines()
                .any(|l| l.starts_with(field) && l.trim_end().ends_with(" 10.244.3.0/24")),
            "describe lacks {field} 10.244.3.0/24:\n{describe}"
        );
    }

    // Watch: the initial rows, then a change of beta's readiness.
    let mut child = h
        .command(&["get", "nodes", "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(next_line(&mut lines).await.starts_with("NAME"));
    assert!(next_line(&mut lines).await.starts_with("alpha"));
    assert!(next_line(&mut lines).await.starts_with("beta"));
    h.backend.set_readiness("beta", Readiness::Ready);
    let update = next_line(&mut lines).await;
    assert!(
        update.starts_with("beta") && update.contains("Ready") && !update.contains("NotReady"),
        "{update}"
    );
    child.kill().await.unwrap();

    let deleted = h.ok(&["delete", "node", "beta"]).await;
    assert!(deleted.contains("node \"beta\" deleted"), "{deleted}");
    assert!(!h.ok(&["get", "nodes"]).await.contains("beta"));
    h.stop().await;
}

const CM_V1: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\n  namespace: default\n  labels:\n    tier: web\ndata:\n  color: blue\n  size: large\n";
const CM_V2: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\n  namespace: default\n  labels:\n    tier: web\ndata:\n  color: green\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_configmaps_and_namespaces() {
    let h = Harness::start().await;
    let ns = h.ok(&["get", "ns"]).await;
    assert!(
        ns.contains("default") && ns.contains("kube-system") && ns.contains("Active"),
        "{ns}"
    );
    assert!(h
        .ok(&["create", "namespace", "team-a"])
        .await
        .contains("namespace/team-a created"));
    let ns = h.ok(&["get", "namespaces"]).await;
    column_positions(ns.lines().next().unwrap(), &["NAME", "STATUS", "AGE"]);
    assert!(ns.contains("team-a"), "{ns}");
    h.fails(&["create", "namespace", "team-a"]).await;

    assert!(h
        .ok(&[
            "create",
            "configmap",
            "one",
            "--from-literal=a=1",
            "--from-literal=b=2"
        ])
        .await
        .contains("configmap/one created"));
    assert!(h
        .ok(&["-n", "team-a", "create", "cm", "two", "--from-literal=x=y"])
        .await
        .contains("created"));
    let stderr = h.fails(&["-n", "nowhere", "create", "cm", "three"]).await;
    assert!(
        stderr.contains("namespaces \"nowhere\" not found"),
        "{stderr}"
    );
    let all = h.ok(&["get", "cm", "-A"]).await;
    column_positions(
        all.lines().next().unwrap(),
        &["NAMESPACE", "NAME", "DATA", "AGE"],
    );
    assert!(
        all.lines()
            .any(|l| l.starts_with("default") && l.contains("one") && l.contains(" 2 ")),
        "{all}"
    );
    assert!(
        all.lines()
            .any(|l| l.starts_with("team-a") && l.contains("two")),
        "{all}"
    );
    assert!(!h.ok(&["get", "cm"]).await.contains("two"));

    // apply twice: the second apply is a strategic merge patch that removes `size`.
    let file = h.write("cm.yaml", CM_V1);
    assert!(h
        .ok(&["apply", "-f", &file])
        .await
        .contains("configmap/app created"));
    let file = h.write("cm.yaml", CM_V2);
    assert!(h
        .ok(&["apply", "-f", &file])
        .await
        .contains("configmap/app configured"));
    let app: Value =
        serde_json::from_str(&h.ok(&["get", "cm", "app", "-o", "json"]).await).unwrap();
    assert_eq!(app["data"], json!({"color": "green"}));
    assert!(
        app["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .is_string()
    );
    assert_eq!(app["metadata"]["generation"], 2);
    assert!(h
        .ok(&["apply", "-f", &file])
        .await
        .contains("configmap/app unchanged"));
    assert!(h.ok(&["get", "cm", "-l", "tier=web"]).await.contains("app"));
    assert!(!h
        .ok(&["get", "cm", "-l", "tier!=web"])
        .await
        .contains("app"));

    // Unknown fields are rejected by the server under kubectl's fieldValidation=Strict.
    let file = h.write(
        "bad.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bad\nspec:\n  nonsense: 1\n",
    );
    let stderr = h.fails(&["apply", "-f", &file]).await;
    assert!(stderr.contains("unknown field \"spec\""), "{stderr}");

    // Invalid names come back as 422 with the field; namespaces apply and re-apply too.
    let file = h.write(
        "badname.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Bad_Name\n",
    );
    let stderr = h.fails(&["create", "-f", &file]).await;
    assert!(
        stderr.contains("The ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value"),
        "{stderr}"
    );
    let file = h.write(
        "ns.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team-b\n  labels:\n    env: dev\n",
    );
    assert!(h
        .ok(&["apply", "-f", &file])
        .await
        .contains("namespace/team-b created"));
    let file = h.write(
        "ns.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team-b\n  labels:\n    env: prod\n",
    );
    assert!(h
        .ok(&["apply", "-f", &file])
        .await
        .contains("namespace/team-b configured"));
    assert!(h
        .ok(&["get", "ns", "-l", "env=prod"])
        .await
        .contains("team-b"));
    let replaced = h.write("cm-replace.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: two\n  namespace: team-a\ndata:\n  x: z\n");
    assert!(h
        .ok(&["replace", "-f", &replaced])
        .await
        .contains("configmap/two replaced"));

    // Edits through patch and replace.
    h.ok(&[
        "patch",
        "cm",
        "one",
        "--type=merge",
        "-p",
        r#"{"data":{"a":"9"}}"#,
    ])
    .await;
    h.ok(&[
        "patch",
        "cm",
        "one",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/data/b"}]"#,
    ])
    .await;
    h.ok(&["label", "cm", "one", "team=blue"]).await;
    let one: Value =
        serde_json::from_str(&h.ok(&["get", "cm", "one", "-o", "json"]).await).unwrap();
    assert_eq!(one["data"], json!({"a": "9"}));
    assert_eq!(one["metadata"]["labels"]["team"], "blue");

    // delete waits for the object to disappear (a fieldSelector list/watch).
    assert!(h
        .ok(&["delete", "cm", "app", "--wait"])
        .await
        .contains("configmap \"app\" deleted"));
    let stderr = h.fails(&["get", "cm", "app"]).await;
    assert!(stderr.contains("configmaps \"app\" not found"), "{stderr}");
    let stderr = h.fails(&["delete", "ns", "default"]).await;
    assert!(stderr.contains("forbidden"), "{stderr}");
    assert!(h
        .ok(&["delete", "ns", "team-a"])
        .await
        .contains("namespace \"team-a\" deleted"));
    assert!(!h.ok(&["get", "cm", "-A"]).await.contains("two"));
    h.stop().await;
}

/// A Secret applied with both `data` (base64) and `stringData` (plain, merged into `data`).
const SECRET_V1: &str = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: app-creds\ntype: Opaque\ndata:\n  user: YWRtaW4=\nstringData:\n  password: s3cr3t-v1\n";
const SECRET_V2: &str = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: app-creds\ntype: Opaque\ndata:\n  user: YWRtaW4=\nstringData:\n  password: s3cr3t-v2\n";

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_secrets() {
    let h = Harness::start().await;
    // kubectl's typed client sends these as protobuf.
    assert!(h
        .ok(&[
            "create",
            "secret",
            "docker-registry",
            "regcred",
            "--docker-server=10.77.0.1:5000",
            "--docker-username=u",
            "--docker-password=p"
        ])
        .await
        .contains("secret/regcred created"));
    let regcred = h.backend.get("secrets", "regcred").unwrap();
    assert_eq!(regcred["type"], "kubernetes.io/dockerconfigjson");
    assert_eq!(
        shoal::model::secret::registry_credentials(&regcred, "10.77.0.1:5000")
            .unwrap()
            .map(|c| (c.username, c.password)),
        Some(("u".to_string(), "p".to_string()))
    );
    assert!(h
        .ok(&["create", "secret", "generic", "x", "--from-literal=a=b"])
        .await
        .contains("secret/x created"));
    let x = h.backend.get("secrets", "x").unwrap();
    assert_eq!(x["data"], json!({"a": b64("b")}));
    assert_eq!(x["type"], "Opaque");

    // apply: stringData lands in data as base64 and is not stored; re-apply updates it.
    let file = h.write("secret.yaml", SECRET_V1);
    assert!(h
        .ok(&["apply", "-f", &file])
        .await
        .contains("secret/app-creds created"));
    let stored = h.backend.get("secrets", "app-creds").unwrap();
    assert_eq!(
        stored["data"],
        json!({"user": b64("admin"), "password": b64("s3cr3t-v1")})
    );
    assert!(stored.get("stringData").is_none());
    let file = h.write("secret.yaml", SECRET_V2);
    assert!(h
        .ok(&["apply", "-f", &file])
        .await
        .contains("secret/app-creds configured"));
    let yaml = h.ok(&["get", "secret", "app-creds", "-o", "yaml"]).await;
    let served: Value = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(served["data"]["password"], b64("s3cr3t-v2"));
    assert_eq!(served["data"]["user"], b64("admin"));
    assert_eq!(served["type"], "Opaque");
    assert!(served.get("stringData").is_none(), "{yaml}");

    let list = h.ok(&["get", "secrets"]).await;
    column_positions(
        list.lines().next().unwrap(),
        &["NAME", "TYPE", "DATA", "AGE"],
    );
    let rows = squeeze(&list);
    for want in [
        "regcred kubernetes.io/dockerconfigjson 1 ",
        "x Opaque 1 ",
        "app-creds Opaque 2 ",
    ] {
        assert!(rows.contains(want), "{want:?} missing from:\n{list}");
    }

    // describe shows sizes, never values.
    let describe = squeeze(&h.ok(&["describe", "secret", "regcred"]).await);
    for needle in [
        "Name: regcred",
        "Namespace: default",
        "Type: kubernetes.io/dockerconfigjson",
        ".dockerconfigjson:",
        " bytes",
    ] {
        assert!(
            describe.contains(needle),
            "describe lacks {needle:?}:\n{describe}"
        );
    }
    assert!(!describe.contains(&b64("u:p")), "{describe}");

    // Bad Secrets are 422s naming the field, without the secret's contents.
    let bad = [
        (
            "no-auths",
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: bad\ntype: kubernetes.io/dockerconfigjson\nstringData:\n  .dockerconfigjson: '{\"hunter2\": {}}'\n",
            "data[.dockerconfigjson]: Invalid value: \"<secret contents redacted>\": .dockerconfigjson has no `auths` object",
        ),
        (
            "missing-key",
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: bad\ntype: kubernetes.io/dockerconfigjson\nstringData:\n  config.json: hunter2\n",
            "data[.dockerconfigjson]: Required value",
        ),
        (
            "bad-base64",
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: bad\ndata:\n  k: hunter2!\n",
            "The Secret \"bad\" is invalid: data[k]: Invalid value: \"<secret contents redacted>\": illegal base64 data",
        ),
        (
            "bad-key",
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: bad\nstringData:\n  a/b: hunter2\n",
            "data[a/b]: Invalid value: \"a/b\": a valid config key must consist of alphanumeric characters",
        ),
    ];
    for (case, yaml, want) in bad {
        let file = h.write(&format!("{case}.yaml"), yaml);
        let stderr = h.fails(&["apply", "-f", &file]).await;
        assert!(stderr.contains(want), "{case}: {stderr}");
        assert!(!stderr.contains("hunter2"), "{case}: {stderr}");
    }
    assert!(h.backend.get("secrets", "bad").is_none());

    assert!(h
        .ok(&["delete", "secret", "x"])
        .await
        .contains("secret \"x\" deleted"));
    let stderr = h.fails(&["get", "secret", "x"]).await;
    assert!(stderr.contains("secrets \"x\" not found"), "{stderr}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raw_bad_input_is_rejected_with_status() {
    let config = ApiConfig {
        max_body_bytes: 64 * 1024,
        ..ApiConfig::default()
    };
    let h = Harness::start_with(config).await;
    let post = |body: Vec<u8>, content_type: &str| {
        h.req(
            reqwest::Method::POST,
            "/api/v1/namespaces/default/configmaps",
        )
        .header("content-type", content_type)
        .body(body)
    };
    let cases: Vec<(Vec<u8>, &str, u16, &str)> = vec![
        (
            b"{not json".to_vec(),
            "application/json",
            400,
            "not valid JSON",
        ),
        (
            b"a: [unclosed".to_vec(),
            "application/yaml",
            400,
            "not valid YAML",
        ),
        (
            b"[1,2]".to_vec(),
            "application/json",
            400,
            "must be a JSON object",
        ),
        (
            br#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"x"}}"#.to_vec(),
            "application/json",
            400,
            "cannot be handled as a ConfigMap",
        ),
        (
            br#"{"apiVersion":"apps/v1","kind":"ConfigMap","metadata":{"name":"x"}}"#.to_vec(),
            "application/json",
            400,
            "does not match the expected API version",
        ),
        (
            br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"Bad_Name"}}"#.to_vec(),
            "application/json",
            422,
            "is invalid",
        ),
        (
            br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{}}"#.to_vec(),
            "application/json",
            422,
            "name or generateName is required",
        ),
        (
            br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"},"data":{"a":1}}"#
                .to_vec(),
            "application/json",
            400,
            "data.a: expected string",
        ),
        (
            br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"}}"#.to_vec(),
            "text/plain",
            415,
            "unknown format",
        ),
        (vec![b' '; 70 * 1024], "application/json", 413, "too large"),
    ];
    for (body, content_type, want_code, want_message) in cases {
        let (code, status) = status_of(post(body, content_type).send().await.unwrap()).await;
        assert_eq!(code, want_code, "{status}");
        assert_eq!(status["kind"], "Status");
        assert_eq!(status["code"], want_code);
        assert!(
            status["message"].as_str().unwrap().contains(want_message),
            "{status}"
        );
    }
    let (_, invalid) = status_of(
        post(
            br#"{"metadata":{"name":"Bad_Name"}}"#.to_vec(),
            "application/json",
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(invalid["reason"], "Invalid");
    assert_eq!(invalid["details"]["causes"][0]["field"], "metadata.name");

    // Strict field validation names the field; Warn stores without it and warns.
    let unknown = br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"u","bogus":1},"extra":{"a":1}}"#;
    let response = h
        .req(
            reqwest::Method::POST,
            "/api/v1/namespaces/default/configmaps?fieldValidation=Strict",
        )
        .header("content-type", "application/json")
        .body(unknown.to_vec())
        .send()
        .await
        .unwrap();
    let (code, status) = status_of(response).await;
    assert_eq!(code, 400);
    let message = status["message"].as_str().unwrap();
    assert!(
        message.contains("unknown field \"extra\"")
            && message.contains("unknown field \"metadata.bogus\""),
        "{message}"
    );
    let response = post(unknown.to_vec(), "application/json")
        .send()
        .await
        .unwrap();
    assert!(response.headers().get("warning").is_some());
    let (code, created) = status_of(response).await;
    assert_eq!(code, 201);
    assert!(created.get("extra").is_none());
    assert!(
        created["metadata"]["uid"].is_string()
            && created["metadata"]["resourceVersion"].is_string()
    );
    assert_eq!(created["metadata"]["namespace"], "default");

    // Conflicts, not found, dry run, yaml body.
    let (code, status) = status_of(
        post(unknown.to_vec(), "application/json")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (code, status["reason"].as_str()),
        (409, Some("AlreadyExists"))
    );
    let (code, status) = status_of(
        h.req(
            reqwest::Method::GET,
            "/api/v1/namespaces/default/configmaps/x",
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(code, 404);
    assert_eq!(status["message"], "configmaps \"x\" not found");
    let response = h
        .req(
            reqwest::Method::POST,
            "/api/v1/namespaces/default/configmaps?dryRun=All",
        )
        .header("content-type", "application/yaml")
        .body("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: dry\ndata:\n  k: v\n")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let (code, _) = status_of(
        h.req(
            reqwest::Method::GET,
            "/api/v1/namespaces/default/configmaps/dry",
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(code, 404);

    // PUT with a stale resourceVersion conflicts.
    let mut stale = created.clone();
    stale["metadata"]["resourceVersion"] = json!("1");
    let (code, status) = status_of(
        h.req(
            reqwest::Method::PUT,
            "/api/v1/namespaces/default/configmaps/u",
        )
        .json(&stale)
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!((code, status["reason"].as_str()), (409, Some("Conflict")));

    // Bad patches and selectors.
    let response = h
        .req(
            reqwest::Method::PATCH,
            "/api/v1/namespaces/default/configmaps/u",
        )
        .header("content-type", "application/json-patch+json")
        .body(r#"[{"op":"replace","path":"/nope/x","value":1}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let response = h
        .req(
            reqwest::Method::PATCH,
            "/api/v1/namespaces/default/configmaps/u",
        )
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 415);
    let response = h
        .req(
            reqwest::Method::GET,
            "/api/v1/configmaps?labelSelector=a%20in%20b",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let response = h
        .req(reqwest::Method::DELETE, "/api/v1/nodes")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 405);
    let response = h
        .req(reqwest::Method::GET, "/api/v1/widgets")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);

    // A raw watch: initial ADDED, a DELETED event, and the stream ends at timeoutSeconds.
    let watch = h
        .req(reqwest::Method::GET, "/api/v1/namespaces/default/configmaps?watch=true&timeoutSeconds=2&fieldSelector=metadata.name%3Du")
        .send()
        .await
        .unwrap();
    assert_eq!(watch.status().as_u16(), 200);
    let deleter = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        h.req(
            reqwest::Method::DELETE,
            "/api/v1/namespaces/default/configmaps/u",
        )
        .send()
        .await
        .unwrap()
    };
    let (text, deleted) = tokio::join!(async { watch.text().await.unwrap() }, deleter);
    assert_eq!(deleted.status().as_u16(), 200);
    let events: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, vec!["ADDED", "DELETED"], "{text}");
    assert_eq!(events[1]["object"]["metadata"]["name"], "u");

    // A TLS handshake with garbage does not hurt the server.
    let mut raw = tokio::net::TcpStream::connect(h.base.trim_start_matches("https://"))
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut raw, b"GET / HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    drop(raw);
    let response = h
        .req(reqwest::Method::GET, "/healthz")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);

    // Shutdown ends open watches instead of waiting for them.
    let open_watch = h
        .req(reqwest::Method::GET, "/api/v1/nodes?watch=true")
        .send()
        .await
        .unwrap();
    assert_eq!(open_watch.status().as_u16(), 200);
    let started = std::time::Instant::now();
    h.stop().await;
    let rest = tokio::time::timeout(Duration::from_secs(5), open_watch.text())
        .await
        .expect("watch ended");
    assert!(rest.unwrap_or_default().contains("ADDED"));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown waited for the watch"
    );
}

const DEPLOY_V1: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels:
    app: web
spec:
  replicas: 2
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: main
        image: shoal.test/busybox:1
        command: [httpd, -f, -p, \"8080\"]
        env:
        - name: COLOR
          value: blue
        - name: SIZE
          value: large
        ports:
        - containerPort: 8080
        resources:
          requests:
            cpu: 100m
            memory: 32Mi
";

/// The second apply: new image, SIZE dropped, COLOR changed, a sidecar added.
const DEPLOY_V2: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels:
    app: web
spec:
  replicas: 2
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: main
        image: shoal.test/busybox:2
        command: [httpd, -f, -p, \"8080\"]
        env:
        - name: COLOR
          value: green
        ports:
        - containerPort: 8080
        resources:
          requests:
            cpu: 100m
            memory: 32Mi
      - name: side
        image: shoal.test/busybox:1
        command: [sleep, \"3600\"]
";

fn at(rfc3339: &str) -> chrono::DateTime<Utc> {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .with_timezone(&Utc)
}

fn running_status(ready: bool, ip: &str, restarts: i64) -> Value {
    let started = (Utc::now() - chrono::Duration::seconds(30))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut container = json!({
        "name": "main", "ready": ready, "restartCount": restarts, "image": "shoal.test/busybox:1",
        "imageID": "sha256:abc", "started": true,
        "state": {"running": {"startedAt": started}},
    });
    if restarts > 0 {
        let finished = (Utc::now() - chrono::Duration::seconds(40))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        container["lastState"] =
            json!({"terminated": {"exitCode": 137, "reason": "Error", "finishedAt": finished}});
    }
    json!({
        "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "10.77.0.2", "startTime": started,
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": started},
            // Ready changed now, as a kubelet reports it: the served resourceVersion follows the
            // latest status time, so a watch started just after a list still sees this change.
            {"type": "Ready", "status": if ready {"True"} else {"False"},
             "lastTransitionTime": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)},
        ],
        "containerStatuses": [container],
    })
}

/// Plays the leader's controllers and the kubelets: a ReplicaSet for the Deployment's current
/// template, `replicas` pods, bindings and status records.
fn play_controllers(h: &Harness, rs_name: &str, replicas: usize) -> Vec<String> {
    let deploy = h.backend.get("deployments.apps", "web").unwrap();
    let mut template = deploy["spec"]["template"].clone();
    let hash = rs_name.rsplit('-').next().unwrap();
    template["metadata"]["labels"]["pod-template-hash"] = json!(hash);
    let rs_uid = format!("uid-{rs_name}");
    h.backend.put(
        "replicasets.apps",
        json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": rs_name, "namespace": "default", "uid": rs_uid, "generation": 1,
                         "resourceVersion": "1", "creationTimestamp": "2024-05-01T10:00:00Z",
                         "labels": {"app": "web", "pod-template-hash": hash},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web",
                                              "uid": deploy["metadata"]["uid"], "controller": true}]},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web", "pod-template-hash": hash}},
                     "template": template},
        }),
    );
    let mut names = Vec::new();
    for slot in 0..replicas {
        let name = format!("{rs_name}-p{slot}");
        let created = (Utc::now() - chrono::Duration::minutes(3))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        h.backend.put(
            "pods",
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                             "resourceVersion": "1", "creationTimestamp": created,
                             "labels": template["metadata"]["labels"],
                             "annotations": {"shoal.io/slot": slot.to_string()},
                             "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs_name,
                                                  "uid": rs_uid, "controller": true}]},
                "spec": template["spec"],
            }),
        );
        names.push(name);
    }
    names
}

fn bind(h: &Harness, pod: &str, node: &str, status: Option<Value>) {
    let uid = format!("uid-{pod}");
    let key = ("default".to_string(), pod.to_string());
    h.backend.with_view(|v| {
        v.bindings.insert(
            key.clone(),
            Binding {
                node: node.into(),
                id: format!("b-{pod}"),
                pod_uid: uid.clone(),
                epoch: 1,
                view: 1,
                leader: "alpha".into(),
                at: Utc::now() - chrono::Duration::minutes(2),
            },
        );
        v.node_readiness
            .insert("alpha".into(), shoal::model::Readiness::Ready);
        v.node_readiness
            .insert("beta".into(), shoal::model::Readiness::Ready);
        if let Some(status) = status {
            v.pod_status.insert(
                key,
                vec![(
                    node.to_string(),
                    std::sync::Arc::new(PodStatusRecord {
                        binding: format!("b-{pod}"),
                        pod_uid: uid,
                        status,
                    }),
                )],
            );
        }
    });
}

fn row<'a>(out: &'a str, start: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no row starting with {start:?} in:\n{out}"))
}

/// `text` with runs of blanks collapsed to one space (describe output aligns columns).
fn squeeze(text: &str) -> String {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_deployments_pods_and_status() {
    let h = Harness::start().await;
    let file = h.write("deploy.yaml", DEPLOY_V1);
    assert!(h
        .ok(&["apply", "-f", &file])
        .await
        .contains("deployment.apps/web created"));
    let d: Value =
        serde_json::from_str(&h.ok(&["get", "deploy", "web", "-o", "json"]).await).unwrap();
    assert_eq!(d["metadata"]["generation"], 1);
    assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
    assert_eq!(d["spec"]["revisionHistoryLimit"], 10);
    assert_eq!(d["spec"]["progressDeadlineSeconds"], 600);
    let pod_spec = &d["spec"]["template"]["spec"];
    assert_eq!(pod_spec["restartPolicy"], "Always");
    assert_eq!(pod_spec["containers"][0]["imagePullPolicy"], "IfNotPresent");
    // No ReplicaSet yet: the generation is not observed, nothing is ready.
    assert!(d["status"]["observedGeneration"].is_null());

    let pods = play_controllers(&h, "web-5d4f8", 2);
    bind(
        &h,
        &pods[0],
        "alpha",
        Some(running_status(true, "10.88.0.5", 2)),
    );
    let mut creating = running_status(false, "", 0);
    creating["phase"] = json!("Pending");
    creating["containerStatuses"][0]["state"] = json!({"waiting": {"reason": "ContainerCreating"}});
    bind(&h, &pods[1], "beta", Some(creating));

    let out = h.ok(&["get", "deploy,rs,pods", "-o", "wide"]).await;
    let blocks: Vec<&str> = out.split("\n\n").collect();
    assert_eq!(blocks.len(), 3, "{out}");
    column_positions(
        blocks[0].lines().next().unwrap(),
        &[
            "NAME",
            "READY",
            "UP-TO-DATE",
            "AVAILABLE",
            "AGE",
            "CONTAINERS",
            "IMAGES",
            "SELECTOR",
        ],
    );
    let words = |line: &str| {
        line.split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let deploy = words(row(blocks[0], "deployment.apps/web"));
    assert_eq!(&deploy[1..4], ["1/2", "2", "1"], "{out}");
    assert_eq!(
        &deploy[5..],
        ["main", "shoal.test/busybox:1", "app=web"],
        "{out}"
    );
    column_positions(
        blocks[1].lines().next().unwrap(),
        &[
            "NAME",
            "DESIRED",
            "CURRENT",
            "READY",
            "AGE",
            "CONTAINERS",
            "IMAGES",
            "SELECTOR",
        ],
    );
    let rs = words(row(blocks[1], "replicaset.apps/web-5d4f8"));
    assert_eq!(&rs[1..4], ["2", "2", "1"], "{out}");
    assert_eq!(rs[7], "app=web,pod-template-hash=5d4f8", "{out}");
    column_positions(
        blocks[2].lines().next().unwrap(),
        &[
            "NAME",
            "READY",
            "STATUS",
            "RESTARTS",
            "AGE",
            "IP",
            "NODE",
            "NOMINATED NODE",
            "READINESS GATES",
        ],
    );
    let ready = row(blocks[2], &format!("pod/{}", pods[0]));
    let w = words(ready);
    assert_eq!(&w[1..3], ["1/1", "Running"], "{out}");
    assert!(
        // The last restart finished 40 s before the status was made (slow runs: a bit more).
        ready.contains("2 (4") && ready.contains("s ago)"),
        "{ready}"
    );
    assert!(
        ready.contains("10.88.0.5") && ready.contains("alpha"),
        "{ready}"
    );
    let w = words(row(blocks[2], &format!("pod/{}", pods[1])));
    assert_eq!(&w[1..4], ["0/1", "ContainerCreating", "0"], "{out}");
    assert_eq!(&w[5..], ["<none>", "beta", "<none>", "<none>"], "{out}");

    // get all lists the three kinds (category `all`).
    let all = h.ok(&["get", "all"]).await;
    for needle in [
        "deployment.apps/web",
        "replicaset.apps/web-5d4f8",
        &format!("pod/{}", pods[0]),
    ] {
        assert!(all.contains(needle), "get all lacks {needle}:\n{all}");
    }

    // rollout status waits, then completes when the second pod becomes ready (a watch sees
    // the computed status change).
    let rollout = h
        .command(&["rollout", "status", "deploy/web", "--timeout=30s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(rollout.stdout.unwrap()).lines();
    let waiting = next_line(&mut lines).await;
    assert!(
        waiting.contains("1 of 2 updated replicas are available"),
        "{waiting}"
    );
    bind(
        &h,
        &pods[1],
        "beta",
        Some(running_status(true, "10.88.1.7", 0)),
    );
    let mut done = String::new();
    while let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("rollout status in time")
    {
        done.push_str(&line);
    }
    assert!(
        done.contains("deployment \"web\" successfully rolled out"),
        "{done}"
    );
    let d: Value =
        serde_json::from_str(&h.ok(&["get", "deploy", "web", "-o", "json"]).await).unwrap();
    assert_eq!(d["status"]["observedGeneration"], 1);
    assert_eq!(d["status"]["readyReplicas"], 2);
    assert_eq!(
        d["status"]["conditions"][1]["reason"],
        "NewReplicaSetAvailable"
    );

    // describe deploy reads the ReplicaSets; describe pod reads events.
    let describe = squeeze(&h.ok(&["describe", "deploy", "web"]).await);
    for needle in [
        "Replicas: 2 desired | 2 updated | 2 total | 2 available | 0 unavailable",
        "NewReplicaSet: web-5d4f8 (2/2 replicas created)",
        "StrategyType: RollingUpdate",
        "Progressing True NewReplicaSetAvailable",
    ] {
        assert!(
            describe.contains(needle),
            "describe deploy lacks {needle:?}:\n{describe}"
        );
    }
    let (_, pulled) = shoal::model::workload::new_event(
        &shoal::model::workload::InvolvedObject {
            api_version: "v1".into(),
            kind: "Pod".into(),
            namespace: "default".into(),
            name: pods[0].clone(),
            uid: format!("uid-{}", pods[0]),
        },
        shoal::model::workload::EventType::Normal,
        shoal::model::workload::EventReason::Started,
        "Started container main",
        "kubelet",
        "alpha",
        Utc::now() - chrono::Duration::seconds(20),
    );
    let (_, other) = shoal::model::workload::new_event(
        &shoal::model::workload::InvolvedObject {
            api_version: "v1".into(),
            kind: "Pod".into(),
            namespace: "default".into(),
            name: pods[1].clone(),
            uid: format!("uid-{}", pods[1]),
        },
        shoal::model::workload::EventType::Warning,
        shoal::model::workload::EventReason::BackOff,
        "Back-off restarting failed container main",
        "kubelet",
        "beta",
        Utc::now() - chrono::Duration::seconds(5),
    );
    h.backend.events.lock().unwrap().extend([pulled, other]);
    let describe = squeeze(&h.ok(&["describe", "pod", &pods[0]]).await);
    for needle in [
        "Node: alpha/10.77.0.2",
        "Status: Running",
        "IP: 10.88.0.5",
        "Controlled By: ReplicaSet/web-5d4f8",
        "Ready True",
        "Normal Started",
        "kubelet Started container main",
    ] {
        assert!(
            describe.contains(needle),
            "describe pod lacks {needle:?}:\n{describe}"
        );
    }
    assert!(!describe.contains("Back-off"), "{describe}");
    let events = h.ok(&["get", "events"]).await;
    column_positions(
        events.lines().next().unwrap(),
        &["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
    );
    let warning = events
        .lines()
        .find(|l| l.contains("BackOff"))
        .unwrap_or_else(|| panic!("no BackOff event in:\n{events}"));
    assert!(
        warning.split_whitespace().next().unwrap().ends_with('s'),
        "{warning}"
    );
    assert!(
        warning.contains("Warning")
            && warning.contains("BackOff")
            && warning.contains(&format!("pod/{}", pods[1])),
        "{events}"
    );
    let only = h
        .ok(&[
            "get",
            "events",
            "--field-selector",
            "type=Warning",
            "-o",
            "name",
        ])
        .await;
    assert_eq!(only.lines().count(), 1, "{only}");
    let for_pod = h
        .ok(&["events", "--for", &format!("pod/{}", pods[1])])
        .await;
    assert!(
        for_pod.contains("BackOff") && !for_pod.contains("Started container"),
        "{for_pod}"
    );

    // A second apply of an edited file: a strategic merge patch (containers by name, env by
    // name); the generation moves on.
    let file = h.write("deploy.yaml", DEPLOY_V2);
    assert!(h
        .ok(&["apply", "-f", &file])
        .await
        .contains("deployment.apps/web configured"));
    let d: Value =
        serde_json::from_str(&h.ok(&["get", "deploy", "web", "-o", "json"]).await).unwrap();
    assert_eq!(d["metadata"]["generation"], 2);
    let containers = &d["spec"]["template"]["spec"]["containers"];
    assert_eq!(containers[0]["image"], "shoal.test/busybox:2");
    assert_eq!(
        containers[0]["env"],
        json!([{"name": "COLOR", "value": "green"}])
    );
    assert_eq!(containers[1]["name"], "side");
    assert_eq!(containers[1]["imagePullPolicy"], "IfNotPresent");
    // The template changed: no ReplicaSet for it yet, so the rollout is not observed.
    assert_eq!(d["status"]["observedGeneration"], 1);
    assert!(h
        .ok(&["apply", "-f", &file])
        .await
        .contains("deployment.apps/web unchanged"));

    // scale: the autoscaling/v1 Scale subresource.
    assert!(h
        .ok(&["scale", "deploy/web", "--replicas=5"])
        .await
        .contains("deployment.apps/web scaled"));
    assert_eq!(
        h.backend.get("deployments.apps", "web").unwrap()["spec"]["replicas"],
        5
    );
    assert!(h
        .ok(&["scale", "rs/web-5d4f8", "--replicas=0"])
        .await
        .contains("replicaset.apps/web-5d4f8 scaled"));
    assert_eq!(
        h.backend.get("replicasets.apps", "web-5d4f8").unwrap()["spec"]["replicas"],
        0
    );
    let current = h
        .ok(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ])
        .await;
    assert!(h
        .ok(&[
            "scale",
            "deploy/web",
            "--replicas=3",
            "--resource-version",
            &current
        ])
        .await
        .contains("scaled"));
    let stderr = h
        .fails(&[
            "scale",
            "deploy/web",
            "--replicas=4",
            "--current-replicas=9",
        ])
        .await;
    assert!(
        stderr.contains("Expected replicas to be 9, was 3"),
        "{stderr}"
    );

    // delete -f removes the Deployment (the controllers collect the rest).
    assert!(h
        .ok(&["delete", "-f", &file])
        .await
        .contains("deployment.apps \"web\" deleted"));
    assert!(h.backend.get("deployments.apps", "web").is_none());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_bare_pods_and_logs() {
    let h = Harness::start().await;
    assert!(h
        .ok(&[
            "run",
            "bare",
            "--image=shoal.test/busybox:1",
            "--",
            "sleep",
            "3600"
        ])
        .await
        .contains("pod/bare created"));
    let pod: Value =
        serde_json::from_str(&h.ok(&["get", "pod", "bare", "-o", "json"]).await).unwrap();
    assert_eq!(
        pod["spec"]["containers"][0]["args"],
        json!(["sleep", "3600"])
    );
    assert_eq!(pod["spec"]["restartPolicy"], "Always");
    assert_eq!(pod["spec"]["terminationGracePeriodSeconds"], 30);
    assert_eq!(pod["status"]["phase"], "Pending");
    assert_eq!(pod["status"]["qosClass"], "BestEffort");
    // Unschedulable: the leader's scheduling record shows as PodScheduled=False.
    let uid = pod["metadata"]["uid"].as_str().unwrap().to_string();
    h.backend.with_view(|v| {
        v.scheduling.insert(
            ("default".into(), "bare".into()),
            vec![SchedulingRecord {
                pod_uid: uid.clone(),
                reason: "Unschedulable".into(),
                message: "0/2 nodes are available: 2 Insufficient cpu.".into(),
                at: at("2024-05-01T10:00:00Z"),
            }],
        );
    });
    let describe = squeeze(&h.ok(&["describe", "pod", "bare"]).await);
    assert!(describe.contains("PodScheduled False"), "{describe}");
    let line = row(&h.ok(&["get", "pods"]).await, "bare").to_string();
    assert!(line.contains("0/1") && line.contains("Pending"), "{line}");

    // A pod applied from a file, with two containers; logs need -c (kubectl picks the first
    // and says so; the raw API answers 400 naming the choices).
    let file = h.write(
        "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: two\nspec:\n  restartPolicy: Never\n  containers:\n  - name: a\n    image: shoal.test/busybox:1\n  - name: b\n    image: shoal.test/busybox:1\n",
    );
    assert!(h
        .ok(&["apply", "-f", &file])
        .await
        .contains("pod/two created"));
    // Pod specs are immutable but for images.
    let edited = h.write(
        "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: two\nspec:\n  restartPolicy: Never\n  containers:\n  - name: a\n    image: shoal.test/busybox:1\n    command: [sh]\n  - name: b\n    image: shoal.test/busybox:1\n",
    );
    let stderr = h.fails(&["apply", "-f", &edited]).await;
    assert!(
        stderr.contains("spec: Forbidden: pod updates may not change fields other than"),
        "{stderr}"
    );
    *h.backend.log_chunks.lock().unwrap() = vec!["line one\n".into(), "line two\n".into()];
    let logs = h.ok(&["logs", "two", "-c", "b"]).await;
    assert_eq!(logs, "line one\nline two\n");
    let (code, status) = status_of(
        h.req(
            reqwest::Method::GET,
            "/api/v1/namespaces/default/pods/two/log",
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(code, 400);
    assert_eq!(
        status["message"],
        "a container name must be specified for pod two, choose one of: [a b]"
    );
    let logs = h
        .ok(&["logs", "bare", "--previous", "--tail=5", "--timestamps"])
        .await;
    assert_eq!(logs, "line one\nline two\n");
    let last = h
        .backend
        .log_requests
        .lock()
        .unwrap()
        .last()
        .cloned()
        .unwrap();
    assert_eq!(
        last,
        LogRequest {
            namespace: "default".into(),
            pod: "bare".into(),
            container: Some("bare".into()),
            follow: false,
            previous: true,
            timestamps: true,
            tail_lines: Some(5),
            since_seconds: None,
            since_time: None,
            limit_bytes: None,
        }
    );
    // -f ends when the stream ends.
    let logs = h.ok(&["logs", "-f", "bare", "--since=10s"]).await;
    assert_eq!(logs, "line one\nline two\n");
    let last = h
        .backend
        .log_requests
        .lock()
        .unwrap()
        .last()
        .cloned()
        .unwrap();
    assert!(last.follow && last.since_seconds == Some(10), "{last:?}");
    let stderr = h.fails(&["logs", "nope"]).await;
    assert!(stderr.contains("pods \"nope\" not found"), "{stderr}");

    assert!(h
        .ok(&["delete", "pod", "bare", "--wait"])
        .await
        .contains("pod \"bare\" deleted"));
    assert!(h.ok(&["get", "pods", "-o", "name"]).await.trim() == "pod/two");
    h.stop().await;
}

fn bad_deploy(edit: &str) -> String {
    match edit {
        "missing-image" => DEPLOY_V1.replace("        image: shoal.test/busybox:1\n", ""),
        "bad-container-name" => DEPLOY_V1.replace("- name: main", "- name: Main_1"),
        "bad-name" => DEPLOY_V1.replace("  name: web\n  labels", "  name: Web!\n  labels"),
        "negative-replicas" => DEPLOY_V1.replace("replicas: 2", "replicas: -1"),
        "unknown-field" => DEPLOY_V1.replace("        image: shoal", "        imagee: shoal"),
        "selector-mismatch" => DEPLOY_V1.replace(
            "    matchLabels:\n      app: web",
            "    matchLabels:\n      app: api",
        ),
        "port" => DEPLOY_V1.replace("containerPort: 8080", "containerPort: 70000"),
        "quantity" => DEPLOY_V1.replace("memory: 32Mi", "memory: lots"),
        "restart-policy" => DEPLOY_V1.replace(
            "      containers:\n",
            "      restartPolicy: Never\n      containers:\n",
        ),
        "type" => DEPLOY_V1.replace("replicas: 2", "replicas: two"),
        "pull-policy" => DEPLOY_V1.replace(
            "        image: shoal.test/busybox:1\n",
            "        image: shoal.test/busybox:1\n        imagePullPolicy: Sometimes\n",
        ),
        "pull-secret" => DEPLOY_V1.replace(
            "      containers:\n",
            "      imagePullSecrets:\n      - {}\n      containers:\n",
        ),
        other => panic!("no edit {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_rejects_bad_workloads_naming_the_field() {
    let h = Harness::start().await;
    let cases = [
        ("missing-image", "spec.template.spec.containers[0].image: Required value"),
        ("bad-container-name", "spec.template.spec.containers[0].name: Invalid value: \"Main_1\""),
        ("bad-name", "metadata.name: Invalid value: \"Web!\""),
        ("negative-replicas", "The Deployment \"web\" is invalid: spec.replicas: Invalid value: -1: must be greater than or equal to 0"),
        ("unknown-field", "strict decoding error: unknown field \"spec.template.spec.containers[0].imagee\""),
        ("selector-mismatch", "spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"web\"}: `selector` does not match template `labels`"),
        ("port", "spec.template.spec.containers[0].ports[0].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive"),
        ("quantity", "spec.template.spec.containers[0].resources.requests[memory]: Invalid value: \"lots\""),
        ("restart-policy", "spec.template.spec.restartPolicy: Unsupported value: \"Never\": supported values: \"Always\""),
        ("type", "spec.replicas: invalid type: string \"two\""),
        ("pull-policy", "spec.template.spec.containers[0].imagePullPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"IfNotPresent\", \"Never\""),
        ("pull-secret", "spec.template.spec.imagePullSecrets[0].name: Required value"),
    ];
    for (edit, want) in cases {
        let file = h.write(&format!("{edit}.yaml"), &bad_deploy(edit));
        let stderr = h.fails(&["apply", "-f", &file]).await;
        assert!(stderr.contains(want), "{edit}: {stderr}");
    }
    assert!(h.backend.list_objects("deployments.apps", None).is_empty());

    // The raw Status names the field in details.causes, kind and group apart.
    let response = h
        .req(
            reqwest::Method::POST,
            "/apis/apps/v1/namespaces/default/deployments",
        )
        .header("content-type", "application/yaml")
        .body(bad_deploy("negative-replicas"))
        .send()
        .await
        .unwrap();
    let (code, status) = status_of(response).await;
    assert_eq!(code, 422);
    assert_eq!(
        status["message"],
        "Deployment.apps \"web\" is invalid: spec.replicas: Invalid value: -1: must be greater than or equal to 0"
    );
    assert_eq!(status["details"]["kind"], "Deployment");
    assert_eq!(status["details"]["group"], "apps");
    assert_eq!(status["details"]["causes"][0]["field"], "spec.replicas");

    // Status set by a user is dropped; scale refuses negative replicas.
    let mut with_status: Value = serde_yaml::from_str(DEPLOY_V1).unwrap();
    with_status["status"] = json!({"replicas": 7, "readyReplicas": 7});
    let response = h
        .req(
            reqwest::Method::POST,
            "/apis/apps/v1/namespaces/default/deployments",
        )
        .json(&with_status)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    assert!(h
        .backend
        .get("deployments.apps", "web")
        .unwrap()
        .get("status")
        .is_none());
    let response = h
        .req(
            reqwest::Method::PATCH,
            "/apis/apps/v1/namespaces/default/deployments/web/scale",
        )
        .header("content-type", "application/merge-patch+json")
        .body(r#"{"spec":{"replicas":-3}}"#)
        .send()
        .await
        .unwrap();
    let (code, status) = status_of(response).await;
    assert_eq!(code, 422, "{status}");
    assert_eq!(status["details"]["causes"][0]["field"], "spec.replicas");
    let stderr = h.fails(&["run", "Bad_Pod", "--image=x"]).await;
    assert!(stderr.contains("metadata.name: Invalid value"), "{stderr}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn image_routes_stream_uploads_with_their_own_limit() {
    let uploads = tempfile::tempdir().unwrap();
    let config = ApiConfig {
        max_body_bytes: 1024,
        max_image_bytes: 256 * 1024,
        ..ApiConfig::default()
    };
    let h = Harness::start_full(config, Some(uploads.path().to_path_buf())).await;
    // Larger than the API body limit, within the image limit.
    let archive = vec![7u8; 100 * 1024];
    let response = h
        .req(reqwest::Method::POST, "/shoal/v1/images/import")
        .header("content-type", "application/x-tar")
        .body(archive.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let images: Vec<ImageSummary> = response.json().await.unwrap();
    assert_eq!(images[0].reference, "shoal.test/busybox:1");
    assert_eq!(images[0].size, archive.len() as u64);
    let imported = h.backend.imported.lock().unwrap().clone();
    assert_eq!(imported.len(), 1);
    assert!(imported[0].0.starts_with(uploads.path()));
    assert!(
        !imported[0].0.exists(),
        "the upload is deleted after the import"
    );
    // Too large (declared, and streamed without a length): 413, nothing left behind.
    let response = h
        .req(reqwest::Method::POST, "/shoal/v1/images/import")
        .header("content-type", "application/x-tar")
        .body(vec![0u8; 300 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..40).map(|_| Ok(vec![1u8; 8192])).collect();
    let response = h
        .req(reqwest::Method::POST, "/shoal/v1/images/import")
        .header("content-type", "application/x-tar")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await;
    if let Ok(response) = response {
        assert_eq!(response.status().as_u16(), 413);
    }
    assert_eq!(std::fs::read_dir(uploads.path()).unwrap().count(), 0);
    assert_eq!(h.backend.imported.lock().unwrap().len(), 1);
    let response = h
        .req(reqwest::Method::POST, "/shoal/v1/images/import")
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 415);
    let listed: Vec<ImageSummary> = h
        .req(reqwest::Method::GET, "/shoal/v1/images")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed[0].size, 42);
    let unauthenticated = h
        .client()
        .get(format!("{}/shoal/v1/images", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status().as_u16(), 401);
    h.stop().await;
}

const SERVICE_WEB: &str = "apiVersion: v1
kind: Service
metadata:
  name: web
  labels:
    tier: LABEL
spec:
  type: NodePort
  selector:
    app: web
  ports:
  - name: http
    port: 80
    targetPort: 8080
    nodePort: 30080
";

/// A bare pod labelled `app: web`, bound to `alpha` and running with `ip`.
fn web_pod(h: &Harness, name: &str, ip: &str, ready: bool) {
    h.backend.put(
        "pods",
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                         "resourceVersion": "1", "creationTimestamp": "2024-05-01T10:00:00Z",
                         "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "main", "image": "shoal.test/busybox:1",
                                     "ports": [{"name": "http", "containerPort": 8080}]}]},
        }),
    );
    bind(h, name, "alpha", Some(running_status(ready, ip, 0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_services_and_endpoints() {
    let h = Harness::start().await;
    let resources = h.ok(&["api-resources"]).await;
    for (name, short, kind) in [
        ("services", "svc", "Service"),
        ("endpoints", "ep", "Endpoints"),
    ] {
        let line = row(&resources, &format!("{name} "));
        assert!(line.contains(short) && line.contains(kind), "{line}");
    }
    assert!(
        row(&resources, "endpointslices ").contains("discovery.k8s.io/v1"),
        "{resources}"
    );

    // Nothing selected yet: the Endpoints exist without addresses, the slice is empty.
    let file = h.write("svc.yaml", &SERVICE_WEB.replace("LABEL", "one"));
    assert!(h
        .ok(&["apply", "-f", &file])
        .await
        .contains("service/web created"));
    let svc: Value =
        serde_json::from_str(&h.ok(&["get", "svc", "web", "-o", "json"]).await).unwrap();
    let cluster_ip = svc["spec"]["clusterIP"].as_str().unwrap().to_string();
    assert!(cluster_ip.starts_with("10."), "{svc}");
    let ip: std::net::Ipv4Addr = cluster_ip.parse().unwrap();
    assert!(
        "10.96.0.0/12"
            .parse::<ipnet::Ipv4Net>()
            .unwrap()
            .contains(&ip),
        "{ip}"
    );
    assert_eq!(svc["spec"]["clusterIPs"], json!([cluster_ip]));
    assert_eq!(svc["spec"]["ports"][0]["protocol"], "TCP");
    assert_eq!(svc["spec"]["externalTrafficPolicy"], "Cluster");
    assert_eq!(svc["spec"]["sessionAffinity"], "None");
    let ep = h.ok(&["get", "endpoints", "web"]).await;
    column_positions(ep.lines().next().unwrap(), &["NAME", "ENDPOINTS", "AGE"]);
    assert!(row(&ep, "web ").contains("<none>"), "{ep}");

    // Pods with an IP: ready ones are addresses, not-ready ones notReadyAddresses.
    web_pod(&h, "web-a", "10.244.3.5", true);
    web_pod(&h, "web-b", "10.244.3.6", false);
    let listed = h.ok(&["get", "svc,endpoints"]).await;
    let svc_row = squeeze(row(&listed, "service/web "));
    assert!(
        svc_row.starts_with(&format!(
            "service/web NodePort {cluster_ip} <none> 80:30080/TCP "
        )),
        "{listed}"
    );
    assert!(
        squeeze(row(&listed, "endpoints/web ")).starts_with("endpoints/web 10.244.3.5:8080 "),
        "{listed}"
    );
    let ep: Value =
        serde_json::from_str(&h.ok(&["get", "endpoints", "web", "-o", "json"]).await).unwrap();
    let subset = &ep["subsets"][0];
    assert_eq!(subset["addresses"][0]["ip"], "10.244.3.5");
    assert_eq!(subset["addresses"][0]["nodeName"], "alpha");
    assert_eq!(subset["addresses"][0]["targetRef"]["name"], "web-a");
    assert_eq!(subset["notReadyAddresses"][0]["ip"], "10.244.3.6");
    assert_eq!(
        subset["ports"],
        json!([{"name": "http", "port": 8080, "protocol": "TCP"}])
    );
    let slices = h
        .ok(&[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
        ])
        .await;
    column_positions(
        slices.lines().next().unwrap(),
        &["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"],
    );
    assert!(
        squeeze(row(&slices, "web-")).contains("IPv4 8080 10.244.3.5,10.244.3.6"),
        "{slices}"
    );
    let describe = squeeze(&h.ok(&["describe", "svc", "web"]).await);
    for line in [
        "Type: NodePort".to_string(),
        format!("IP: {cluster_ip}"),
        "Port: http 80/TCP".to_string(),
        "TargetPort: 8080/TCP".to_string(),
        "NodePort: http 30080/TCP".to_string(),
        "Endpoints: 10.244.3.5:8080".to_string(),
        "Selector: app=web".to_string(),
    ] {
        assert!(
            describe.contains(&line),
            "{line:?} missing from:\n{describe}"
        );
    }

    // A watch sees web-b become ready: the computed object's resourceVersion covers the pod's
    // status, so the change shows even if it lands before the watch (from the list's
    // resourceVersion) starts.
    let before: Value =
        serde_json::from_str(&h.ok(&["get", "endpoints", "web", "-o", "json"]).await).unwrap();
    let mut child = h
        .command(&["get", "endpoints", "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(next_line(&mut lines).await.starts_with("NAME"));
    assert!(next_line(&mut lines).await.contains("10.244.3.5:8080"));
    // Ready since a moment later than anything the list saw (status times have second
    // precision, and the served resourceVersion covers the latest of them).
    let mut ready = running_status(true, "10.244.3.6", 0);
    ready["conditions"][1]["lastTransitionTime"] = json!((Utc::now()
        + chrono::Duration::seconds(5))
    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    bind(&h, "web-b", "alpha", Some(ready));
    // (A row of the unchanged object may come first: a watch from the list's version also
    // reports objects whose version covers the same second.)
    loop {
        let update = next_line(&mut lines).await;
        if update.contains("10.244.3.5:8080,10.244.3.6:8080") {
            break;
        }
        assert!(
            update.starts_with("web ") && update.contains("10.244.3.5:8080"),
            "{update}"
        );
    }
    child.kill().await.unwrap();
    let after: Value =
        serde_json::from_str(&h.ok(&["get", "endpoints", "web", "-o", "json"]).await).unwrap();
    let rv = |v: &Value| {
        v["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    assert!(rv(&after) > rv(&before), "{before} {after}");
    bind(
        &h,
        "web-b",
        "alpha",
        Some(running_status(false, "10.244.3.6", 0)),
    );

    // Endpoints and slices are computed: writes are refused.
    let stderr = h.fails(&["delete", "endpoints", "web"]).await;
    assert!(stderr.contains("MethodNotAllowed"), "{stderr}");

    // Applying again without a nodePort keeps the allocated ClusterIP and NodePort.
    let again = SERVICE_WEB
        .replace("LABEL", "two")
        .replace("    nodePort: 30080\n", "");
    let file = h.write("svc2.yaml", &again);
    assert!(h
        .ok(&["apply", "-f", &file])
        .await
        .contains("service/web configured"));
    let svc: Value =
        serde_json::from_str(&h.ok(&["get", "svc", "web", "-o", "json"]).await).unwrap();
    assert_eq!(svc["spec"]["clusterIP"], cluster_ip.as_str());
    assert_eq!(svc["spec"]["ports"][0]["nodePort"], 30080);
    assert_eq!(svc["metadata"]["labels"]["tier"], "two");

    // A taken nodePort, a port out of range, a clusterIP outside the range: 422s.
    let taken = SERVICE_WEB
        .replace("name: web\n", "name: other\n")
        .replace("LABEL", "x");
    let file = h.write("taken.yaml", &taken);
    let stderr = h.fails(&["apply", "-f", &file]).await;
    assert!(
        stderr.contains(
            "spec.ports[0].nodePort: Invalid value: 30080: provided port is already allocated"
        ),
        "{stderr}"
    );
    let file = h.write("range.yaml", &taken.replace("port: 80\n", "port: 70000\n"));
    let stderr = h.fails(&["apply", "-f", &file]).await;
    assert!(
        stderr.contains(
            "spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive"
        ),
        "{stderr}"
    );
    let file = h.write(
        "ip.yaml",
        &taken.replace("nodePort: 30080", "nodePort: 30081").replace(
            "type: NodePort\n",
            "type: NodePort\n  clusterIP: 192.168.0.1\n",
        ),
    );
    let stderr = h.fails(&["apply", "-f", &file]).await;
    assert!(
        stderr.contains("The range of valid IPs is 10.96.0.0/12"),
        "{stderr}"
    );
    let file = h.write("typo.yaml", &taken.replace("selector:", "selectorr:"));
    let stderr = h.fails(&["apply", "-f", &file]).await;
    assert!(stderr.contains("selectorr"), "{stderr}");
    assert!(h
        .fails(&["get", "svc", "other"])
        .await
        .contains("not found"));

    // kubectl's generators: create service (typed client) and expose.
    assert!(h
        .ok(&["create", "service", "clusterip", "lonely", "--tcp=80:8080"])
        .await
        .contains("service/lonely created"));
    let ep = h.ok(&["get", "endpoints", "lonely"]).await;
    assert!(row(&ep, "lonely ").contains("<none>"), "{ep}");
    assert!(h
        .ok(&["create", "service", "nodeport", "np", "--tcp=8443:443"])
        .await
        .contains("service/np created"));
    let np: Value = serde_json::from_str(&h.ok(&["get", "svc", "np", "-o", "json"]).await).unwrap();
    let node_port = np["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
    assert!((30000..=32767).contains(&node_port) && node_port != 30080);
    assert_ne!(np["spec"]["clusterIP"], cluster_ip.as_str());
    let file = h.write("deploy.yaml", DEPLOY_V1);
    h.ok(&["apply", "-f", &file]).await;
    assert!(h
        .ok(&[
            "expose",
            "deployment/web",
            "--name",
            "web-exposed",
            "--port",
            "80",
            "--target-port",
            "8080",
            "--type",
            "NodePort",
        ])
        .await
        .contains("service/web-exposed exposed"));
    let exposed: Value =
        serde_json::from_str(&h.ok(&["get", "svc", "web-exposed", "-o", "json"]).await).unwrap();
    assert_eq!(exposed["spec"]["selector"], json!({"app": "web"}));
    assert_eq!(exposed["spec"]["type"], "NodePort");
    let ep = h.ok(&["get", "ep", "web-exposed"]).await;
    assert!(row(&ep, "web-exposed ").contains("10.244.3.5:8080"), "{ep}");
    h.ok(&["delete", "svc", "web"]).await;
    assert!(h.fails(&["get", "ep", "web"]).await.contains("not found"));
    h.stop().await;
}

/// Plays the Deployment controller for `kubectl rollout`: a ReplicaSet of `image` with a
/// revision (and change cause), as `sched::deployment` writes them.
fn rollout_rs(
    h: &Harness,
    hash: &str,
    image: &str,
    revision: u32,
    cause: Option<&str>,
    replicas: u32,
) {
    let deploy = h.backend.get("deployments.apps", "web").unwrap();
    let mut template = deploy["spec"]["template"].clone();
    template["spec"]["containers"][0]["image"] = json!(image);
    template["metadata"]["labels"]["pod-template-hash"] = json!(hash);
    let mut annotations = json!({"deployment.kubernetes.io/revision": revision.to_string()});
    if let Some(c) = cause {
        annotations["kubernetes.io/change-cause"] = json!(c);
    }
    let name = format!("web-{hash}");
    h.backend.put(
        "replicasets.apps",
        json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "generation": 1,
                         "resourceVersion": "1", "creationTimestamp": "2024-05-01T10:00:00Z",
                         "labels": {"app": "web", "pod-template-hash": hash},
                         "annotations": annotations,
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web",
                                              "uid": deploy["metadata"]["uid"], "controller": true}]},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web", "pod-template-hash": hash}},
                     "template": template},
        }),
    );
}

/// `kubectl rollout history / undo / restart / pause / resume` against the API: history and a
/// revision's template from the ReplicaSets, undo's JSON patch (replacing `/spec/template` and
/// `/metadata/annotations` of a Deployment stored without annotations), restart's strategic
/// merge patch, pause and resume, and undo refused while paused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_rollout_history_undo_restart_pause() {
    let h = Harness::start().await;
    let file = h.write("deploy.yaml", DEPLOY_V1);
    // `create` (not apply): no last-applied annotation, so the Deployment has no annotations.
    h.ok(&["create", "-f", &file]).await;
    let stored = h.backend.get("deployments.apps", "web").unwrap();
    assert!(stored["metadata"]["annotations"].is_null());
    rollout_rs(&h, "aaaa1", "shoal.test/busybox:1", 1, Some("first"), 0);
    // Revision 2 is the Deployment's current template (image as in DEPLOY_V1 would be
    // revision 1, so make the Deployment point at image B).
    h.ok(&[
        "set",
        "image",
        "deployment/web",
        "main=shoal.test/busybox:2",
    ])
    .await;
    rollout_rs(&h, "bbbb2", "shoal.test/busybox:2", 2, None, 2);

    let d: Value =
        serde_json::from_str(&h.ok(&["get", "deploy", "web", "-o", "json"]).await).unwrap();
    assert_eq!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "2"
    );

    let history = squeeze(&h.ok(&["rollout", "history", "deployment/web"]).await);
    assert!(
        history.contains("REVISION CHANGE-CAUSE\n1 first\n2 <none>"),
        "{history}"
    );
    let one = h
        .ok(&["rollout", "history", "deployment/web", "--revision=1"])
        .await;
    assert!(one.contains("with revision #1"), "{one}");
    assert!(one.contains("shoal.test/busybox:1"), "{one}");
    let missing = h
        .fails(&["rollout", "history", "deployment/web", "--revision=7"])
        .await;
    assert!(
        missing.contains("unable to find the specified revision"),
        "{missing}"
    );

    // Undo: back to revision 1's template, its change cause copied to the Deployment.
    let out = h.ok(&["rollout", "undo", "deployment/web"]).await;
    assert!(out.contains("rolled back"), "{out}");
    let stored = h.backend.get("deployments.apps", "web").unwrap();
    assert_eq!(
        stored["spec"]["template"]["spec"]["containers"][0]["image"],
        "shoal.test/busybox:1"
    );
    assert!(stored["spec"]["template"]["metadata"]["labels"]
        .get("pod-template-hash")
        .is_none());
    assert_eq!(
        stored["metadata"]["annotations"]["kubernetes.io/change-cause"],
        "first"
    );
    assert_eq!(stored["metadata"]["generation"], 3);
    // --to-revision=2, and a revision that does not exist.
    h.ok(&["rollout", "undo", "deployment/web", "--to-revision=2"])
        .await;
    let stored = h.backend.get("deployments.apps", "web").unwrap();
    assert_eq!(
        stored["spec"]["template"]["spec"]["containers"][0]["image"],
        "shoal.test/busybox:2"
    );
    let err = h
        .fails(&["rollout", "undo", "deployment/web", "--to-revision=9"])
        .await;
    assert!(err.contains("unable to find specified revision 9"), "{err}");

    // Restart: a template annotation.
    h.ok(&["rollout", "restart", "deployment/web"]).await;
    let stored = h.backend.get("deployments.apps", "web").unwrap();
    assert!(stored["spec"]["template"]["metadata"]["annotations"]
        ["kubectl.kubernetes.io/restartedAt"]
        .is_string());

    // Pause: undo is refused, resume clears it.
    h.ok(&["rollout", "pause", "deployment/web"]).await;
    assert_eq!(
        h.backend.get("deployments.apps", "web").unwrap()["spec"]["paused"],
        true
    );
    let d: Value =
        serde_json::from_str(&h.ok(&["get", "deploy", "web", "-o", "json"]).await).unwrap();
    assert_eq!(d["status"]["conditions"][1]["reason"], "DeploymentPaused");
    let err = h.fails(&["rollout", "undo", "deployment/web"]).await;
    assert!(err.contains("cannot rollback a paused deployment"), "{err}");
    h.ok(&["rollout", "resume", "deployment/web"]).await;
    assert!(
        h.backend.get("deployments.apps", "web").unwrap()["spec"]["paused"]
            .as_bool()
            .is_none_or(|p| !p)
    );

    // A JSON patch replacing a path that does not exist is still a 400.
    let response = h
        .req(
            reqwest::Method::PATCH,
            "/apis/apps/v1/namespaces/default/deployments/web",
        )
        .header("content-type", "application/json-patch+json")
        .body(r#"[{"op":"replace","path":"/spec/nope/x","value":1}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    h.stop().await;
}

/// Lines of a watch response, parsed.
fn watch_events(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect()
}

fn event_summary(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_string(),
                e["object"]["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

/// What a typed client library (client-go style, decoding replies strictly) relies on:
/// DELETE answers the object for Pods and Services and a Status for others, POST of a Pod
/// answers its status, `deletecollection` with selectors, `limit`/`continue` paging over a
/// consistent snapshot, `resourceVersionMatch`, watches that replay every change since a
/// list's resourceVersion (410 Gone when it is too old or another node's), bookmarks, and
/// watch-list (`sendInitialEvents`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn typed_client_replies_paging_and_watch_replay() {
    let config = ApiConfig {
        watch_window: 8,
        bookmark_interval: Duration::from_secs(1),
        ..ApiConfig::default()
    };
    let h = Harness::start_with(config).await;
    let send = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut req = h.req(method, path);
        if let Some(body) = body {
            req = req
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        async move { status_of(req.send().await.unwrap()).await }
    };
    let cm = |name: &str, app: &str| {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": name, "labels": {"app": app}}, "data": {"k": "v"}})
    };
    const CMS: &str = "/api/v1/namespaces/default/configmaps";

    // POST of a Pod answers the pod with its (computed) status.
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "solo"},
                     "spec": {"containers": [{"name": "c", "image": "shoal.test/busybox:1"}]}});
    let (code, created) = send(
        reqwest::Method::POST,
        "/api/v1/namespaces/default/pods",
        Some(pod),
    )
    .await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["status"]["phase"], "Pending", "{created}");
    let pod_rv = created["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    // The reply's resourceVersion is what a GET serves, and works as a precondition.
    let (_, got) = send(
        reqwest::Method::GET,
        "/api/v1/namespaces/default/pods/solo",
        None,
    )
    .await;
    assert_eq!(got["metadata"]["resourceVersion"], pod_rv.as_str());
    // DELETE of a Pod answers the Pod.
    let (code, deleted) = send(
        reqwest::Method::DELETE,
        "/api/v1/namespaces/default/pods/solo",
        None,
    )
    .await;
    assert_eq!(code, 200, "{deleted}");
    assert_eq!(deleted["kind"], "Pod", "{deleted}");
    assert_eq!(deleted["metadata"]["name"], "solo");
    // ... and of a Service the Service.
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
                     "spec": {"ports": [{"port": 80}]}});
    let (code, _) = send(
        reqwest::Method::POST,
        "/api/v1/namespaces/default/services",
        Some(svc),
    )
    .await;
    assert_eq!(code, 201);
    let (code, deleted) = send(
        reqwest::Method::DELETE,
        "/api/v1/namespaces/default/services/s",
        None,
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(deleted["kind"], "Service", "{deleted}");
    assert!(deleted["spec"]["clusterIP"].is_string(), "{deleted}");
    // Other kinds answer a success Status.
    send(reqwest::Method::POST, CMS, Some(cm("one", "x"))).await;
    let (code, status) = send(reqwest::Method::DELETE, &format!("{CMS}/one"), None).await;
    assert_eq!(code, 200);
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["status"], "Success");
    assert_eq!(status["details"]["name"], "one");

    // A list's resourceVersion, then changes: a watch from it replays each in order.
    let (_, list) = send(reqwest::Method::GET, CMS, None).await;
    let list_rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    send(reqwest::Method::POST, CMS, Some(cm("w", "x"))).await;
    let mut changed = cm("w", "x");
    changed["data"]["k"] = json!("v2");
    let (code, _) = send(reqwest::Method::PUT, &format!("{CMS}/w"), Some(changed)).await;
    assert_eq!(code, 200);
    send(reqwest::Method::DELETE, &format!("{CMS}/w"), None).await;
    let text = h
        .req(
            reqwest::Method::GET,
            &format!("{CMS}?watch=true&timeoutSeconds=1&resourceVersion={list_rv}"),
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events = watch_events(&text);
    assert_eq!(
        event_summary(&events),
        vec![
            ("ADDED".into(), "w".into()),
            ("MODIFIED".into(), "w".into()),
            ("DELETED".into(), "w".into())
        ],
        "{text}"
    );
    assert_eq!(events[1]["object"]["data"]["k"], "v2");
    // Every event carries its own, increasing resourceVersion; a watch resumed from the
    // middle replays the rest.
    let rvs: Vec<u64> = events
        .iter()
        .map(|e| {
            e["object"]["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(rvs.windows(2).all(|w| w[0] < w[1]), "{rvs:?}");
    let text = h
        .req(
            reqwest::Method::GET,
            &format!(
                "{CMS}?watch=true&timeoutSeconds=1&resourceVersion={}",
                rvs[0]
            ),
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        event_summary(&watch_events(&text)),
        vec![
            ("MODIFIED".into(), "w".into()),
            ("DELETED".into(), "w".into())
        ]
    );
    // A label-selected watch sees an object leave its selection as DELETED.
    let (_, list) = send(reqwest::Method::GET, CMS, None).await;
    let from = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    send(reqwest::Method::POST, CMS, Some(cm("moves", "x"))).await;
    send(
        reqwest::Method::PUT,
        &format!("{CMS}/moves"),
        Some(cm("moves", "y")),
    )
    .await;
    let text = h
        .req(
            reqwest::Method::GET,
            &format!(
                "{CMS}?watch=true&timeoutSeconds=1&labelSelector=app%3Dx&resourceVersion={from}"
            ),
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        event_summary(&watch_events(&text)),
        vec![
            ("ADDED".into(), "moves".into()),
            ("DELETED".into(), "moves".into())
        ]
    );
    send(reqwest::Method::DELETE, &format!("{CMS}/moves"), None).await;

    // A resourceVersion this node never handed out (another node's): 410 Expired, for
    // watches (an ERROR event) and lists.
    let foreign = "1234567";
    let text = h
        .req(
            reqwest::Method::GET,
            &format!("{CMS}?watch=true&resourceVersion={foreign}"),
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events = watch_events(&text);
    assert_eq!(events.len(), 1, "{text}");
    assert_eq!(events[0]["type"], "ERROR");
    assert_eq!(events[0]["object"]["code"], 410);
    assert_eq!(events[0]["object"]["reason"], "Expired");
    let (code, status) = send(
        reqwest::Method::GET,
        &format!("{CMS}?resourceVersion={foreign}&resourceVersionMatch=Exact"),
        None,
    )
    .await;
    assert_eq!((code, status["reason"].as_str()), (410, Some("Expired")));
    // The window is bounded: after more changes than it keeps, the old list's version is gone.
    for i in 0..10 {
        send(
            reqwest::Method::POST,
            CMS,
            Some(cm(&format!("churn-{i}"), "churn")),
        )
        .await;
    }
    let text = h
        .req(
            reqwest::Method::GET,
            &format!("{CMS}?watch=true&resourceVersion={list_rv}"),
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(watch_events(&text)[0]["object"]["code"], 410, "{text}");

    // deletecollection with a label selector answers the deleted objects.
    let (code, gone) = send(
        reqwest::Method::DELETE,
        &format!(
            "{CMS}?labelSelector=app%3Dchurn,app+notin+(z)&fieldSelector=metadata.name!%3Dchurn-0"
        ),
        None,
    )
    .await;
    assert_eq!(code, 200, "{gone}");
    assert_eq!(gone["kind"], "ConfigMapList");
    assert_eq!(gone["items"].as_array().unwrap().len(), 9);
    let (_, left) = send(reqwest::Method::GET, CMS, None).await;
    let names: Vec<&str> = left["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["churn-0"]);
    send(reqwest::Method::DELETE, &format!("{CMS}/churn-0"), None).await;

    // Paging: limit/continue over one consistent snapshot, even as objects change between
    // pages; an exact list at the first page's version sees that snapshot too.
    for name in ["p1", "p2", "p3", "p4", "p5"] {
        send(reqwest::Method::POST, CMS, Some(cm(name, "page"))).await;
    }
    let (code, page) = send(reqwest::Method::GET, &format!("{CMS}?limit=2"), None).await;
    assert_eq!(code, 200);
    let names = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&page), vec!["p1", "p2"]);
    assert_eq!(page["metadata"]["remainingItemCount"], 3);
    let snapshot_rv = page["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    send(reqwest::Method::DELETE, &format!("{CMS}/p4"), None).await;
    send(reqwest::Method::POST, CMS, Some(cm("p6", "page"))).await;
    let token = page["metadata"]["continue"].as_str().unwrap().to_string();
    let (_, page) = send(
        reqwest::Method::GET,
        &format!("{CMS}?limit=2&continue={token}"),
        None,
    )
    .await;
    assert_eq!(names(&page), vec!["p3", "p4"]);
    let token = page["metadata"]["continue"].as_str().unwrap().to_string();
    let (_, page) = send(
        reqwest::Method::GET,
        &format!("{CMS}?limit=2&continue={token}"),
        None,
    )
    .await;
    assert_eq!(names(&page), vec!["p5"]);
    assert!(page["metadata"]["continue"].is_null(), "{page}");
    let (_, exact) = send(
        reqwest::Method::GET,
        &format!("{CMS}?resourceVersion={snapshot_rv}&resourceVersionMatch=Exact"),
        None,
    )
    .await;
    assert_eq!(names(&exact), vec!["p1", "p2", "p3", "p4", "p5"]);
    let (_, now) = send(
        reqwest::Method::GET,
        &format!("{CMS}?resourceVersion={snapshot_rv}&resourceVersionMatch=NotOlderThan"),
        None,
    )
    .await;
    assert_eq!(names(&now), vec!["p1", "p2", "p3", "p5", "p6"]);
    let (code, _) = send(
        reqwest::Method::GET,
        &format!("{CMS}?resourceVersionMatch=Exact"),
        None,
    )
    .await;
    assert_eq!(code, 400);
    // kubectl pages with --chunk-size and gets everything.
    let out = h
        .ok(&["get", "configmaps", "--chunk-size=2", "-o", "name"])
        .await;
    assert_eq!(out.lines().count(), 5, "{out}");

    // Bookmarks: a watch with allowWatchBookmarks gets them while nothing changes, and one
    // before it times out, with a resourceVersion to resume from.
    let text = h
        .req(reqwest::Method::GET, &format!("{CMS}?watch=true&timeoutSeconds=3&allowWatchBookmarks=true&labelSelector=app%3Dnone"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events = watch_events(&text);
    assert!(
        !events.is_empty() && events.iter().all(|e| e["type"] == "BOOKMARK"),
        "{text}"
    );
    let bookmark_rv = events.last().unwrap()["object"]["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, _) = send(
        reqwest::Method::GET,
        &format!("{CMS}?resourceVersion={bookmark_rv}&resourceVersionMatch=Exact"),
        None,
    )
    .await;
    assert_eq!(code, 200);
    // Watch-list: the current objects as ADDED, then the initial-events-end bookmark.
    let text = h
        .req(reqwest::Method::GET, &format!("{CMS}?watch=true&timeoutSeconds=1&allowWatchBookmarks=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&labelSelector=app%3Dpage"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events = watch_events(&text);
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds[..6],
        ["ADDED", "ADDED", "ADDED", "ADDED", "ADDED", "BOOKMARK"],
        "{text}"
    );
    assert_eq!(
        events[5]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    let (code, _) = send(
        reqwest::Method::GET,
        &format!("{CMS}?watch=true&sendInitialEvents=true"),
        None,
    )
    .await;
    assert_eq!(code, 400);
    h.stop().await;
}

/// A pod that sets nothing: baseline allows it, restricted does not.
const PLAIN_POD: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: plain
spec:
  containers:
  - name: main
    image: shoal.test/busybox:1
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pod_security_levels_refuse_and_warn_through_kubectl() {
    let h = Harness::start().await;
    h.ok(&["create", "namespace", "locked"]).await;
    // Bad labels are refused, naming the label.
    let stderr = h
        .fails(&[
            "label",
            "namespace",
            "locked",
            "pod-security.kubernetes.io/enforce=strict",
        ])
        .await;
    assert!(
        stderr.contains(r#"metadata.labels[pod-security.kubernetes.io/enforce]: Invalid value: "strict": must be one of privileged, baseline, restricted"#),
        "{stderr}"
    );
    h.ok(&[
        "label",
        "namespace",
        "locked",
        "pod-security.kubernetes.io/enforce=baseline",
        "pod-security.kubernetes.io/warn=restricted",
        "pod-security.kubernetes.io/warn-version=v1.30",
    ])
    .await;

    // enforce: a privileged pod is refused with Kubernetes' message.
    let privileged = PLAIN_POD.replace(
        "    image: shoal.test/busybox:1\n",
        "    image: shoal.test/busybox:1\n    securityContext:\n      privileged: true\n",
    );
    let file = h.write("privileged.yaml", &privileged);
    let stderr = h.fails(&["-n", "locked", "apply", "-f", &file]).await;
    assert!(
        stderr.contains(r#"pods "plain" is forbidden: violates PodSecurity "baseline:latest": privileged (container "main" must not set securityContext.privileged=true)"#),
        "{stderr}"
    );
    assert!(h.backend.list_objects("pods", Some("locked")).is_empty());

    // warn: a baseline pod is created, and kubectl prints the restricted warning.
    let file = h.write("plain.yaml", PLAIN_POD);
    let out = h.kubectl(&["-n", "locked", "apply", "-f", &file]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("pod/plain created"), "{stdout}");
    assert!(
        stderr.contains(r#"Warning: would violate PodSecurity "restricted:v1.30": allowPrivilegeEscalation != false (container "main" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container "main" must set securityContext.capabilities.drop=["ALL"]), runAsNonRoot != true (pod or container "main" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container "main" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")"#),
        "{stderr}"
    );

    // A Deployment is never refused for its template: warnings for enforce and warn.
    let deploy = DEPLOY_V1.replace(
        "        image: shoal.test/busybox:1\n",
        "        image: shoal.test/busybox:1\n        securityContext:\n          privileged: true\n",
    );
    let file = h.write("deploy.yaml", &deploy);
    let out = h.kubectl(&["-n", "locked", "apply", "-f", &file]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(r#"Warning: would violate PodSecurity "baseline:latest": privileged (container "main" must not set securityContext.privileged=true)"#)
            && stderr.contains(r#"Warning: would violate PodSecurity "restricted:v1.30": privileged"#),
        "{stderr}"
    );

    // Where nothing is labelled, nothing is checked.
    let file = h.write("privileged.yaml", &privileged);
    h.ok(&["apply", "-f", &file]).await;
    h.stop().await;
}

/// The stored object of `resource` `name` in `default`, without what differs between two
/// creations of the same content (name, uid, times, versions, the labels a Job gets from
/// them, a Service's allocated addresses and ports).
fn stored_content(h: &Harness, resource: &str, name: &str) -> Value {
    let key = ObjectKey {
        resource: resource.into(),
        namespace: Some("default".into()),
        name: name.into(),
    };
    let mut object = h
        .backend
        .get_object(&key)
        .unwrap_or_else(|| panic!("{resource}/{name} is not stored"));
    fn mask_allocated(v: &mut Value) {
        match v {
            Value::Object(map) => {
                for (key, value) in map.iter_mut() {
                    let allocated = ["clusterIP", "clusterIPs", "nodePort"].contains(&key.as_str());
                    if key.ends_with("controller-uid") || key.ends_with("job-name") || allocated {
                        *value = json!("<allocated>");
                    } else {
                        mask_allocated(value);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(mask_allocated),
            _ => {}
        }
    }
    mask_allocated(&mut object);
    let meta = object["metadata"].as_object_mut().unwrap();
    // managedFields name the fields each side sent, so they differ as the contents may.
    for field in [
        "name",
        "uid",
        "creationTimestamp",
        "resourceVersion",
        "generation",
        "managedFields",
    ] {
        meta.remove(field);
    }
    object
}

/// Compares an object decoded from protobuf with the same object sent as JSON: equal, except
/// that protobuf carries every non-pointer Go field, so the protobuf side may hold a `0` or
/// `false` where JSON (Go's `omitempty`) has nothing, which Kubernetes reads as the same. JSON
/// `null`s are absent fields. Returns the differences that are not that.
fn proto_json_differences(proto: &Value, json: &Value, path: &str, out: &mut Vec<String>) {
    match (proto, json) {
        (Value::Object(p), Value::Object(j)) => {
            for (key, pv) in p {
                let at = format!("{path}.{key}");
                match j.get(key).filter(|v| !v.is_null()) {
                    Some(jv) => proto_json_differences(pv, jv, &at, out),
                    None if *pv == json!(0) || *pv == json!(false) || pv.is_null() => {}
                    None => out.push(format!("{at}: only in protobuf: {pv}")),
                }
            }
            for (key, jv) in j {
                if !jv.is_null() && !p.contains_key(key) {
                    out.push(format!("{path}.{key}: only in JSON: {jv}"));
                }
            }
        }
        (Value::Array(p), Value::Array(j)) if p.len() == j.len() => {
            for (i, (pv, jv)) in p.iter().zip(j).enumerate() {
                proto_json_differences(pv, jv, &format!("{path}[{i}]"), out);
            }
        }
        (p, j) if p == j => {}
        (p, j) => out.push(format!("{path}: {p} in protobuf, {j} in JSON")),
    }
}

/// kubectl's typed `create` verbs send protobuf (`application/vnd.kubernetes.protobuf`); each
/// object is stored as the same object sent as JSON (`--dry-run=client -o json`, then
/// `kubectl create -f`), so admission and validation see one content either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_typed_creates_in_protobuf_store_what_json_would() {
    let h = Harness::start().await;
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "deployments.apps",
            "web",
            &[
                "create",
                "deployment",
                "web",
                "--image=shoal.test/web:1",
                "--replicas=0",
                "--port=8080",
            ],
        ),
        (
            "jobs.batch",
            "once",
            &[
                "create",
                "job",
                "once",
                "--image=shoal.test/busybox:1",
                "--",
                "sh",
                "-c",
                "exit 0",
            ],
        ),
        (
            "cronjobs.batch",
            "tick",
            &[
                "create",
                "cronjob",
                "tick",
                "--image=shoal.test/busybox:1",
                "--schedule=*/5 * * * *",
                "--",
                "true",
            ],
        ),
        (
            "services",
            "front",
            &["create", "service", "nodeport", "front", "--tcp=80:8080"],
        ),
        (
            "poddisruptionbudgets.policy",
            "keep",
            &[
                "create",
                "pdb",
                "keep",
                "--selector=app=web",
                "--min-available=1",
            ],
        ),
        (
            "secrets",
            "creds",
            &[
                "create",
                "secret",
                "generic",
                "creds",
                "--from-literal=user=u",
                "--from-literal=empty=",
            ],
        ),
    ];
    for (resource, name, args) in cases {
        // Flags go before a command's `--`.
        let mut json_args = args.to_vec();
        json_args.splice(1..1, ["--dry-run=client", "-o", "json"]);
        let mut object: Value = serde_json::from_str(&h.ok(&json_args).await).unwrap();
        let json_name = format!("{name}-json");
        object["metadata"]["name"] = json!(json_name);
        let file = h.write(&format!("{name}.json"), &object.to_string());
        h.ok(&["create", "-f", &file]).await;

        // --dry-run=server decodes and checks the protobuf body and stores nothing.
        let mut dry = args.to_vec();
        dry.insert(1, "--dry-run=server");
        assert!(h.ok(&dry).await.contains("(server dry run)"), "{args:?}");
        let key = ObjectKey {
            resource: resource.to_string(),
            namespace: Some("default".into()),
            name: name.to_string(),
        };
        assert!(
            h.backend.get_object(&key).is_none(),
            "{args:?} --dry-run=server stored it"
        );

        assert!(h.ok(args).await.contains("created"), "{args:?}");
        let from_proto = stored_content(&h, resource, name);
        let from_json = stored_content(&h, resource, &json_name);
        let mut differences = Vec::new();
        proto_json_differences(&from_proto, &from_json, "", &mut differences);
        assert!(
            differences.is_empty(),
            "kubectl {args:?}: protobuf and JSON differ: {differences:#?}"
        );
    }
    let deployment = stored_content(&h, "deployments.apps", "web");
    assert_eq!(deployment["spec"]["replicas"], 0, "{deployment}");

    // A kind without a protobuf schema is a 415 naming it.
    let type_meta = [
        &[0x0a, 21][..],
        b"stable.example.com/v1",
        &[0x12, 7],
        b"CronTab",
    ]
    .concat();
    let body = [b"k8s\0", &[0x0a, 32][..], &type_meta, &[0x12, 0]].concat();
    let response = h
        .req(
            reqwest::Method::POST,
            "/api/v1/namespaces/default/configmaps",
        )
        .header("Content-Type", "application/vnd.kubernetes.protobuf")
        .body(body)
        .send()
        .await
        .unwrap();
    let (code, status) = status_of(response).await;
    assert_eq!(code, 415, "{status}");
    let message = status["message"].as_str().unwrap();
    assert!(
        message.contains("\"CronTab\"") && message.contains("stable.example.com/v1"),
        "{message}"
    );
    h.stop().await;
}

/// The `managedFields` entries of `object` as (manager, operation, subresource).
fn managers_of(object: &Value) -> Vec<(String, String, String)> {
    object["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let text = |f: &str| e[f].as_str().unwrap_or_default().to_string();
            (text("manager"), text("operation"), text("subresource"))
        })
        .collect()
}

/// `kubectl apply --server-side`: created if absent, fields owned per manager in
/// `managedFields` (shown by `--show-managed-fields`), a field no longer applied is removed,
/// another manager's change is a 409 naming the owner and the field, `--force-conflicts`
/// takes the field over, a server dry run stores nothing, bad requests change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_server_side_apply_owns_fields_per_manager() {
    let h = Harness::start().await;
    let manifest = |data: &str| {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\ndata:\n{data}")
    };
    let file = h.write("ssa.yaml", &manifest("  a: \"1\"\n  b: \"2\"\n"));
    let out = h.ok(&["apply", "--server-side", "-f", &file]).await;
    assert!(out.contains("configmap/ssa serverside-applied"), "{out}");
    let file = h.write("ssa.yaml", &manifest("  a: \"1\"\n"));
    h.ok(&["apply", "--server-side", "-f", &file]).await;
    let cm = h.backend.get("configmaps", "ssa").unwrap();
    assert_eq!(cm["data"], json!({"a": "1"}), "{cm}");
    let managed = &cm["metadata"]["managedFields"];
    assert_eq!(
        managers_of(&cm),
        [("kubectl".into(), "Apply".into(), String::new())]
    );
    assert_eq!(managed[0]["fieldsV1"], json!({"f:data": {"f:a": {}}}));
    assert_eq!(managed[0]["apiVersion"], "v1");
    let shown = h
        .ok(&[
            "get",
            "configmap",
            "ssa",
            "-o",
            "yaml",
            "--show-managed-fields",
        ])
        .await;
    assert!(
        shown.contains("managedFields:") && shown.contains("manager: kubectl"),
        "{shown}"
    );
    let hidden = h.ok(&["get", "configmap", "ssa", "-o", "yaml"]).await;
    assert!(!hidden.contains("managedFields"), "{hidden}");

    // Another manager changing `a` conflicts; nothing is stored.
    let other = h.write("other.yaml", &manifest("  a: \"9\"\n  c: \"3\"\n"));
    let as_other = [
        "apply",
        "--server-side",
        "--field-manager=other",
        "-f",
        &other,
    ];
    let err = h.fails(&as_other).await;
    assert!(
        err.contains("Apply failed with 1 conflict: conflict with \"kubectl\" using v1: .data.a"),
        "{err}"
    );
    assert_eq!(
        h.backend.get("configmaps", "ssa").unwrap()["data"],
        json!({"a": "1"})
    );
    // The Status Kubernetes answers: 409, reason Conflict, a cause per field.
    let response = h
        .req(
            reqwest::Method::PATCH,
            "/api/v1/namespaces/default/configmaps/ssa?fieldManager=raw",
        )
        .header("content-type", "application/apply-patch+yaml")
        .body(manifest("  a: \"7\"\n"))
        .send()
        .await
        .unwrap();
    let (code, status) = status_of(response).await;
    assert_eq!(code, 409, "{status}");
    assert_eq!(status["reason"], "Conflict", "{status}");
    assert_eq!(
        status["details"]["causes"],
        json!([{"reason": "FieldManagerConflict", "field": ".data.a",
                "message": "conflict with \"kubectl\" using v1"}]),
        "{status}"
    );

    // A server dry run answers the result and stores nothing.
    let dry = h
        .ok(&[
            "apply",
            "--server-side",
            "--dry-run=server",
            "--field-manager=other",
            "--force-conflicts",
            "-f",
            &other,
            "-o",
            "json",
        ])
        .await;
    let dry: Value = serde_json::from_str(&dry).unwrap();
    assert_eq!(dry["data"], json!({"a": "9", "c": "3"}), "{dry}");
    assert_eq!(
        h.backend.get("configmaps", "ssa").unwrap()["data"],
        json!({"a": "1"})
    );

    // Forced: `other` takes `a` over; kubectl owns nothing any more.
    let mut forced = as_other.to_vec();
    forced.insert(2, "--force-conflicts");
    h.ok(&forced).await;
    let cm = h.backend.get("configmaps", "ssa").unwrap();
    assert_eq!(cm["data"], json!({"a": "9", "c": "3"}), "{cm}");
    assert_eq!(
        managers_of(&cm),
        [("other".into(), "Apply".into(), String::new())]
    );
    // `other` stops applying `c`: it goes.
    let other = h.write("other.yaml", &manifest("  a: \"9\"\n"));
    h.ok(&[
        "apply",
        "--server-side",
        "--field-manager=other",
        "-f",
        &other,
    ])
    .await;
    let cm = h.backend.get("configmaps", "ssa").unwrap();
    assert_eq!(cm["data"], json!({"a": "9"}), "{cm}");

    // No fieldManager: 422 as Kubernetes answers; a body that is not YAML: 400. Unchanged.
    let raw = |query: &str, body: &str| {
        h.req(
            reqwest::Method::PATCH,
            &format!("/api/v1/namespaces/default/configmaps/ssa{query}"),
        )
        .header("content-type", "application/apply-patch+yaml")
        .body(body.to_string())
        .send()
    };
    let (code, status) = status_of(raw("", &manifest("  a: \"5\"\n")).await.unwrap()).await;
    assert_eq!(code, 422, "{status}");
    assert_eq!(
        status["details"]["causes"][0]["field"], "fieldManager",
        "{status}"
    );
    let (code, status) = status_of(raw("?fieldManager=x", "data: [a: {").await.unwrap()).await;
    assert_eq!(code, 400, "{status}");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("not valid YAML"),
        "{status}"
    );
    let (code, status) = status_of(
        raw("?fieldManager=x&force=maybe", &manifest("  a: \"5\"\n"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, 400, "{status}");
    assert_eq!(
        h.backend.get("configmaps", "ssa").unwrap()["data"],
        json!({"a": "9"})
    );
    h.stop().await;
}

/// Deployments and Services by server-side apply: containers, ports and env merged and
/// removed item by item; other writers (`kubectl scale`, `label`, client-side apply) get
/// Update entries under kubectl's own manager names and conflict with the applier; an item
/// without its key is refused; a client-side-applied object moves to server-side apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_server_side_apply_of_workloads_and_services() {
    let h = Harness::start().await;
    let deployment = |replicas: u32, containers: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: {replicas}\n  selector:\n    matchLabels: {{app: web}}\n  template:\n    metadata:\n      labels: {{app: web}}\n    spec:\n      containers:\n{containers}"
        )
    };
    let web = "      - name: web\n        image: nginx:1\n        ports:\n        - containerPort: 80\n        - {containerPort: 53, protocol: UDP}\n        env:\n        - {name: A, value: \"1\"}\n        - {name: B, value: \"2\"}\n";
    let side = "      - name: side\n        image: busybox\n";
    let file = h.write("web.yaml", &deployment(2, &format!("{web}{side}")));
    let out = h.ok(&["apply", "--server-side", "-f", &file]).await;
    assert!(
        out.contains("deployment.apps/web serverside-applied"),
        "{out}"
    );
    let d = h.backend.get("deployments.apps", "web").unwrap();
    let fields = &d["metadata"]["managedFields"][0]["fieldsV1"]["f:spec"]["f:template"]["f:spec"]
        ["f:containers"]["k:{\"name\":\"web\"}"];
    assert!(
        fields["f:ports"]["k:{\"containerPort\":53,\"protocol\":\"UDP\"}"].is_object(),
        "{fields}"
    );

    // The sidecar, a port and an env item leave the configuration: they leave the object.
    let web2 = "      - name: web\n        image: nginx:1\n        ports:\n        - containerPort: 80\n        env:\n        - {name: A, value: \"1\"}\n";
    let file = h.write("web.yaml", &deployment(2, web2));
    h.ok(&["apply", "--server-side", "-f", &file]).await;
    let d = h.backend.get("deployments.apps", "web").unwrap();
    let containers = &d["spec"]["template"]["spec"]["containers"];
    assert_eq!(containers.as_array().unwrap().len(), 1, "{containers}");
    assert_eq!(containers[0]["env"], json!([{"name": "A", "value": "1"}]));
    assert_eq!(
        containers[0]["ports"].as_array().unwrap().len(),
        1,
        "{containers}"
    );

    // Other writers: Update entries, by kubectl's names or (scale sends none) its user agent.
    h.ok(&["scale", "deployment", "web", "--replicas=3"]).await;
    h.ok(&["label", "deployment", "web", "team=a"]).await;
    let d = h.backend.get("deployments.apps", "web").unwrap();
    let managers = managers_of(&d);
    assert!(
        managers.contains(&("kubectl".into(), "Update".into(), "scale".into())),
        "{managers:?}"
    );
    assert!(
        managers.contains(&("kubectl-label".into(), "Update".into(), String::new())),
        "{managers:?}"
    );
    // The applier still says 2 replicas: conflict with the scaler, until forced.
    let err = h.fails(&["apply", "--server-side", "-f", &file]).await;
    assert!(
        err.contains("conflict with \"kubectl\" with subresource \"scale\" using apps/v1 at ")
            && err.contains(".spec.replicas"),
        "{err}"
    );
    h.ok(&["apply", "--server-side", "--force-conflicts", "-f", &file])
        .await;
    let d = h.backend.get("deployments.apps", "web").unwrap();
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(
        d["metadata"]["labels"]["team"], "a",
        "the label is kubectl-label's"
    );

    // An item without its key is refused, naming it; nothing changes.
    let file = h.write("bad.yaml", &deployment(2, "      - image: nginx:1\n"));
    let err = h.fails(&["apply", "--server-side", "-f", &file]).await;
    assert!(
        err.contains("omits key field \\\"name\\\"") || err.contains("omits key field \"name\""),
        "{err}"
    );

    // A Service: ports by port and protocol.
    let service = |ports: &str| {
        format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector: {{app: web}}\n  ports:\n{ports}")
    };
    let file = h.write(
        "svc.yaml",
        &service("  - {name: http, port: 80, targetPort: 8080}\n  - {name: dns, port: 53, protocol: UDP}\n"),
    );
    let out = h.ok(&["apply", "--server-side", "-f", &file]).await;
    assert!(out.contains("service/web serverside-applied"), "{out}");
    let file = h.write(
        "svc.yaml",
        &service("  - {name: http, port: 80, targetPort: 8081}\n"),
    );
    h.ok(&["apply", "--server-side", "-f", &file]).await;
    let svc = h.backend.get("services", "web").unwrap();
    let ports = svc["spec"]["ports"].as_array().unwrap();
    assert_eq!(ports.len(), 1, "{svc}");
    assert_eq!(ports[0]["targetPort"], 8081, "{svc}");
    assert!(svc["spec"]["clusterIP"].is_string(), "{svc}");

    // Client-side apply first (an Update by kubectl-client-side-apply), then server-side:
    // kubectl moves the fields to its Apply entry; a field dropped afterwards goes.
    let manifest = |data: &str| {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: moved\ndata:\n{data}")
    };
    let file = h.write("moved.yaml", &manifest("  a: \"1\"\n  b: \"2\"\n"));
    h.ok(&["apply", "-f", &file]).await;
    let cm = h.backend.get("configmaps", "moved").unwrap();
    assert_eq!(
        managers_of(&cm),
        [(
            "kubectl-client-side-apply".into(),
            "Update".into(),
            String::new()
        )]
    );
    h.ok(&["apply", "--server-side", "-f", &file]).await;
    let file = h.write("moved.yaml", &manifest("  a: \"1\"\n"));
    h.ok(&["apply", "--server-side", "-f", &file]).await;
    let cm = h.backend.get("configmaps", "moved").unwrap();
    assert_eq!(cm["data"], json!({"a": "1"}), "{cm}");
    assert!(
        managers_of(&cm).contains(&("kubectl".into(), "Apply".into(), String::new())),
        "{cm}"
    );
    h.stop().await;
}

/// A TLS connection to the harness' server, trusting its CA, with nothing sent yet.
async fn tls_connect(h: &Harness) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls::pki_types::pem::PemObject;
    shoal::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(h.ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(h.base.trim_start_matches("https://"))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap()
}

/// Reads until the server closes `stream` (EOF or a reset); panics if it is still open after
/// `limit` (the server did not close it).
async fn closed_by_server(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    limit: Duration,
    what: &str,
) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 64 * 1024];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: the server did not close the connection"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_and_unauthenticated_connections_cannot_hold_the_api() {
    use tokio::io::AsyncWriteExt;
    let config = ApiConfig {
        max_connections: 32,
        max_connections_per_address: 12,
        max_unauthenticated: 4,
        handshake_timeout: Duration::from_secs(2),
        unauthenticated_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
        ..ApiConfig::default()
    };
    let h = Harness::start_with(config).await;
    let addr = h.base.trim_start_matches("https://").to_string();

    // An address's share: 12 connections that never say a word are held (for a while), the
    // 13th is closed at once.
    let mut silent = Vec::new();
    for _ in 0..12 {
        silent.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let mut thirteenth = tokio::net::TcpStream::connect(&addr).await.unwrap();
    closed_by_server(
        &mut thirteenth,
        Duration::from_secs(1),
        "past the address's share",
    )
    .await;
    // Each silent one is closed by the handshake deadline or for want of an unauthenticated
    // slot; then the address has its share back and an authenticated client is served.
    for (i, s) in silent.iter_mut().enumerate() {
        closed_by_server(
            s,
            Duration::from_secs(20),
            &format!("silent connection {i}"),
        )
        .await;
    }
    let response = h
        .req(reqwest::Method::GET, "/version")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);

    // A TLS connection that makes no authenticated request is closed; a 401 does not count
    // as authenticated.
    let mut quiet = tls_connect(&h).await;
    closed_by_server(
        &mut quiet,
        Duration::from_secs(20),
        "unauthenticated, silent",
    )
    .await;
    let mut wrong = tls_connect(&h).await;
    wrong
        .write_all(b"GET /version HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\n\r\n")
        .await
        .unwrap();
    closed_by_server(&mut wrong, Duration::from_secs(20), "401 only").await;

    // An authenticated keep-alive connection is closed once idle...
    let mut idle = tls_connect(&h).await;
    idle.write_all(
        format!("GET /version HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    closed_by_server(&mut idle, Duration::from_secs(20), "authenticated, idle").await;

    // ...but not while a watch is open on it, however long it stays silent.
    let watch = h
        .req(
            reqwest::Method::GET,
            "/api/v1/namespaces/default/configmaps?watch=true&timeoutSeconds=30&fieldSelector=metadata.name%3Dlate",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(watch.status().as_u16(), 200);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let created = h
        .req(
            reqwest::Method::POST,
            "/api/v1/namespaces/default/configmaps",
        )
        .json(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "late"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let mut events = watch.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(20), events.next())
        .await
        .expect("the watch's event never came")
        .expect("the watch ended: its connection was closed while the watch was open")
        .unwrap();
    let event: Value =
        serde_json::from_slice(first.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(event["type"], "ADDED");
    assert_eq!(event["object"]["metadata"]["name"], "late");
    h.stop().await;
}

const STS_V1: &str = "apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: db
spec:
  replicas: 2
  serviceName: db
  selector:
    matchLabels:
      app: db
  template:
    metadata:
      labels:
        app: db
    spec:
      containers:
      - name: main
        image: shoal.test/busybox:1
        command: [sleep, \"3600\"]
";

const DS_V1: &str = "apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: agent
  annotations:
    kubernetes.io/change-cause: first
spec:
  selector:
    matchLabels:
      app: agent
  template:
    metadata:
      labels:
        app: agent
    spec:
      containers:
      - name: main
        image: shoal.test/busybox:1
        command: [sleep, \"3600\"]
";

/// What the leader's StatefulSet or DaemonSet controller does to the history of
/// `resource`/`name` (`sched::revisions::sync`), applied to the fake backend.
fn keep_history(h: &Harness, resource: &str, kind: &'static str, name: &str) {
    use shoal::sched::hash::{template_hash, without_nulls};
    use shoal::sched::revisions;
    let owner = h.backend.get(resource, name).unwrap();
    let template = without_nulls(&owner["spec"]["template"]);
    let sync_owner = revisions::Owner {
        object: &owner,
        kind,
        hash: template_hash(&template),
        template,
        live: Default::default(),
    };
    let all = h.backend.list_objects("controllerrevisions.apps", None);
    let (writes, _) = revisions::sync(&sync_owner, &all, Utc::now());
    for w in writes {
        match w {
            shoal::sched::Write::PutObject { object, .. } => {
                h.backend.put("controllerrevisions.apps", object)
            }
            shoal::sched::Write::DeleteObject { name, .. } => {
                h.backend
                    .delete_object(&ObjectKey {
                        resource: "controllerrevisions.apps".into(),
                        namespace: Some("default".into()),
                        name,
                    })
                    .unwrap();
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// `kubectl rollout history / undo` of StatefulSets and DaemonSets against ControllerRevisions
/// the controllers' history code wrote (kubectl 1.32 reads them by selector, and undo sends a
/// revision's `data` back as a strategic-merge patch with `$patch: replace`), the
/// ControllerRevision table, what users may write, and a claim with a finalizer deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_statefulset_and_daemonset_history_and_undo() {
    let h = Harness::start().await;
    h.ok(&["apply", "-f", &h.write("sts.yaml", STS_V1)]).await;
    keep_history(&h, "statefulsets.apps", "StatefulSet", "db");
    h.ok(&["set", "image", "sts/db", "main=shoal.test/busybox:2"])
        .await;
    keep_history(&h, "statefulsets.apps", "StatefulSet", "db");
    let history = squeeze(&h.ok(&["rollout", "history", "sts/db"]).await);
    assert!(
        history.contains("REVISION CHANGE-CAUSE\n1 <none>\n2 <none>"),
        "{history}"
    );
    let one = h
        .ok(&["rollout", "history", "sts/db", "--revision=1"])
        .await;
    assert!(one.contains("shoal.test/busybox:1"), "{one}");
    let out = h
        .ok(&["rollout", "undo", "sts/db", "--to-revision=1"])
        .await;
    assert!(out.contains("rolled back"), "{out}");
    let stored = h.backend.get("statefulsets.apps", "db").unwrap();
    assert_eq!(
        stored["spec"]["template"]["spec"]["containers"][0]["image"],
        "shoal.test/busybox:1"
    );
    keep_history(&h, "statefulsets.apps", "StatefulSet", "db");
    let history = squeeze(&h.ok(&["rollout", "history", "sts/db"]).await);
    assert!(
        history.contains("REVISION CHANGE-CAUSE\n2 <none>\n3 <none>"),
        "the first template's revision renumbered: {history}"
    );
    // Undo to the revision that is current again leaves the template as it is.
    h.ok(&["rollout", "undo", "sts/db", "--to-revision=3"])
        .await;
    let again = h.backend.get("statefulsets.apps", "db").unwrap();
    assert_eq!(again["spec"]["template"], stored["spec"]["template"]);
    let err = h
        .fails(&["rollout", "undo", "sts/db", "--to-revision=9"])
        .await;
    assert!(err.contains("unable to find specified revision 9"), "{err}");

    // A DaemonSet: the change cause comes from its annotations; plain undo goes to the
    // previous revision.
    h.ok(&["create", "-f", &h.write("ds.yaml", DS_V1)]).await;
    keep_history(&h, "daemonsets.apps", "DaemonSet", "agent");
    h.ok(&["set", "image", "ds/agent", "main=shoal.test/busybox:2"])
        .await;
    keep_history(&h, "daemonsets.apps", "DaemonSet", "agent");
    let history = squeeze(&h.ok(&["rollout", "history", "ds/agent"]).await);
    assert!(history.contains("\n1 first\n2 first"), "{history}");
    h.ok(&["rollout", "undo", "ds/agent"]).await;
    let stored = h.backend.get("daemonsets.apps", "agent").unwrap();
    assert_eq!(
        stored["spec"]["template"]["spec"]["containers"][0]["image"],
        "shoal.test/busybox:1"
    );

    // The table, as Kubernetes prints it.
    let table = h.ok(&["get", "controllerrevisions"]).await;
    let header = table.lines().next().unwrap_or_default();
    column_positions(header, &["NAME", "CONTROLLER", "REVISION", "AGE"]);
    assert!(table.contains("statefulset.apps/db"), "{table}");
    assert!(table.contains("daemonset.apps/agent"), "{table}");

    // Users may write revisions; `data` is required and immutable.
    let bad = h.write(
        "cr.yaml",
        "apiVersion: apps/v1\nkind: ControllerRevision\nmetadata:\n  name: mine\nrevision: 1\n",
    );
    let err = h.fails(&["create", "-f", &bad]).await;
    assert!(err.contains("data: Required value"), "{err}");
    let good = h.write(
        "cr2.yaml",
        "apiVersion: apps/v1\nkind: ControllerRevision\nmetadata:\n  name: mine\ndata:\n  a: 1\nrevision: 1\n",
    );
    h.ok(&["create", "-f", &good]).await;
    let err = h
        .fails(&[
            "patch",
            "controllerrevision",
            "mine",
            "--type=merge",
            "-p",
            r#"{"data":{"a":2}}"#,
        ])
        .await;
    assert!(err.contains("field is immutable"), "{err}");
    h.ok(&["delete", "controllerrevision", "mine"]).await;

    // A claim gets pvc-protection; deleted, it stays Terminating for the leader to remove.
    let claim = h.write(
        "pvc.yaml",
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: data\nspec:\n  accessModes: [ReadWriteOnce]\n  resources:\n    requests:\n      storage: 1Gi\n",
    );
    h.ok(&["create", "-f", &claim]).await;
    let stored = h.backend.get("persistentvolumeclaims", "data").unwrap();
    assert_eq!(
        stored["metadata"]["finalizers"],
        json!(["kubernetes.io/pvc-protection"])
    );
    h.ok(&["delete", "pvc", "data", "--wait=false"]).await;
    h.ok(&["delete", "pvc", "data", "--wait=false"]).await;
    let row = h.ok(&["get", "pvc", "data"]).await;
    assert!(row.contains("Terminating"), "{row}");
    // With its finalizer removed by a user, it is removed at once by the next DELETE.
    h.ok(&[
        "patch",
        "pvc",
        "data",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ])
    .await;
    let stored = h.backend.get("persistentvolumeclaims", "data").unwrap();
    assert!(!stored["metadata"]["deletionTimestamp"].is_null());
    h.ok(&["delete", "pvc", "data"]).await;
    assert!(h.backend.get("persistentvolumeclaims", "data").is_none());
    h.stop().await;
}
