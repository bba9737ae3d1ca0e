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
use serde_json::{json, Value};
use shoal::api::{self, AgentStatus, ApiConfig, Backend, BackendError, MemberStatus, ObjectKey};
use shoal::model::{NodeRecord, NodeSystemInfo, NodeView, Readiness};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{oneshot, watch};

const TOKEN: &str = "s3cret-test-token";
const KUBECTL: &str = "/usr/bin/kubectl";

/// The in-memory backend: a map of objects, fixed nodes, and a change counter.
struct Fake {
    objects: Mutex<BTreeMap<ObjectKey, Value>>,
    nodes: Mutex<Vec<NodeView>>,
    tick: watch::Sender<u64>,
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
            },
        },
        readiness,
        since: created,
        is_leader,
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
                state: "alive".into(),
                incarnation: 1,
                addr: "x".into(),
            }],
            heads: vec!["00ff".into()],
            doc_bytes: 1234,
            admitted_peers: vec![],
        }
    }
    fn backup(&self) -> Result<Vec<u8>, BackendError> {
        Ok(b"\x00backup-bytes\xff".to_vec())
    }
    fn changes(&self) -> watch::Receiver<u64> {
        self.tick.subscribe()
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
        assert!(
            std::path::Path::new(KUBECTL).exists(),
            "{KUBECTL} is missing: these tests need the real kubectl 1.32 (install kubectl to /usr/bin/kubectl)"
        );
        let (ca_pem, cert_pem, key_pem) = certificates();
        let tls = Arc::new(api::tls_config(cert_pem.as_bytes(), key_pem.as_bytes()).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let backend = Fake::new();
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
            .args(args)
            .args(verbosity().map(|v| format!("-v={v}")))
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
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap())
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
