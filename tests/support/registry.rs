//! A real OCI registry for tests: Debian's `docker-registry` (the CNCF distribution registry)
//! on `127.0.0.1:<free port>` with filesystem storage in a temporary dir, optional htpasswd
//! or bearer-token auth (with a token server of its own, see [`token`]) and TLS, images pushed
//! with the real `skopeo`, and its access log read back to count what a client fetched.
//! Killed on drop. Never uses port 5000 (a system registry may be there).
//!
//! A missing `docker-registry`, `skopeo` or `htpasswd` fails the test by package name.

pub mod layout;
pub mod token;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use token::{TokenRequest, TokenServer};

/// How long the registry gets to answer `GET /v2/` after it is started.
const START: Duration = Duration::from_secs(30);
/// How long a request may take to show up in the access log.
const LOG_SYNC: Duration = Duration::from_secs(10);

/// Fails the test unless `cmd` is on `PATH`, naming the Debian package that provides it.
pub fn require_command(cmd: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(cmd).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "missing prerequisite `{cmd}` (Debian package {package}): apt-get install {package}"
    );
}

/// Who the registry lets in.
#[derive(Clone, Debug, Default)]
pub enum Auth {
    /// Anyone, without credentials.
    #[default]
    Anonymous,
    /// htpasswd (bcrypt) basic auth with this one user.
    Basic { user: String, password: String },
    /// Bearer tokens (`auth: token:`) from the harness's own token server, which checks this
    /// one user with HTTP basic auth and grants the pull and push actions asked for on any
    /// repository.
    Token { user: String, password: String },
}

/// What the registry requires.
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// Anonymous access, htpasswd, or bearer tokens.
    pub auth: Auth,
    /// HTTPS with a fresh self-signed certificate for `127.0.0.1` instead of plain HTTP.
    pub tls: bool,
    /// With `tls`: the certificate is made by Docker's "use self-signed certificates" recipe
    /// (`openssl req -newkey rsa -nodes -sha256 -x509` with a subjectAltName): a CA
    /// certificate (`basicConstraints CA:TRUE`) served as the registry's own.
    pub docker_recipe_cert: bool,
    /// With `tls`: clients must present a certificate signed by the harness's client CA
    /// (`http.tls.clientcas`); [`Registry::client_cert_dir`] holds one, Docker-style.
    pub client_certs: bool,
}

impl RegistryOptions {
    /// Plain HTTP with htpasswd basic auth for one user.
    pub fn with_auth(user: &str, password: &str) -> RegistryOptions {
        RegistryOptions {
            auth: Auth::Basic {
                user: user.to_string(),
                password: password.to_string(),
            },
            ..RegistryOptions::default()
        }
    }

    /// Plain HTTP with bearer tokens that the harness's token server issues to one user.
    pub fn with_token_auth(user: &str, password: &str) -> RegistryOptions {
        RegistryOptions {
            auth: Auth::Token {
                user: user.to_string(),
                password: password.to_string(),
            },
            ..RegistryOptions::default()
        }
    }
}

/// One request as the registry logged it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedRequest {
    pub method: String,
    pub uri: String,
    pub status: u64,
}

/// A running `docker-registry serve`.
pub struct Registry {
    dir: tempfile::TempDir,
    port: u16,
    opts: RegistryOptions,
    child: Option<Child>,
    /// The self-signed certificate (PEM) when TLS is on.
    cert_pem: Option<String>,
    /// The token server, with [`Auth::Token`].
    token: Option<TokenServer>,
}

static SYNC: AtomicU64 = AtomicU64::new(0);

impl Registry {
    /// Starts a registry and waits until `GET /v2/` answers.
    pub fn start(opts: RegistryOptions) -> Registry {
        require_command("docker-registry", "docker-registry");
        require_command("skopeo", "skopeo");
        require_command("curl", "curl");
        if matches!(opts.auth, Auth::Basic { .. }) {
            require_command("htpasswd", "apache2-utils");
        }
        if opts.docker_recipe_cert || opts.client_certs {
            require_command("openssl", "openssl");
        }
        let dir = tempfile::tempdir().expect("a temporary dir for the registry");
        let mut reg = Registry {
            dir,
            port: 0,
            opts,
            child: None,
            cert_pem: None,
            token: None,
        };
        reg.write_auth_and_tls();
        // The port is picked by binding port 0 and released before the registry binds it;
        // another process may take it in between, which the log says plainly: try another.
        for attempt in 1..=5 {
            reg.port = free_port();
            reg.write_config();
            match reg.spawn_and_wait() {
                Ok(()) => return reg,
                Err(log) if log.contains("address already in use") && attempt < 5 => continue,
                Err(log) => panic!(
                    "docker-registry did not start on 127.0.0.1:{}\n--- log\n{log}",
                    reg.port
                ),
            }
        }
        unreachable!("the loop returns or panics")
    }

    /// `127.0.0.1:<port>`: the registry part of references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:<port>/<repo_tag>`.
    pub fn reference(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.host())
    }

    /// `http://127.0.0.1:<port>` (or `https://`).
    pub fn url(&self) -> String {
        let scheme = if self.opts.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.host())
    }

    /// The self-signed certificate (PEM) the registry serves, when started with TLS.
    pub fn cert_pem(&self) -> Option<&str> {
        self.cert_pem.as_deref()
    }

    /// The registry's storage root (`docker/registry/v2/...` below it).
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Every request the token server has answered, oldest first (none without
    /// [`Auth::Token`]).
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.token
            .as_ref()
            .map(TokenServer::requests)
            .unwrap_or_default()
    }

    /// Whether the registry process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Stops the registry (SIGKILL, then reaps it); its storage and log stay.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a stopped registry again on the same port, with the same storage.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(log) = self.spawn_and_wait() {
            panic!(
                "docker-registry did not restart on 127.0.0.1:{}\n--- log\n{log}",
                self.port
            );
        }
    }

    /// Pushes `oci:<layout>:<src_tag>` to `<this registry>/<dest>` (`repo:tag`) with
    /// `skopeo copy --all`; an index is pushed with all its manifests. `compress` (`gzip` or
    /// `zstd`) recompresses the layers (skopeo compresses only layers that are uncompressed
    /// in the layout, so build them with `Compression::None`; the pushed manifest is checked).
    /// Returns the digest of what `dest` names (the manifest, or the index).
    pub fn push_oci_layout(
        &self,
        layout: &Path,
        src_tag: &str,
        dest: &str,
        creds: Option<(&str, &str)>,
        compress: Option<&str>,
    ) -> String {
        let digest_file = self.dir.path().join(format!("digest-{}", unique()));
        let mut args = vec![
            "copy".to_string(),
            "--all".into(),
            "--quiet".into(),
            "--dest-tls-verify=false".into(),
            "--digestfile".into(),
            digest_file.display().to_string(),
        ];
        if let Some((u, p)) = creds {
            args.push("--dest-creds".into());
            args.push(format!("{u}:{p}"));
        }
        if let Some(dir) = self.client_cert_dir() {
            args.push("--dest-cert-dir".into());
            args.push(dir.display().to_string());
        }
        if let Some(format) = compress {
            assert!(
                format == "gzip" || format == "zstd",
                "compress: gzip or zstd, not {format}"
            );
            args.extend(["--dest-compress".into(), "--dest-compress-format".into()]);
            args.push(format.into());
        }
        args.push(format!("oci:{}:{src_tag}", layout.display()));
        args.push(format!("docker://{}", self.reference(dest)));
        let out = run("skopeo", &args);
        assert!(
            out.status.success(),
            "{}",
            describe("skopeo copy", &args, &out, &self.log())
        );
        let digest = std::fs::read_to_string(&digest_file)
            .unwrap_or_else(|e| panic!("skopeo wrote no digest file: {e}"))
            .trim()
            .to_string();
        assert!(
            digest.starts_with("sha256:"),
            "skopeo digest file: {digest:?}"
        );
        if let Some(format) = compress {
            let manifest = self.manifest(dest, creds);
            let wanted = format!("application/vnd.oci.image.layer.v1.tar+{format}");
            for l in manifest["layers"].as_array().into_iter().flatten() {
                assert_eq!(
                    l["mediaType"].as_str(),
                    Some(wanted.as_str()),
                    "skopeo did not recompress the layers to {format} (are they uncompressed in \
                     the layout?): {manifest}"
                );
            }
        }
        digest
    }

    /// The manifest (or index) `repo_tag` names, as the registry serves it
    /// (`skopeo inspect --raw`).
    pub fn manifest(&self, repo_tag: &str, creds: Option<(&str, &str)>) -> Value {
        let raw = self.raw_manifest(repo_tag, creds);
        serde_json::from_slice(&raw).unwrap_or_else(|e| panic!("manifest of {repo_tag}: {e}"))
    }

    /// The bytes of the manifest `repo_tag` names (their sha256 is its digest).
    pub fn raw_manifest(&self, repo_tag: &str, creds: Option<(&str, &str)>) -> Vec<u8> {
        let mut args = vec![
            "inspect".to_string(),
            "--raw".into(),
            "--tls-verify=false".into(),
        ];
        if let Some((u, p)) = creds {
            args.push("--creds".into());
            args.push(format!("{u}:{p}"));
        }
        if let Some(dir) = self.client_cert_dir() {
            args.push("--cert-dir".into());
            args.push(dir.display().to_string());
        }
        args.push(format!("docker://{}", self.reference(repo_tag)));
        let out = run("skopeo", &args);
        assert!(
            out.status.success(),
            "{}",
            describe("skopeo inspect", &args, &out, &self.log())
        );
        out.stdout
    }

    /// Every request the registry has logged so far (after [`Registry::sync_log`]).
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.sync_log();
        self.logged()
    }

    /// How many `GET /v2/<repo>/blobs/<digest>` requests (any repository, any answer) the
    /// registry has served.
    pub fn blob_gets(&self, digest: &str) -> usize {
        let suffix = format!("/blobs/{digest}");
        self.requests()
            .iter()
            .filter(|r| r.method == "GET" && r.uri.starts_with("/v2/") && r.uri.ends_with(&suffix))
            .count()
    }

    /// How many `GET /v2/<repo>/manifests/<tag or digest>` requests it has served.
    pub fn manifest_gets(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| {
                r.method == "GET" && r.uri.starts_with("/v2/") && r.uri.contains("/manifests/")
            })
            .count()
    }

    /// Overwrites the stored data of blob `digest` with different bytes of the same length
    /// (every byte inverted): the registry then serves content that does not match its digest.
    pub fn tamper_blob(&self, digest: &str) {
        let hex = digest
            .strip_prefix("sha256:")
            .unwrap_or_else(|| panic!("tamper_blob: not a sha256 digest: {digest}"));
        let path = self
            .storage()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data");
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("tamper_blob: {} is not stored ({e})", path.display()));
        let flipped: Vec<u8> = bytes.iter().map(|b| !b).collect();
        std::fs::write(&path, flipped)
            .unwrap_or_else(|e| panic!("tamper_blob: write {}: {e}", path.display()));
    }

    /// Makes one request of its own and waits until it is in the access log, so that every
    /// request answered before this call is logged too (each is logged as it completes).
    pub fn sync_log(&self) {
        if self.child.is_none() {
            return;
        }
        let marker = format!("/v2/?sync={}", unique());
        let curl = self.curl(&["-o", "/dev/null", &format!("{}{marker}", self.url())]);
        assert!(
            curl.status.success(),
            "sync request: {}",
            text(&curl.stderr)
        );
        let deadline = Instant::now() + LOG_SYNC;
        while !self.logged().iter().any(|r| r.uri == marker) {
            assert!(
                Instant::now() < deadline,
                "request {marker} not in the registry log after {LOG_SYNC:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `curl -sS -k <args>` (without failing on HTTP errors).
    pub fn curl(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-k", "--max-time", "30"]);
        if let Some(dir) = self.client_cert_dir() {
            cmd.arg("--cert").arg(dir.join("client.cert"));
            cmd.arg("--key").arg(dir.join("client.key"));
        }
        cmd.args(args).output().expect("run curl")
    }

    fn logged(&self) -> Vec<LoggedRequest> {
        self.log()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| {
                // Answered requests are logged as `response completed[ with error]`; those
                // refused by auth only as `error authorizing context: ...` (a 401).
                let msg = v["msg"].as_str()?;
                let status = if msg.starts_with("response completed") {
                    v["http.response.status"].as_u64().unwrap_or(0)
                } else if msg.starts_with("error authorizing context") {
                    401
                } else {
                    return None;
                };
                Some(LoggedRequest {
                    method: v["http.request.method"].as_str()?.to_string(),
                    uri: v["http.request.uri"].as_str()?.to_string(),
                    status,
                })
            })
            .collect()
    }

    fn write_auth_and_tls(&mut self) {
        if let Auth::Token { user, password } = &self.opts.auth {
            let cert = self.dir.path().join("token-cert.pem");
            self.token = Some(TokenServer::start(user, password, &cert));
        }
        if let Auth::Basic { user, password } = &self.opts.auth {
            let args = ["-Bbn".to_string(), user.clone(), password.clone()];
            let out = run("htpasswd", &args);
            assert!(
                out.status.success(),
                "{}",
                describe("htpasswd", &args, &out, "")
            );
            std::fs::write(self.dir.path().join("htpasswd"), &out.stdout).expect("write htpasswd");
        }
        if self.opts.tls && self.opts.client_certs {
            self.write_client_ca();
        }
        if self.opts.tls && self.opts.docker_recipe_cert {
            let d = self.dir.path();
            let args: Vec<String> = [
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-sha256",
                "-keyout",
                &d.join("key.pem").display().to_string(),
                "-x509",
                "-days",
                "365",
                "-out",
                &d.join("cert.pem").display().to_string(),
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName = IP:127.0.0.1",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let out = run("openssl", &args);
            assert!(
                out.status.success(),
                "{}",
                describe("openssl", &args, &out, "")
            );
            let pem = std::fs::read_to_string(d.join("cert.pem")).expect("read cert.pem");
            self.cert_pem = Some(pem);
        } else if self.opts.tls {
            let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()])
                .expect("a self-signed certificate");
            let pem = cert.cert.pem();
            std::fs::write(self.dir.path().join("cert.pem"), &pem).expect("write cert.pem");
            std::fs::write(
                self.dir.path().join("key.pem"),
                cert.signing_key.serialize_pem(),
            )
            .expect("write key.pem");
            self.cert_pem = Some(pem);
        }
    }

    /// A client CA and one client certificate it signs, both by `openssl`; the certificate
    /// and key go to `client/` as `client.cert` and `client.key` (Docker's layout).
    fn write_client_ca(&self) {
        let d = self.dir.path();
        let client = d.join("client");
        std::fs::create_dir_all(&client).expect("create client/");
        std::fs::write(d.join("client-ext.cnf"), "extendedKeyUsage = clientAuth\n")
            .expect("write the extension file");
        let p = |n: &str| d.join(n).display().to_string();
        let steps: Vec<Vec<String>> = vec![
            vec![
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &p("client-ca.key"),
                "-x509",
                "-days",
                "2",
                "-out",
                &p("client-ca.pem"),
                "-subj",
                "/CN=shoal-test-client-ca",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            vec![
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &p("client/client.key"),
                "-out",
                &p("client.csr"),
                "-subj",
                "/CN=shoal-test-client",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            vec![
                "x509",
                "-req",
                "-in",
                &p("client.csr"),
                "-CA",
                &p("client-ca.pem"),
                "-CAkey",
                &p("client-ca.key"),
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &p("client/client.cert"),
                "-extfile",
                &p("client-ext.cnf"),
            ]
            .into_iter()
            .map(String::from)
            .collect(),
        ];
        for args in steps {
            let out = run("openssl", &args);
            assert!(
                out.status.success(),
                "{}",
                describe("openssl", &args, &out, "")
            );
        }
    }

    /// With [`RegistryOptions::client_certs`]: a directory with `client.cert` and
    /// `client.key` that the registry accepts.
    pub fn client_cert_dir(&self) -> Option<PathBuf> {
        self.opts
            .client_certs
            .then(|| self.dir.path().join("client"))
    }

    fn write_config(&self) {
        let d = self.dir.path();
        let mut cfg = format!(
            "version: 0.1\n\
             log:\n  level: info\n  formatter: json\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{}\n  secret: shoal-test-secret\n",
            d.join("storage").display(),
            self.port
        );
        if self.opts.tls {
            cfg += &format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                d.join("cert.pem").display(),
                d.join("key.pem").display()
            );
            if self.opts.client_certs {
                cfg += &format!(
                    "    clientcas:\n      - {}\n",
                    d.join("client-ca.pem").display()
                );
            }
        }
        match &self.opts.auth {
            Auth::Anonymous => {}
            Auth::Basic { .. } => {
                cfg += &format!(
                    "auth:\n  htpasswd:\n    realm: shoal-test\n    path: {}\n",
                    d.join("htpasswd").display()
                );
            }
            Auth::Token { .. } => {
                let server = self
                    .token
                    .as_ref()
                    .expect("the token server is started first");
                cfg += &format!(
                    "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    \
                     rootcertbundle: {}\n",
                    server.realm(),
                    token::SERVICE,
                    token::ISSUER,
                    d.join("token-cert.pem").display()
                );
            }
        }
        std::fs::write(d.join("config.yml"), cfg).expect("write the registry config");
    }

    /// Spawns the registry; `Err(log)` if it exits or does not answer in time.
    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open the registry log");
        let mut cmd = Command::new("docker-registry");
        // It reads REGISTRY_* variables as overrides of its config file.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("REGISTRY_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn docker-registry: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + START;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Err(format!("exited with {status}\n{}", self.log()));
            }
            if self.answers() {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(format!(
                    "no answer to GET /v2/ within {START:?}\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether `GET /v2/` gets an HTTP answer (200, or 401 with auth).
    fn answers(&self) -> bool {
        if self.opts.tls {
            let out = self.curl(&[
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &format!("{}/v2/", self.url()),
            ]);
            return matches!(text(&out.stdout).trim(), "200" | "401");
        }
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let req = format!("GET /v2/ HTTP/1.0\r\nHost: {}\r\n\r\n", self.host());
        if s.write_all(req.as_bytes()).is_err() {
            return false;
        }
        let mut head = [0u8; 12];
        s.read_exact(&mut head).is_ok()
            && (head.starts_with(b"HTTP/1.0 200")
                || head.starts_with(b"HTTP/1.0 401")
                || head.starts_with(b"HTTP/1.1 200")
                || head.starts_with(b"HTTP/1.1 401"))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("local address").port();
        if port != 5000 {
            return port;
        }
    }
}

fn unique() -> u64 {
    SYNC.fetch_add(1, Ordering::Relaxed)
}

fn run(cmd: &str, args: &[String]) -> Output {
    Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {cmd}: {e}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn describe(what: &str, args: &[String], out: &Output, log: &str) -> String {
    format!(
        "{what} failed ({})\n  args: {args:?}\n--- stdout\n{}\n--- stderr\n{}\n--- registry log (tail)\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr),
        tail(log, 30)
    )
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
