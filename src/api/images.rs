//! shoal's image routes.
//!
//! - `GET /shoal/v1/images` lists the node's images.
//! - `POST /shoal/v1/images/import` streams an image archive (the raw body,
//!   `application/x-tar`) to a temporary file under `Backend::upload_dir()` with its own size
//!   limit (`ApiConfig::max_image_bytes`), hands it to `Backend::import_image` and deletes it.
//! - `POST /shoal/v1/images/pull` takes a JSON [`PullRequest`] and answers
//!   `application/x-ndjson`: one [`PullEvent`] per line, written as the puller produces it,
//!   ending with `done` or `error`.
//! - `DELETE /shoal/v1/images?reference=REF` removes a reference (a query parameter, since
//!   references hold `/`, `:` and `@`).
//! - `GET /shoal/v1/blobs/sha256:<hex>` and `POST /shoal/v1/blobs/sha256:<hex>/fetch` (a JSON
//!   [`FetchThrough`]) stream a blob to a peer. They bypass user authorization (a blob is
//!   addressed by content, not by namespace), so they serve the cluster-internal token only:
//!   a user's token gets 403.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{self, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use super::status::ApiError;
use super::ApiState;
use crate::model::image::{BlobStream, FetchThrough, PullEvent, PullRequest};
use crate::model::reference;

/// Largest body of a pull or fetch-through request: a reference and credentials.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Removes the upload when dropped: after the import, on error, or when the client goes away
/// mid-upload (the handler's future is dropped).
struct TempUpload(PathBuf);

impl Drop for TempUpload {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub async fn list(State(state): State<ApiState>) -> Response {
    Json(state.backend.images()).into_response()
}

fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let media = super::body::media_type(headers, "application/x-tar");
    match media.as_str() {
        "application/x-tar" | "application/octet-stream" | "application/tar" => Ok(()),
        other => Err(ApiError::UnsupportedMediaType(format!(
            "application/x-tar (got {other})"
        ))),
    }
}

/// Streams `body` into `path`, refusing more than `limit` bytes.
async fn receive(mut body: Body, path: &Path, limit: u64) -> Result<u64, ApiError> {
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| ApiError::Internal(format!("creating {}: {e}", path.display())))?;
    let mut written: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::BadRequest(format!("reading the request body: {e}")))?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        written = written.saturating_add(data.len() as u64);
        if written > limit {
            return Err(ApiError::TooLarge {
                limit: usize::try_from(limit).unwrap_or(usize::MAX),
            });
        }
        file.write_all(data)
            .await
            .map_err(|e| ApiError::Internal(format!("writing {}: {e}", path.display())))?;
    }
    file.flush()
        .await
        .map_err(|e| ApiError::Internal(format!("writing {}: {e}", path.display())))?;
    Ok(written)
}

pub async fn import(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_content_type(&headers)?;
    let limit = state.config.max_image_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared.filter(|len| *len > limit) {
        // Read (a bounded amount of) what the client is still sending, so it reads the 413
        // instead of a broken pipe.
        if len <= super::body::DRAIN_REJECTED_BYTES as u64 {
            super::body::drain(body, len as usize).await;
        }
        return Err(ApiError::TooLarge {
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
        });
    }
    let dir = state
        .backend
        .upload_dir()
        .ok_or_else(|| ApiError::Unavailable("this node has no image store".into()))?;
    let upload = TempUpload(dir.join(format!("upload-{}.tar", uuid::Uuid::new_v4())));
    let received = tokio::time::timeout(
        state.config.image_upload_timeout,
        receive(body, &upload.0, limit),
    )
    .await
    .map_err(|_| ApiError::Timeout)??;
    if received == 0 {
        return Err(ApiError::BadRequest("the image archive is empty".into()));
    }
    let images = state.backend.import_image(upload.0.clone()).await?;
    drop(upload);
    Ok(Json(images).into_response())
}

/// Decodes a small JSON request body; anything but JSON is a 415, bad JSON a 400.
async fn json_body<T: DeserializeOwned>(
    state: &ApiState,
    headers: &HeaderMap,
    body: Body,
    what: &str,
) -> Result<T, ApiError> {
    let media = super::body::media_type(headers, "application/json");
    if media != "application/json" {
        return Err(ApiError::UnsupportedMediaType(format!(
            "application/json (got {media})"
        )));
    }
    let limit = MAX_REQUEST_BYTES.min(state.config.max_body_bytes);
    let bytes = super::body::read_body(body, headers, limit).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("the body is not a valid {what}: {e}")))
}

fn check_reference(r: &str) -> Result<(), ApiError> {
    reference::parse(r)
        .map(|_| ())
        .map_err(|e| ApiError::BadRequest(format!("invalid image reference: {e}")))
}

pub async fn pull(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let req: PullRequest = json_body(&state, &headers, body, "pull request").await?;
    check_reference(&req.reference)?;
    let lines = until_result(state.backend.pull_image(req)).map(|event| {
        let mut line = serde_json::to_vec(&event).unwrap_or_default();
        line.push(b'\n');
        Ok::<_, Infallible>(Bytes::from(line))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response())
}

/// `events` up to and including the first `Done` or `Error`; an `Error` of its own when the
/// stream ends before either, so a client always learns how the pull ended.
fn until_result(events: BoxStream<'static, PullEvent>) -> BoxStream<'static, PullEvent> {
    futures::stream::unfold(Some(events), |events| async move {
        let mut events = events?;
        match events.next().await {
            Some(event) => {
                let last = matches!(event, PullEvent::Done { .. } | PullEvent::Error { .. });
                Some((event, (!last).then_some(events)))
            }
            None => Some((
                PullEvent::Error {
                    message: "the pull ended without a result".into(),
                },
                None,
            )),
        }
    })
    .boxed()
}

pub async fn remove(State(state): State<ApiState>, uri: Uri) -> Result<Response, ApiError> {
    let Query(query) = Query::<BTreeMap<String, String>>::try_from_uri(&uri)
        .map_err(|e| ApiError::BadRequest(format!("invalid query: {e}")))?;
    let reference = query
        .get("reference")
        .filter(|r| !r.is_empty())
        .ok_or_else(|| {
            ApiError::BadRequest("the image to remove is missing: ?reference=REF".into())
        })?;
    check_reference(reference)?;
    state.backend.remove_image(reference).await?;
    Ok(Json(json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": { "name": reference, "kind": "images" },
    }))
    .into_response())
}

/// The token of an `Authorization: Bearer <token>` header (the auth layer has checked it).
fn require_internal(state: &ApiState, headers: &HeaderMap) -> Result<(), ApiError> {
    if super::auth::bearer_token_of(headers).is_some_and(|t| state.backend.is_internal(t)) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "blobs are served to cluster members only".into(),
        ))
    }
}

/// The hex of a `sha256:<64 lower-case hex>` path segment.
fn blob_hex(digest: Result<extract::Path<String>, PathRejection>) -> Result<String, ApiError> {
    let invalid = || {
        ApiError::BadRequest(
            "invalid blob digest: expected sha256:<64 lower-case hex digits>".into(),
        )
    };
    let extract::Path(digest) = digest.map_err(|_| invalid())?;
    match digest.strip_prefix("sha256:") {
        Some(hex) if reference::is_sha256_hex(hex) => Ok(hex.to_string()),
        _ => Err(invalid()),
    }
}

fn blob_response(hex: &str, blob: BlobStream) -> Response {
    let mut response = Body::from_stream(blob.body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(digest) = HeaderValue::from_str(&format!("sha256:{hex}")) {
        headers.insert("docker-content-digest", digest);
    }
    if let Some(size) = blob.size {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    }
    response
}

pub async fn blob(
    State(state): State<ApiState>,
    headers: HeaderMap,
    digest: Result<extract::Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    require_internal(&state, &headers)?;
    let hex = blob_hex(digest)?;
    let blob = state
        .backend
        .serve_blob(&hex)
        .ok_or_else(|| ApiError::Missing(format!("blob sha256:{hex}")))?;
    Ok(blob_response(&hex, blob))
}

pub async fn fetch(
    State(state): State<ApiState>,
    headers: HeaderMap,
    digest: Result<extract::Path<String>, PathRejection>,
    body: Body,
) -> Result<Response, ApiError> {
    require_internal(&state, &headers)?;
    let hex = blob_hex(digest)?;
    let req: FetchThrough = json_body(&state, &headers, body, "fetch-through request").await?;
    check_reference(&req.reference)?;
    // The request itself was checked above: whatever fails now failed upstream (the registry
    // refused, or could not be reached).
    match state.backend.fetch_through(&hex, req).await {
        Ok(blob) => Ok(blob_response(&hex, blob)),
        Err(e) => Ok(bad_gateway(format!("fetching blob sha256:{hex}: {e}"))),
    }
}

/// A 502 Status: the upstream (the registry, for a fetch-through) failed.
fn bad_gateway(message: String) -> Response {
    tracing::debug!(%message, "fetch-through failed");
    let status = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "BadGateway",
        "code": 502,
    });
    (StatusCode::BAD_GATEWAY, Json(status)).into_response()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::http::{Method, Request};
    use serde_json::Value;
    use tokio::sync::mpsc;
    use tower::ServiceExt;

    use super::*;
    use crate::api::backend::{AgentStatus, Backend, BackendError, BoxFuture, ObjectKey};
    use crate::api::objects::ResourceVersions;
    use crate::api::{ApiConfig, ImageSummary};
    use crate::model::NodeView;

    const USER: &str = "user-token";
    const INTERNAL: &str = "internal-token";
    const HELD: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const ABSENT: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    /// A backend with an image store only: scripted pulls, removals and blobs.
    #[derive(Default)]
    struct Fake {
        removed: Mutex<Vec<String>>,
        pulled: Mutex<Vec<PullRequest>>,
        fetched: Mutex<Vec<(String, FetchThrough)>>,
        /// Events of the next `live` pull, sent by the test.
        live: Mutex<Option<mpsc::UnboundedReceiver<PullEvent>>>,
    }

    fn done() -> PullEvent {
        PullEvent::Done {
            image: ImageSummary {
                reference: "shoal.test/app:1".into(),
                digest: format!("sha256:{HELD}"),
                size: 11,
            },
        }
    }

    fn hello() -> BlobStream {
        BlobStream {
            size: Some(11),
            body: futures::stream::iter([Ok(Bytes::from("hello ")), Ok(Bytes::from("world"))])
                .boxed(),
        }
    }

    impl Backend for Fake {
        fn node_name(&self) -> String {
            "n1".into()
        }
        fn nodes(&self) -> Vec<NodeView> {
            Vec::new()
        }
        fn delete_node(&self, _name: &str) -> Result<(), BackendError> {
            Ok(())
        }
        fn list_objects(&self, _resource: &str, _namespace: Option<&str>) -> Vec<Value> {
            Vec::new()
        }
        fn get_object(&self, _key: &ObjectKey) -> Option<Value> {
            None
        }
        fn put_object(&self, _key: &ObjectKey, _object: Value) -> Result<(), BackendError> {
            Ok(())
        }
        fn delete_object(&self, _key: &ObjectKey) -> Result<Option<Value>, BackendError> {
            Ok(None)
        }
        fn authenticate(&self, token: &str) -> bool {
            token == USER || token == INTERNAL
        }
        fn status(&self) -> AgentStatus {
            AgentStatus {
                node: "n1".into(),
                cluster_id: "c".into(),
                generation: 1,
                epoch: 1,
                view: String::new(),
                leader: None,
                members: Vec::new(),
                heads: Vec::new(),
                doc_bytes: 0,
                admitted_peers: Vec::new(),
                ..Default::default()
            }
        }
        fn backup(&self) -> Result<Vec<u8>, BackendError> {
            Ok(Vec::new())
        }
        fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
            tokio::sync::watch::channel(0).1
        }
        fn pull_image(&self, req: PullRequest) -> BoxStream<'static, PullEvent> {
            self.pulled.lock().unwrap().push(req.clone());
            let resolved = PullEvent::Resolved {
                digest: format!("sha256:{HELD}"),
                blobs: vec![(format!("sha256:{HELD}"), 11)],
            };
            let blob = PullEvent::Blob {
                digest: format!("sha256:{HELD}"),
                done: 11,
                total: 11,
                source: "peer n2".into(),
            };
            let error = PullEvent::Error {
                message: "manifest unknown".into(),
            };
            if req.reference.contains("live") {
                let rx = self.live.lock().unwrap().take().expect("one live pull");
                return tokio_stream_of(rx);
            }
            let events = if req.reference.contains("missing") {
                vec![resolved, error]
            } else if req.reference.contains("silent") {
                vec![resolved]
            } else {
                // An event after `Done` must not reach the client.
                vec![
                    resolved,
                    blob,
                    PullEvent::Unpacking,
                    done(),
                    PullEvent::Unpacking,
                ]
            };
            futures::stream::iter(events).boxed()
        }
        fn remove_image(&self, reference: &str) -> BoxFuture<'static, Result<(), BackendError>> {
            self.removed.lock().unwrap().push(reference.to_string());
            let result = match reference {
                "shoal.test/busy:1" => Err(BackendError::Conflict(
                    "image is in use by container default/web/app".into(),
                )),
                "shoal.test/gone:1" => {
                    Err(BackendError::NotFound("image shoal.test/gone:1".into()))
                }
                _ => Ok(()),
            };
            Box::pin(async move { result })
        }
        fn serve_blob(&self, hex: &str) -> Option<BlobStream> {
            (hex == HELD).then(hello)
        }
        fn fetch_through(
            &self,
            hex: &str,
            req: FetchThrough,
        ) -> BoxFuture<'static, Result<BlobStream, BackendError>> {
            self.fetched.lock().unwrap().push((hex.to_string(), req));
            let result = if hex == HELD {
                Ok(hello())
            } else {
                // The agent reports a registry's refusal as a caller error.
                Err(BackendError::Invalid(
                    "registry shoal.test: blob unknown to registry".into(),
                ))
            };
            Box::pin(async move { result })
        }
        fn is_internal(&self, token: &str) -> bool {
            token == INTERNAL
        }
    }

    fn tokio_stream_of(
        mut rx: mpsc::UnboundedReceiver<PullEvent>,
    ) -> BoxStream<'static, PullEvent> {
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
    }

    fn app(fake: Arc<Fake>) -> axum::Router {
        super::super::router::router(ApiState {
            backend: fake,
            config: Arc::new(ApiConfig::default()),
            versions: Arc::new(ResourceVersions::default()),
            log: Arc::new(super::super::changelog::ChangeLog::new(1, 16)),
            shutdown: tokio::sync::watch::channel(false).1,
            exec_sessions: Arc::new(tokio::sync::Semaphore::new(1)),
        })
    }

    fn request(method: Method, uri: &str, token: &str, body: impl Into<Body>) -> Request<Body> {
        Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.into())
            .unwrap()
    }

    async fn send(fake: &Arc<Fake>, req: Request<Body>) -> (StatusCode, HeaderMap, Vec<u8>) {
        let resp = app(fake.clone()).oneshot(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes().to_vec();
        (parts.status, parts.headers, bytes)
    }

    fn events(body: &[u8]) -> Vec<PullEvent> {
        body.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    }

    fn message(body: &[u8]) -> String {
        let v: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["kind"], "Status");
        v["message"].as_str().unwrap().to_string()
    }

    #[tokio::test]
    async fn pull_streams_one_event_per_line_and_stops_at_the_result() {
        let fake = Arc::new(Fake::default());
        let body =
            r#"{"reference":"shoal.test/app:1","credentials":{"username":"u","password":"p"}}"#;
        let (status, headers, body) = send(
            &fake,
            request(Method::POST, "/shoal/v1/images/pull", USER, body),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], "application/x-ndjson");
        let events = events(&body);
        assert_eq!(events.len(), 4, "{events:?}");
        assert!(matches!(events[0], PullEvent::Resolved { .. }));
        assert!(matches!(&events[1], PullEvent::Blob { source, .. } if source == "peer n2"));
        assert_eq!(events[3], done());
        let pulled = fake.pulled.lock().unwrap();
        assert_eq!(pulled[0].reference, "shoal.test/app:1");
        assert_eq!(pulled[0].credentials.as_ref().unwrap().username, "u");
        // The wire form is the serde-tagged enum.
        let first: Value =
            serde_json::from_slice(body.split(|b| *b == b'\n').next().unwrap()).unwrap();
        assert_eq!(first["event"], "resolved");
    }

    #[tokio::test]
    async fn pull_reports_errors_and_streams_that_end_early() {
        let fake = Arc::new(Fake::default());
        let (status, _, body) = send(
            &fake,
            request(
                Method::POST,
                "/shoal/v1/images/pull",
                USER,
                r#"{"reference":"shoal.test/missing:1"}"#,
            ),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            events(&body).last(),
            Some(&PullEvent::Error {
                message: "manifest unknown".into()
            })
        );
        let (_, _, body) = send(
            &fake,
            request(
                Method::POST,
                "/shoal/v1/images/pull",
                USER,
                r#"{"reference":"shoal.test/silent:1"}"#,
            ),
        )
        .await;
        let events = events(&body);
        assert_eq!(events.len(), 2);
        assert_eq!(
            events[1],
            PullEvent::Error {
                message: "the pull ended without a result".into()
            }
        );
    }

    #[tokio::test]
    async fn pull_events_reach_the_client_as_they_happen() {
        let fake = Arc::new(Fake::default());
        let (tx, rx) = mpsc::unbounded_channel();
        *fake.live.lock().unwrap() = Some(rx);
        let resp = app(fake.clone())
            .oneshot(request(
                Method::POST,
                "/shoal/v1/images/pull",
                USER,
                r#"{"reference":"shoal.test/live:1"}"#,
            ))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let mut body = resp.into_body();
        tx.send(PullEvent::Unpacking).unwrap();
        // The first line arrives while the pull is still running (the sender is alive).
        let frame = tokio::time::timeout(std::time::Duration::from_secs(10), body.frame())
            .await
            .expect("the first event is sent before the pull ends")
            .unwrap()
            .unwrap();
        assert_eq!(
            frame.data_ref().unwrap().as_ref(),
            b"{\"event\":\"unpacking\"}\n"
        );
        tx.send(done()).unwrap();
        let rest = body.collect().await.unwrap().to_bytes();
        assert_eq!(events(&rest), vec![done()]);
    }

    #[tokio::test]
    async fn pull_refuses_bad_requests() {
        let fake = Arc::new(Fake::default());
        let cases = [
            (
                "{not json",
                StatusCode::BAD_REQUEST,
                "not a valid pull request",
            ),
            (
                r#"{"credentials":null}"#,
                StatusCode::BAD_REQUEST,
                "reference",
            ),
            (
                r#"{"reference":"Shoal.test/UPPER:1"}"#,
                StatusCode::BAD_REQUEST,
                "invalid image reference",
            ),
            (
                r#"{"reference":""}"#,
                StatusCode::BAD_REQUEST,
                "empty image reference",
            ),
        ];
        for (body, code, needle) in cases {
            let (status, _, out) = send(
                &fake,
                request(Method::POST, "/shoal/v1/images/pull", USER, body),
            )
            .await;
            assert_eq!(status, code, "{body}");
            assert!(message(&out).contains(needle), "{body}: {}", message(&out));
        }
        let huge = format!(r#"{{"reference":"{}"}}"#, "a".repeat(MAX_REQUEST_BYTES));
        let (status, _, _) = send(
            &fake,
            request(Method::POST, "/shoal/v1/images/pull", USER, huge),
        )
        .await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        let mut req = request(
            Method::POST,
            "/shoal/v1/images/pull",
            USER,
            r#"{"reference":"x"}"#,
        );
        req.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        let (status, _, _) = send(&fake, req).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(fake.pulled.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn remove_maps_backend_answers_to_statuses() {
        let fake = Arc::new(Fake::default());
        let digest_ref = format!("shoal.test/app@sha256:{HELD}");
        let encoded = format!("shoal.test%2Fapp%40sha256%3A{HELD}");
        let (status, _, body) = send(
            &fake,
            request(
                Method::DELETE,
                &format!("/shoal/v1/images?reference={encoded}"),
                USER,
                "",
            ),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["status"], "Success");
        assert_eq!(v["details"]["name"], digest_ref.as_str());
        // Unencoded `/` and `:` are legal in a query too.
        let (status, _, _) = send(
            &fake,
            request(
                Method::DELETE,
                "/shoal/v1/images?reference=localhost:5000/a/b:2",
                USER,
                "",
            ),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            *fake.removed.lock().unwrap(),
            vec![digest_ref, "localhost:5000/a/b:2".to_string()]
        );

        let (status, _, body) = send(
            &fake,
            request(
                Method::DELETE,
                "/shoal/v1/images?reference=shoal.test/busy:1",
                USER,
                "",
            ),
        )
        .await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(
            message(&body),
            "image is in use by container default/web/app"
        );
        let (status, _, body) = send(
            &fake,
            request(
                Method::DELETE,
                "/shoal/v1/images?reference=shoal.test/gone:1",
                USER,
                "",
            ),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(message(&body), "image shoal.test/gone:1 not found");

        for uri in [
            "/shoal/v1/images",
            "/shoal/v1/images?reference=",
            "/shoal/v1/images?reference=a%20b",
            "/shoal/v1/images?reference=x@md5:00",
        ] {
            let (status, _, _) = send(&fake, request(Method::DELETE, uri, USER, "")).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
        }
        assert_eq!(fake.removed.lock().unwrap().len(), 4);
    }

    #[tokio::test]
    async fn blobs_are_served_to_the_internal_token_only() {
        let fake = Arc::new(Fake::default());
        let uri = format!("/shoal/v1/blobs/sha256:{HELD}");
        let (status, _, body) = send(&fake, request(Method::GET, &uri, USER, "")).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(message(&body).contains("cluster members only"));
        let (status, _, _) = send(&fake, request(Method::GET, &uri, "nobody", "")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);

        let (status, headers, body) = send(&fake, request(Method::GET, &uri, INTERNAL, "")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, b"hello world");
        assert_eq!(headers[header::CONTENT_LENGTH], "11");
        assert_eq!(headers[header::CONTENT_TYPE], "application/octet-stream");
        assert_eq!(headers["docker-content-digest"], format!("sha256:{HELD}"));
        // A percent-encoded `:` is decoded.
        let (status, _, _) = send(
            &fake,
            request(
                Method::GET,
                &format!("/shoal/v1/blobs/sha256%3A{HELD}"),
                INTERNAL,
                "",
            ),
        )
        .await;
        assert_eq!(status, StatusCode::OK);

        let (status, _, body) = send(
            &fake,
            request(
                Method::GET,
                &format!("/shoal/v1/blobs/sha256:{ABSENT}"),
                INTERNAL,
                "",
            ),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(message(&body), format!("blob sha256:{ABSENT} not found"));

        for digest in [
            "sha256:abc".to_string(),
            format!("sha512:{HELD}"),
            format!("sha256:{}", HELD.to_uppercase().replace('1', "A")),
            format!("sha256:{HELD}0"),
            "sha256:%FF".to_string(),
        ] {
            let (status, _, _) = send(
                &fake,
                request(
                    Method::GET,
                    &format!("/shoal/v1/blobs/{digest}"),
                    INTERNAL,
                    "",
                ),
            )
            .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{digest}");
        }
    }

    #[tokio::test]
    async fn fetch_through_streams_or_answers_bad_gateway() {
        let fake = Arc::new(Fake::default());
        let body = r#"{"reference":"shoal.test/app:1","size":11}"#;
        let uri = format!("/shoal/v1/blobs/sha256:{HELD}/fetch");
        let (status, _, _) = send(&fake, request(Method::POST, &uri, USER, body)).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(fake.fetched.lock().unwrap().is_empty());

        let (status, headers, out) = send(&fake, request(Method::POST, &uri, INTERNAL, body)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(out, b"hello world");
        assert_eq!(headers["docker-content-digest"], format!("sha256:{HELD}"));
        let (hex, req) = fake.fetched.lock().unwrap()[0].clone();
        assert_eq!(hex, HELD);
        assert_eq!(req.size, 11);

        let (status, _, out) = send(
            &fake,
            request(
                Method::POST,
                &format!("/shoal/v1/blobs/sha256:{ABSENT}/fetch"),
                INTERNAL,
                body,
            ),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["code"], 502);
        assert!(v["message"]
            .as_str()
            .unwrap()
            .contains("blob unknown to registry"));

        let (status, _, _) = send(&fake, request(Method::POST, &uri, INTERNAL, "{")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _, _) = send(
            &fake,
            request(Method::POST, "/shoal/v1/blobs/nope/fetch", INTERNAL, body),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(fake.fetched.lock().unwrap().len(), 2);
    }
}
