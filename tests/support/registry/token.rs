//! A bearer-token server for the test registry (`auth: token:`): `GET /token?service=..
//! &scope=..` on `127.0.0.1:<free port>` checks HTTP basic auth against one user and answers
//! `{"token": <JWT>}`, an ES256 JWT whose `x5c` header carries a self-signed certificate the
//! registry trusts through its `rootcertbundle`. Requests without credentials, or with wrong
//! ones, get a 401. Every request is recorded so that tests can tell the flow happened.
//!
//! One thread, one connection at a time, `Connection: close`; stopped and joined on drop.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};

/// The `service` the registry names in its challenges and accepts as the tokens' `aud`.
pub const SERVICE: &str = "shoal-test";
/// The `iss` of the tokens, the one issuer the registry trusts.
pub const ISSUER: &str = "shoal-test-issuer";
/// How long an issued token is valid.
const LIFETIME: Duration = Duration::from_secs(300);
/// The largest request head the server reads.
const MAX_HEAD: usize = 16 * 1024;
/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// One request to the token endpoint, as the server saw and answered it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRequest {
    /// The basic-auth user, `None` for an anonymous request.
    pub user: Option<String>,
    /// The `service` query parameter.
    pub service: Option<String>,
    /// The `scope` query parameters (`repository:<name>:<actions>`), in order.
    pub scopes: Vec<String>,
    /// Whether a token was issued (the credentials were right).
    pub granted: bool,
}

/// A running token server.
pub struct TokenServer {
    port: u16,
    requests: Arc<Mutex<Vec<TokenRequest>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// What the serving thread needs.
struct Issuer {
    user: String,
    password: String,
    /// The signing certificate, DER.
    cert_der: Vec<u8>,
    key: EcdsaKeyPair,
    rng: SystemRandom,
    requests: Arc<Mutex<Vec<TokenRequest>>>,
    jti: AtomicU64,
}

impl TokenServer {
    /// Makes a fresh P-256 signing key and self-signed certificate, writes the certificate
    /// (PEM) to `cert_path` for the registry's `rootcertbundle`, and starts serving on a free
    /// port of 127.0.0.1.
    pub fn start(user: &str, password: &str, cert_path: &Path) -> TokenServer {
        let certified = rcgen::generate_simple_self_signed(vec![ISSUER.to_string()])
            .expect("a token signing certificate");
        std::fs::write(cert_path, certified.cert.pem())
            .unwrap_or_else(|e| panic!("write {}: {e}", cert_path.display()));
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &certified.signing_key.serialize_der(),
            &rng,
        )
        .expect("rcgen's P-256 key as a ring signing key");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the token server");
        let port = listener.local_addr().expect("token server address").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let issuer = Issuer {
            user: user.to_string(),
            password: password.to_string(),
            cert_der: certified.cert.der().to_vec(),
            key,
            rng,
            requests: requests.clone(),
            jti: AtomicU64::new(0),
        };
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("token-server".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stopped.load(Ordering::SeqCst) {
                        return;
                    }
                    // A client that hangs up or times out only loses its own answer.
                    if let Ok(stream) = conn {
                        let _ = issuer.serve(stream);
                    }
                }
            })
            .expect("spawn the token server thread");
        TokenServer {
            port,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:<port>/token`: the registry's `realm`.
    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    /// Every request answered so far, oldest first.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the blocking accept; the thread sees the flag and returns.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Issuer {
    fn serve(&self, mut stream: TcpStream) -> std::io::Result<()> {
        stream.set_read_timeout(Some(READ_TIMEOUT))?;
        let head = read_head(&mut stream)?;
        let head = String::from_utf8_lossy(&head);
        let mut lines = head.split("\r\n");
        let mut request_line = lines.next().unwrap_or_default().split(' ');
        let (method, target) = (
            request_line.next().unwrap_or_default(),
            request_line.next().unwrap_or_default(),
        );
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        if method != "GET" || path != "/token" {
            return respond(
                &mut stream,
                "404 Not Found",
                &[],
                &json!({"details": "no such endpoint"}),
            );
        }
        let authorization = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("authorization"))
            .map(|(_, value)| value.trim().to_string());
        let (user, password) = match authorization.as_deref().and_then(basic_credentials) {
            Some((u, p)) => (Some(u), Some(p)),
            None => (None, None),
        };
        let mut service = None;
        let mut scopes = Vec::new();
        for (k, v) in query.split('&').filter_map(|kv| kv.split_once('=')) {
            match k {
                "service" => service = Some(percent_decode(v)),
                "scope" => scopes.extend(percent_decode(v).split(' ').map(str::to_string)),
                _ => {}
            }
        }
        let granted = user.as_deref() == Some(self.user.as_str())
            && password.as_deref() == Some(self.password.as_str());
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(TokenRequest {
                user: user.clone(),
                service,
                scopes: scopes.clone(),
                granted,
            });
        if !granted {
            let challenge = ("WWW-Authenticate", format!("Basic realm=\"{SERVICE}\""));
            let body = json!({"details": "unauthorized: authentication required"});
            return respond(&mut stream, "401 Unauthorized", &[challenge], &body);
        }
        let token = self.issue(&self.user, &scopes);
        let body = json!({
            "token": token,
            "access_token": token,
            "expires_in": LIFETIME.as_secs(),
        });
        respond(&mut stream, "200 OK", &[], &body)
    }

    /// A JWT for `sub` granting the pull and push actions `scopes` ask for on repositories.
    fn issue(&self, sub: &str, scopes: &[String]) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("a clock after 1970")
            .as_secs();
        let access: Vec<Value> = scopes
            .iter()
            .filter_map(|s| repository_scope(s))
            .map(|(name, actions)| json!({"type": "repository", "name": name, "actions": actions}))
            .collect();
        let header =
            json!({"alg": "ES256", "typ": "JWT", "x5c": [STANDARD.encode(&self.cert_der)]});
        let claims = json!({
            "iss": ISSUER,
            "sub": sub,
            "aud": SERVICE,
            "exp": now + LIFETIME.as_secs(),
            "nbf": now,
            "iat": now,
            "jti": format!("shoal-test-{}", self.jti.fetch_add(1, Ordering::Relaxed)),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        // FIXED signing: the raw r || s that JWS ES256 wants, not DER.
        let sig = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .expect("sign a token");
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }
}

/// `repository:<name>:<actions>` → the name and the requested actions among pull and push.
fn repository_scope(scope: &str) -> Option<(String, Vec<String>)> {
    let (kind, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    if kind != "repository" || name.is_empty() {
        return None;
    }
    let actions: Vec<String> = actions
        .split(',')
        .filter(|a| matches!(*a, "pull" | "push"))
        .map(str::to_string)
        .collect();
    Some((name.to_string(), actions))
}

/// The user and password of a `Basic <base64(user:password)>` header value.
fn basic_credentials(value: &str) -> Option<(String, String)> {
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// Decodes `%XX` escapes and `+` (a space in form encoding); a bad escape stays as it is.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(b) => {
                    out.push(b);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads up to the end of the request head (`\r\n\r\n`), at most [`MAX_HEAD`] bytes.
fn read_head(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_HEAD {
            return Err(std::io::Error::other("request head too large"));
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(head)
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    headers: &[(&str, String)],
    body: &Value,
) -> std::io::Result<()> {
    let body = body.to_string();
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        out += &format!("{name}: {value}\r\n");
    }
    out += "\r\n";
    out += &body;
    stream.write_all(out.as_bytes())?;
    stream.flush()
}
