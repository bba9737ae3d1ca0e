//! Bearer-token authentication, applied to every route (health and discovery included).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::connections::{self, Conn};
use super::status::ApiError;
use super::ApiState;

/// The token of an `Authorization: Bearer <token>` header, if well-formed.
fn bearer_token(request: &Request) -> Option<&str> {
    bearer_token_of(request.headers())
}

/// The bearer token of a request's `Authorization` header, if it has a non-empty one.
pub(crate) fn bearer_token_of(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Rejects the request with a bare 401 Status unless the backend accepts its bearer token. An
/// accepted request marks its connection authenticated and busy until its response has been
/// sent (`connections.rs`).
pub async fn require_token(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Response {
    let authenticated = bearer_token(&request).is_some_and(|t| state.backend.authenticate(t));
    if !authenticated {
        tracing::debug!(path = %request.uri().path(), "unauthenticated api request");
        return ApiError::Unauthorized.into_response();
    }
    match request.extensions().get::<Arc<Conn>>().cloned() {
        Some(conn) => {
            let busy = conn.begin_request();
            connections::hold_until_sent(next.run(request).await, busy)
        }
        None => next.run(request).await,
    }
}
