//! The node's history: `GET /api/v1/events`, `/notifications` (with
//! `?node=` for rows copied back from the peer) and `/failovers`.

use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;

use super::{ApiError, AppState};
use crate::store::{events, outbox};

#[derive(Debug, Deserialize)]
pub(super) struct EventsQuery {
    #[serde(default)]
    after: i64,
    #[serde(default = "default_limit")]
    limit: u32,
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct NotificationsQuery {
    node: Option<String>,
    status: Option<String>,
    #[serde(default = "default_limit")]
    limit: u32,
}

fn default_limit() -> u32 {
    100
}

pub(super) async fn list_events(
    State(node): State<AppState>,
    Query(q): Query<EventsQuery>,
) -> Result<Json<Vec<events::EventView>>, ApiError> {
    let limit = q.limit.clamp(1, 1000);
    if q.after < 0 {
        return Err(ApiError::bad_request(
            "bad_query",
            "`after` is an event id: 0 or more",
        ));
    }
    Ok(Json(
        node.store()
            .read(move |c| events::list(c, q.after as u64, limit, q.name.as_deref()))
            .await?,
    ))
}

pub(super) async fn list_notifications(
    State(node): State<AppState>,
    Query(q): Query<NotificationsQuery>,
) -> Result<Json<Vec<outbox::NotificationView>>, ApiError> {
    let limit = q.limit.clamp(1, 1000);
    Ok(Json(
        node.store()
            .read(move |c| outbox::list(c, q.node.as_deref(), q.status.as_deref(), limit))
            .await?,
    ))
}

pub(super) async fn list_failovers(
    State(node): State<AppState>,
) -> Result<Json<Vec<crate::store::failover::FailoverRow>>, ApiError> {
    Ok(Json(
        node.store()
            .read(|c| crate::store::failover::list(c, 1000))
            .await?,
    ))
}
