//! Secrets as the API and the kubelet read them: the Kubernetes Secret types and data-key rule,
//! and registry credentials out of `kubernetes.io/dockerconfigjson` (or legacy
//! `kubernetes.io/dockercfg`) Secrets, matched to a registry the way Kubernetes' credential
//! keyring (`pkg/credentialprovider`) matches them. Pure: JSON in, values or errors out.
//!
//! Secret contents never appear in an error: messages name keys and registries, not values.

use base64::Engine;
use serde_json::{Map, Value};

use super::image::Credentials;

/// The default Secret type: arbitrary user data.
pub const TYPE_OPAQUE: &str = "Opaque";
/// A `~/.docker/config.json` in the data key [`KEY_DOCKER_CONFIG_JSON`].
pub const TYPE_DOCKER_CONFIG_JSON: &str = "kubernetes.io/dockerconfigjson";
/// A legacy `~/.dockercfg` in the data key [`KEY_DOCKERCFG`].
pub const TYPE_DOCKERCFG: &str = "kubernetes.io/dockercfg";
/// The data key of a [`TYPE_DOCKER_CONFIG_JSON`] Secret.
pub const KEY_DOCKER_CONFIG_JSON: &str = ".dockerconfigjson";
/// The data key of a [`TYPE_DOCKERCFG`] Secret.
pub const KEY_DOCKERCFG: &str = ".dockercfg";
/// Most bytes a Secret's data may hold in total (Kubernetes' `MaxSecretSize`).
pub const MAX_SECRET_SIZE: usize = 1024 * 1024;

/// Docker Hub's names; any of them as a registry or an `auths` key means Docker Hub.
const DOCKER_HUB_HOSTS: &[&str] = &["docker.io", "index.docker.io", "registry-1.docker.io"];

/// Why `key` is not a valid ConfigMap/Secret data key (Kubernetes' `IsConfigMapKey`), or
/// `None` when it is.
pub fn config_key_error(key: &str) -> Option<&'static str> {
    if key.is_empty()
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Some("a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')");
    }
    if key.len() > 253 {
        return Some("must be no more than 253 characters");
    }
    match key {
        "." => Some("must not be '.'"),
        ".." => Some("must not be '..'"),
        _ if key.starts_with("..") => Some("must not start with '..'"),
        _ => None,
    }
}

/// Decodes one `data` value (standard base64, padded).
pub fn decode_data_value(value: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(value)
        .map_err(|_| "illegal base64 data".to_string())
}

/// The registry map of a docker config file: the `auths` object of a `.dockerconfigjson`, or
/// the whole object of a legacy `.dockercfg`.
pub fn docker_config_auths(secret_type: &str, bytes: &[u8]) -> Result<Map<String, Value>, String> {
    let what = if secret_type == TYPE_DOCKERCFG {
        KEY_DOCKERCFG
    } else {
        KEY_DOCKER_CONFIG_JSON
    };
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| format!("{what} is not valid JSON: {e}"))?;
    let Value::Object(mut map) = value else {
        return Err(format!("{what} must be a JSON object"));
    };
    if secret_type == TYPE_DOCKERCFG {
        return Ok(map);
    }
    match map.remove("auths") {
        Some(Value::Object(auths)) => Ok(auths),
        Some(_) => Err(format!("{what}: `auths` must be an object")),
        None => Err(format!(
            "{what} has no `auths` object (expected {{\"auths\": {{\"REGISTRY\": {{\"auth\": \"...\"}}}}}})"
        )),
    }
}

/// The registry credentials in `secret` (a Secret object as stored: `data` values base64) for
/// `registry` (`host` or `host:port`; a scheme or path is ignored).
///
/// `auths` keys are matched as Kubernetes does: a scheme (`https://`, `http://`) and a
/// `/v1/` or `/v2/` path are ignored; hosts compare case-insensitively, label by label with
/// `*` wildcards (`*.example.com`); ports must be equal (a key without a port matches only a
/// registry without one). `docker.io`, `index.docker.io` and `registry-1.docker.io` are one
/// registry. A key without a path wins over one scoped to a repository path
/// (`host/namespace`), which is used only when nothing else matches (the puller knows the
/// registry here, not the repository); exact hosts win over wildcards.
///
/// Each entry has `auth` (base64 of `user:password`, taking precedence) or
/// `username`/`password`. `Ok(None)`: no entry for this registry (pull anonymously).
pub fn registry_credentials(secret: &Value, registry: &str) -> Result<Option<Credentials>, String> {
    let secret_type = secret["type"].as_str().unwrap_or(TYPE_OPAQUE);
    let key = match secret_type {
        TYPE_DOCKER_CONFIG_JSON => KEY_DOCKER_CONFIG_JSON,
        TYPE_DOCKERCFG => KEY_DOCKERCFG,
        other => {
            return Err(format!(
                "secret is of type {other:?}, not {TYPE_DOCKER_CONFIG_JSON} or {TYPE_DOCKERCFG}"
            ))
        }
    };
    let bytes = match (secret["data"].get(key), secret["stringData"].get(key)) {
        (Some(Value::String(encoded)), _) => {
            decode_data_value(encoded).map_err(|e| format!("data[{key}]: {e}"))?
        }
        (Some(_), _) => return Err(format!("data[{key}] must be a string")),
        (None, Some(Value::String(plain))) => plain.as_bytes().to_vec(),
        (None, _) => return Err(format!("secret has no data key {key}")),
    };
    let auths = docker_config_auths(secret_type, &bytes)?;
    let target = HostPort::parse(registry)
        .ok_or_else(|| format!("{registry:?} is not a registry host or host:port"))?;
    let mut best: Option<((bool, bool), &String, &Value)> = None;
    for (auth_key, entry) in &auths {
        let Some((glob, path)) = parse_auth_key(auth_key) else {
            continue;
        };
        if !glob.matches(&target) {
            continue;
        }
        // Lower ranks win: host-only before path-scoped, exact before wildcard.
        let rank = (!path.is_empty(), glob.host.contains('*'));
        if best.as_ref().is_none_or(|(r, _, _)| rank < *r) {
            best = Some((rank, auth_key, entry));
        }
    }
    match best {
        None => Ok(None),
        Some((_, auth_key, entry)) => entry_credentials(entry)
            .map_err(|e| format!("auths entry {auth_key:?}: {e}"))
            .map(|c| c.filter(|c| !c.username.is_empty() || !c.password.is_empty())),
    }
}

/// The credentials of one `auths` entry; `auth` wins over `username`/`password`.
fn entry_credentials(entry: &Value) -> Result<Option<Credentials>, String> {
    let Value::Object(entry) = entry else {
        return Err("must be an object".into());
    };
    let field = |name: &str| -> Result<String, String> {
        match entry.get(name) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(format!("`{name}` must be a string")),
        }
    };
    let auth = field("auth")?;
    if !auth.is_empty() {
        const FORMAT: &str =
            "unable to parse the `auth` field, must be formatted as base64(username:password)";
        let decoded = decode_data_value(auth.trim()).map_err(|_| FORMAT.to_string())?;
        let text = String::from_utf8(decoded).map_err(|_| FORMAT.to_string())?;
        let (username, password) = text.split_once(':').ok_or_else(|| FORMAT.to_string())?;
        return Ok(Some(Credentials {
            username: username.to_string(),
            password: password.to_string(),
        }));
    }
    Ok(Some(Credentials {
        username: field("username")?,
        password: field("password")?,
    }))
}

/// A registry location: lowercase host (Docker Hub's aliases folded into `docker.io`) and
/// optional port.
#[derive(Debug, PartialEq, Eq)]
struct HostPort {
    host: String,
    port: Option<String>,
}

impl HostPort {
    /// Parses `[scheme://]host[:port][/path]`; the path is dropped.
    fn parse(text: &str) -> Option<HostPort> {
        Self::parse_with_path(text).map(|(hp, _)| hp)
    }

    fn parse_with_path(text: &str) -> Option<(HostPort, &str)> {
        let text = text.trim();
        let lower = text.to_ascii_lowercase();
        let rest = if lower.starts_with("https://") {
            &text[8..]
        } else if lower.starts_with("http://") {
            &text[7..]
        } else {
            text
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']')?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':')?),
            };
            (format!("[{host}]"), port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host.to_string(), Some(port)),
                None => (authority.to_string(), None),
            }
        };
        if let Some(p) = port {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
        }
        if host.is_empty() || host == "[]" {
            return None;
        }
        let mut host = host.to_ascii_lowercase();
        if DOCKER_HUB_HOSTS.contains(&host.as_str()) {
            host = DOCKER_HUB_HOSTS[0].to_string();
        }
        Some((
            HostPort {
                host,
                port: port.map(str::to_string),
            },
            path,
        ))
    }

    /// Whether this (possibly wildcard) location matches `target`: same number of labels, each
    /// matching, and equal ports.
    fn matches(&self, target: &HostPort) -> bool {
        if self.port != target.port {
            return false;
        }
        let globs: Vec<&str> = self.host.split('.').collect();
        let labels: Vec<&str> = target.host.split('.').collect();
        globs.len() == labels.len()
            && globs
                .iter()
                .zip(&labels)
                .all(|(g, l)| wildcard_match(g.as_bytes(), l.as_bytes()))
    }
}

/// An `auths` key as a location and its effective path (`/v1/` and `/v2/` prefixes and a lone
/// `/` removed), as Kubernetes' keyring stores it.
fn parse_auth_key(key: &str) -> Option<(HostPort, String)> {
    let (location, path) = HostPort::parse_with_path(key)?;
    let path = path
        .strip_prefix("/v1/")
        .or_else(|| path.strip_prefix("/v2/"))
        .unwrap_or(path)
        .trim_matches('/');
    Some((location, path.to_string()))
}

/// `*` matches any run of bytes; everything else matches itself.
fn wildcard_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|b| *b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn docker_secret(auths: Value) -> Value {
        let config = json!({ "auths": auths }).to_string();
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "regcred"},
            "type": TYPE_DOCKER_CONFIG_JSON,
            "data": {KEY_DOCKER_CONFIG_JSON: b64(&config)},
        })
    }

    fn creds(user: &str, password: &str) -> Option<Credentials> {
        Some(Credentials {
            username: user.into(),
            password: password.into(),
        })
    }

    #[test]
    fn plain_host_and_host_port_keys() {
        let s = docker_secret(json!({
            "10.77.0.1:5000": {"auth": b64("u:p")},
            "registry.example.com": {"username": "alice", "password": "pw:with:colons"},
        }));
        assert_eq!(
            registry_credentials(&s, "10.77.0.1:5000"),
            Ok(creds("u", "p"))
        );
        assert_eq!(
            registry_credentials(&s, "registry.example.com"),
            Ok(creds("alice", "pw:with:colons"))
        );
        // Ports must agree, as in Kubernetes' keyring.
        assert_eq!(registry_credentials(&s, "10.77.0.1"), Ok(None));
        assert_eq!(
            registry_credentials(&s, "registry.example.com:443"),
            Ok(None)
        );
        assert_eq!(registry_credentials(&s, "other.example.com"), Ok(None));
        // Case-insensitive hosts; a scheme or path on the registry argument is ignored.
        assert_eq!(
            registry_credentials(&s, "Registry.Example.COM"),
            Ok(creds("alice", "pw:with:colons"))
        );
        assert_eq!(
            registry_credentials(&s, "https://10.77.0.1:5000/v2/"),
            Ok(creds("u", "p"))
        );
    }

    #[test]
    fn keys_with_schemes_and_api_paths() {
        let s = docker_secret(json!({
            "https://ghcr.example/v1/": {"auth": b64("a:1")},
            "http://10.0.0.9:5000": {"auth": b64("b:2")},
            "https://quay.example/v2/": {"auth": b64("c:3")},
        }));
        assert_eq!(
            registry_credentials(&s, "ghcr.example"),
            Ok(creds("a", "1"))
        );
        assert_eq!(
            registry_credentials(&s, "10.0.0.9:5000"),
            Ok(creds("b", "2"))
        );
        assert_eq!(
            registry_credentials(&s, "quay.example"),
            Ok(creds("c", "3"))
        );
    }

    #[test]
    fn docker_hub_aliases_match_each_other() {
        for key in [
            "https://index.docker.io/v1/",
            "index.docker.io",
            "docker.io",
            "registry-1.docker.io",
        ] {
            let s = docker_secret(json!({ key: {"auth": b64("hub:pw")} }));
            for registry in ["docker.io", "index.docker.io", "registry-1.docker.io"] {
                assert_eq!(
                    registry_credentials(&s, registry),
                    Ok(creds("hub", "pw")),
                    "{key} vs {registry}"
                );
            }
            assert_eq!(registry_credentials(&s, "quay.io"), Ok(None));
        }
    }

    #[test]
    fn wildcards_and_paths_rank_below_exact_hosts() {
        let s = docker_secret(json!({
            "*.example.com": {"auth": b64("wild:1")},
            "reg.example.com/team": {"auth": b64("path:2")},
            "reg.example.com": {"auth": b64("exact:3")},
        }));
        assert_eq!(
            registry_credentials(&s, "reg.example.com"),
            Ok(creds("exact", "3"))
        );
        assert_eq!(
            registry_credentials(&s, "other.example.com"),
            Ok(creds("wild", "1"))
        );
        // A wildcard covers one label only.
        assert_eq!(registry_credentials(&s, "a.b.example.com"), Ok(None));
        let only_path = docker_secret(json!({"reg.example.com/team": {"auth": b64("path:2")}}));
        assert_eq!(
            registry_credentials(&only_path, "reg.example.com"),
            Ok(creds("path", "2"))
        );
    }

    #[test]
    fn auth_wins_over_username_and_password() {
        let s = docker_secret(json!({
            "r.example": {"auth": b64("from-auth:x"), "username": "u", "password": "p"},
        }));
        assert_eq!(
            registry_credentials(&s, "r.example"),
            Ok(creds("from-auth", "x"))
        );
        let empty = docker_secret(json!({"r.example": {"email": "a@b"}}));
        assert_eq!(registry_credentials(&empty, "r.example"), Ok(None));
    }

    #[test]
    fn legacy_dockercfg() {
        let cfg = json!({"10.77.0.1:5000": {"auth": b64("old:style"), "email": "x@y"}});
        let s = json!({
            "type": TYPE_DOCKERCFG,
            "data": {KEY_DOCKERCFG: b64(&cfg.to_string())},
        });
        assert_eq!(
            registry_credentials(&s, "10.77.0.1:5000"),
            Ok(creds("old", "style"))
        );
    }

    #[test]
    fn bad_input_is_a_clear_error_without_contents() {
        let secret_word = "hunter2";
        let err = |s: &Value| registry_credentials(s, "r.example").unwrap_err();
        let opaque = json!({"type": "Opaque", "data": {"a": b64(secret_word)}});
        assert!(err(&opaque).contains("Opaque"), "{}", err(&opaque));
        let missing = json!({"type": TYPE_DOCKER_CONFIG_JSON, "data": {}});
        assert!(err(&missing).contains("no data key .dockerconfigjson"));
        let bad_b64 = json!({"type": TYPE_DOCKER_CONFIG_JSON,
            "data": {KEY_DOCKER_CONFIG_JSON: format!("{secret_word}!!")}});
        assert!(
            err(&bad_b64).contains("illegal base64"),
            "{}",
            err(&bad_b64)
        );
        let not_json = json!({"type": TYPE_DOCKER_CONFIG_JSON,
            "data": {KEY_DOCKER_CONFIG_JSON: b64(&format!("{{{secret_word}"))}});
        assert!(
            err(&not_json).contains("not valid JSON"),
            "{}",
            err(&not_json)
        );
        let no_auths = json!({"type": TYPE_DOCKER_CONFIG_JSON,
            "data": {KEY_DOCKER_CONFIG_JSON: b64(r#"{"r.example": {}}"#)}});
        assert!(err(&no_auths).contains("no `auths` object"));
        let auths_list = json!({"type": TYPE_DOCKER_CONFIG_JSON,
            "data": {KEY_DOCKER_CONFIG_JSON: b64(r#"{"auths": []}"#)}});
        assert!(err(&auths_list).contains("`auths` must be an object"));
        let bad_auth = docker_secret(json!({"r.example": {"auth": b64(secret_word)}}));
        assert!(err(&bad_auth).contains("base64(username:password)"));
        let bad_auth_b64 = docker_secret(json!({"r.example": {"auth": "%%%"}}));
        assert!(err(&bad_auth_b64).contains("base64(username:password)"));
        let not_object = docker_secret(json!({"r.example": "u:p"}));
        assert!(err(&not_object).contains("must be an object"));
        for e in [err(&bad_b64), err(&not_json), err(&bad_auth)] {
            assert!(!e.contains(secret_word), "{e}");
        }
        // A bad entry for another registry does not matter.
        let other = docker_secret(json!({"x.example": {"auth": "%%%"}}));
        assert_eq!(registry_credentials(&other, "r.example"), Ok(None));
        let good = docker_secret(json!({"r.example": {"auth": b64("u:p")}}));
        assert!(registry_credentials(&good, "").is_err());
        assert!(registry_credentials(&good, "host:port").is_err());
    }

    #[test]
    fn config_keys_follow_kubernetes() {
        for ok in [
            "a",
            ".dockerconfigjson",
            "tls.crt",
            "KEY_NAME",
            "key-name",
            ".a",
        ] {
            assert_eq!(config_key_error(ok), None, "{ok}");
        }
        for bad in ["", ".", "..", "..a", "a/b", "a b", "ü"] {
            assert!(config_key_error(bad).is_some(), "{bad:?}");
        }
        assert!(config_key_error(&"a".repeat(254)).is_some());
    }

    #[test]
    fn wildcards() {
        assert!(wildcard_match(b"*", b"abc"));
        assert!(wildcard_match(b"a*c", b"abbbc"));
        assert!(wildcard_match(b"*b*", b"abc"));
        assert!(!wildcard_match(b"a*d", b"abc"));
        assert!(wildcard_match(b"", b""));
        assert!(!wildcard_match(b"", b"a"));
    }

    fn arbitrary_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            "[ -~]{0,12}".prop_map(Value::String),
            prop_oneof![
                Just(TYPE_DOCKER_CONFIG_JSON),
                Just(TYPE_DOCKERCFG),
                Just(KEY_DOCKER_CONFIG_JSON),
                Just("auths"),
                Just("auth"),
                Just("docker.io"),
            ]
            .prop_map(|s| json!(s)),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        "[a-z.:]{0,8}",
                        Just("type".to_string()),
                        Just("data".to_string()),
                        Just("auths".to_string()),
                        Just("auth".to_string()),
                        Just(KEY_DOCKER_CONFIG_JSON.to_string()),
                    ],
                    inner,
                    0..4
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn arbitrary_secrets_never_panic(secret in arbitrary_json(), registry in "[ -~]{0,20}") {
            let _ = registry_credentials(&secret, &registry);
        }

        #[test]
        fn arbitrary_docker_configs_never_panic(
            config in arbitrary_json(),
            registry in prop_oneof!["[a-z.:*/]{0,20}", Just("docker.io".to_string())],
        ) {
            let secret = json!({
                "type": TYPE_DOCKER_CONFIG_JSON,
                "data": {KEY_DOCKER_CONFIG_JSON: b64(&json!({"auths": config}).to_string())},
            });
            let _ = registry_credentials(&secret, &registry);
        }
    }
}
