//! The peer's calls, signed with the shared secret: `POST
//! /internal/v1/sync` (a snapshot to import) and `GET
//! /internal/v1/snapshot` (a rebuilt primary pulls the tables).

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};
use crate::internal_auth::AuthError;
use crate::sync::SyncError;
use crate::sync::receive::{self, ReceiveError};

pub(super) async fn sync(
    State(node): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<crate::sync::SyncStats>, ApiError> {
    receive::receive(&node, &headers, body)
        .await
        .map(Json)
        .map_err(receive_error)
}

pub(super) async fn pull(
    State(node): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let bytes = receive::serve_pull(&node, &headers)
        .await
        .map_err(receive_error)?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

fn receive_error(e: ReceiveError) -> ApiError {
    match e {
        ReceiveError::Auth(AuthError::Store(s)) => s.into(),
        ReceiveError::Auth(AuthError::Body) => {
            ApiError::bad_request("bad_body", AuthError::Body.to_string())
        }
        ReceiveError::Auth(a) => ApiError::unauthorized(a.to_string()),
        ReceiveError::TooLarge(m) => ApiError::too_large(m),
        ReceiveError::WrongRole(m) => ApiError::new(StatusCode::CONFLICT, "wrong_role", m),
        ReceiveError::Sync(SyncError::Precondition(p)) => {
            ApiError::new(StatusCode::CONFLICT, "busy", p.to_string())
        }
        ReceiveError::Sync(SyncError::Store(s)) => s.into(),
        ReceiveError::Sync(e) => ApiError::bad_request("refused", e.to_string()),
    }
}
