//! The OCI distribution API as pulls use it: manifests and blobs by `GET`, with bearer-token
//! (`WWW-Authenticate: Bearer realm=...`) or basic authentication, over a client of our own so
//! that each registry gets its own TLS (certs directory, pins, client certificate) and mirrors
//! are just more endpoints of the same kind.
//!
//! Challenge parsing and error classification are pure ([`parse_challenge`], [`classify`]);
//! [`Endpoint`] carries them out.

use futures::StreamExt as _;

use super::pull::{Credentials, PullError};

/// Bytes of an error body read at most (for the registry's reason).
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Bytes of a token response read at most.
const MAX_TOKEN_BODY: usize = 64 * 1024;

/// One registry endpoint (the upstream registry or one of its mirrors).
pub struct Endpoint {
    /// `https://host[:port]` or `http://...`: where `/v2/` is.
    pub base: String,
    /// `host[:port]`, for messages and certs directory look-ups.
    pub host: String,
    pub mirror: bool,
    client: reqwest::Client,
    /// Sent to the registry itself only; mirrors are asked anonymously.
    credentials: Option<Credentials>,
    /// The `Authorization` value that the last challenge called for.
    authorization: tokio::sync::Mutex<Option<String>>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("base", &self.base)
            .field("mirror", &self.mirror)
            .finish_non_exhaustive()
    }
}

/// An authentication challenge (`WWW-Authenticate`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` value: `Basic realm="x"` or
/// `Bearer realm="https://auth/token",service="registry",scope="repository:a:pull"`.
pub fn parse_challenge(value: &str) -> Option<Challenge> {
    let value = value.trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let params = parse_params(rest);
    let get = |k: &str| {
        params
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(Challenge::Bearer {
            realm: get("realm").filter(|r| !r.is_empty())?,
            service: get("service"),
        });
    }
    None
}

/// `k="v", k2=v2` pairs; quoted values may hold commas and `\"`.
fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() {
            return out;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'=') {
            chars.next();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some(n) = chars.next() {
                                value.push(n);
                            }
                        }
                        '"' => break,
                        c => value.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
            }
        }
        out.push((key.trim().to_string(), value.trim().to_string()));
    }
}

/// The pull error for a registry's non-success answer: its status and the body (the
/// distribution error envelope `{"errors":[{"code":..,"message":..}]}` when it is one).
pub fn classify(registry: &str, what: &str, status: u16, body: &[u8]) -> PullError {
    let reasons: Vec<String> = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("errors").and_then(|e| e.as_array()).cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|e| {
            let code = e
                .get("code")
                .and_then(|c| c.as_str())?
                .to_ascii_lowercase()
                .replace('_', " ");
            let message = e.get("message").and_then(|m| m.as_str()).unwrap_or("");
            Some(
                if message.is_empty() || message.eq_ignore_ascii_case(&code) {
                    code
                } else {
                    format!("{code}: {message}")
                },
            )
        })
        .collect();
    if status >= 500 || status == 429 {
        let detail = if reasons.is_empty() {
            String::from_utf8_lossy(&body[..body.len().min(200)])
                .trim()
                .to_string()
        } else {
            reasons.join("; ")
        };
        return PullError::Unreachable(format!(
            "{what}: registry {registry} answered HTTP {status}: {detail}"
        ));
    }
    if status == 401 {
        return PullError::Registry(format!("{what}: unauthorized: authentication required"));
    }
    if !reasons.is_empty() {
        return PullError::Registry(format!("{what}: {}", reasons.join("; ")));
    }
    if status == 404 {
        return PullError::Registry(format!("{what}: not found"));
    }
    PullError::Registry(format!("{what}: HTTP {status}"))
}

/// The pull error for a request that got no HTTP answer (connection, TLS, proxy...).
pub fn request_error(registry: &str, what: &str, e: &reqwest::Error) -> PullError {
    let mut chain = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        src = s.source();
    }
    let lower = chain.to_ascii_lowercase();
    if lower.contains("invalidcontenttype")
        || lower.contains("corrupt message")
        || lower.contains("wrong version number")
    {
        PullError::Insecure(registry.to_string())
    } else {
        PullError::Unreachable(format!("{what}: {chain}"))
    }
}

impl Endpoint {
    pub fn new(
        base: String,
        host: String,
        mirror: bool,
        client: reqwest::Client,
        credentials: Option<Credentials>,
    ) -> Endpoint {
        Endpoint {
            base,
            host,
            mirror,
            client,
            credentials: if mirror { None } else { credentials },
            authorization: tokio::sync::Mutex::new(None),
        }
    }

    /// `GET /v2/<repository>/manifests/<reference>` (a tag or a digest), at most `limit`
    /// bytes.
    pub async fn manifest(
        &self,
        repository: &str,
        reference: &str,
        accept: &[&str],
        limit: u64,
        what: &str,
    ) -> Result<Vec<u8>, PullError> {
        let resp = self
            .get(
                repository,
                &format!("manifests/{reference}"),
                Some(&accept.join(", ")),
                what,
            )
            .await?;
        let mut body = resp.bytes_stream();
        let mut out = Vec::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| request_error(&self.host, what, &e))?;
            if (out.len() + chunk.len()) as u64 > limit {
                return Err(PullError::Unsupported(format!(
                    "{what}: manifest larger than {limit} bytes"
                )));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// `GET /v2/<repository>/blobs/<digest>` as a stream (redirects followed).
    pub async fn blob(
        &self,
        repository: &str,
        digest: &str,
        what: &str,
    ) -> Result<futures::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>, PullError> {
        let resp = self
            .get(repository, &format!("blobs/{digest}"), None, what)
            .await?;
        Ok(resp
            .bytes_stream()
            .map(|r| r.map_err(std::io::Error::other))
            .boxed())
    }

    /// A `GET` under `/v2/<repository>/`, answering one authentication challenge.
    async fn get(
        &self,
        repository: &str,
        path: &str,
        accept: Option<&str>,
        what: &str,
    ) -> Result<reqwest::Response, PullError> {
        let url = format!("{}/v2/{repository}/{path}", self.base);
        let mut authorization = self.authorization.lock().await.clone();
        let mut challenged = false;
        loop {
            let mut req = self.client.get(&url);
            if let Some(a) = accept {
                req = req.header(reqwest::header::ACCEPT, a);
            }
            if let Some(a) = &authorization {
                req = req.header(reqwest::header::AUTHORIZATION, a);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| request_error(&self.host, what, &e))?;
            let status = resp.status();
            if status.is_success() {
                return Ok(resp);
            }
            if status == reqwest::StatusCode::UNAUTHORIZED && !challenged {
                challenged = true;
                let challenge = resp
                    .headers()
                    .get(reqwest::header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_challenge);
                let next = match challenge {
                    Some(Challenge::Basic) => self.credentials.as_ref().map(basic),
                    Some(Challenge::Bearer { realm, service }) => Some(
                        self.token(&realm, service.as_deref(), repository, what)
                            .await?,
                    ),
                    None => None,
                };
                if let Some(next) = next {
                    authorization = Some(next.clone());
                    *self.authorization.lock().await = Some(next);
                    continue;
                }
            }
            let body = read_limited(resp, MAX_ERROR_BODY).await;
            return Err(classify(&self.host, what, status.as_u16(), &body));
        }
    }

    /// A pull token for `repository` from the token server at `realm`.
    async fn token(
        &self,
        realm: &str,
        service: Option<&str>,
        repository: &str,
        what: &str,
    ) -> Result<String, PullError> {
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(s) = service {
            query.push(("service", s.to_string()));
        }
        query.push(("scope", format!("repository:{repository}:pull")));
        let mut req = self.client.get(realm).query(&query);
        if let Some(c) = &self.credentials {
            req = req.basic_auth(&c.username, Some(&c.password));
        }
        let resp = req
            .send()
            .await
            .map_err(|e| request_error(&self.host, what, &e))?;
        let status = resp.status();
        let body = read_limited(resp, MAX_TOKEN_BODY).await;
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(PullError::Registry(format!(
                "{what}: unauthorized: authentication required (the token server refused: HTTP {status})"
            )));
        }
        if !status.is_success() {
            return Err(classify(
                realm,
                &format!("{what}: token"),
                status.as_u16(),
                &body,
            ));
        }
        let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
            PullError::Registry(format!(
                "{what}: the token server's answer is not JSON: {e}"
            ))
        })?;
        let token = v
            .get("token")
            .or_else(|| v.get("access_token"))
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                PullError::Registry(format!("{what}: the token server's answer holds no token"))
            })?;
        Ok(format!("Bearer {token}"))
    }
}

fn basic(c: &Credentials) -> String {
    use base64::Engine as _;
    let raw = format!("{}:{}", c.username, c.password);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

async fn read_limited(resp: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut body = resp.bytes_stream();
    let mut out = Vec::new();
    while let Some(Ok(chunk)) = body.next().await {
        let room = limit.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= limit {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse_as_registries_send_them() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="shoal-test""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            parse_challenge(r#"bearer realm="https://a/t?x=1,2", service=s"#),
            Some(Challenge::Bearer {
                realm: "https://a/t?x=1,2".into(),
                service: Some("s".into()),
            })
        );
        assert_eq!(parse_challenge(r#"Bearer service="s""#), None);
        assert_eq!(parse_challenge("Negotiate abc"), None);
        assert_eq!(parse_challenge(""), None);
    }

    #[test]
    fn errors_keep_the_registry_reason_and_their_kind() {
        let body =
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#;
        let e = classify("r:5000", "r:5000/a:1", 404, body);
        assert!(
            matches!(&e, PullError::Registry(m) if m == "r:5000/a:1: manifest unknown"),
            "{e:?}"
        );
        assert!(matches!(
            classify("r", "w", 503, b"busy"),
            PullError::Unreachable(m) if m.contains("HTTP 503") && m.contains("busy")
        ));
        assert!(matches!(
            classify("r", "w", 429, b""),
            PullError::Unreachable(_)
        ));
        assert!(matches!(
            classify("r", "w", 401, b""),
            PullError::Registry(m) if m.contains("unauthorized")
        ));
        assert!(matches!(
            classify("r", "w", 404, b"<html>"),
            PullError::Registry(m) if m == "w: not found"
        ));
    }

    proptest::proptest! {
        #[test]
        fn challenge_parsing_never_panics(s in ".{0,200}") {
            let _ = parse_challenge(&s);
        }

        #[test]
        fn classify_never_panics(status in 0u16..1000, body in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = classify("r", "w", status, &body);
        }
    }
}
