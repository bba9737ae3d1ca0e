//! shoal's image routes: `POST /shoal/v1/images/import` streams an image archive (the raw
//! body, `application/x-tar`) to a temporary file under `Backend::upload_dir()` with its own
//! size limit (`ApiConfig::max_image_bytes`), hands it to `Backend::import_image` and deletes
//! it; `GET /shoal/v1/images` lists the node's images.

use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;

use super::status::ApiError;
use super::ApiState;

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
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/x-tar")
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
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
