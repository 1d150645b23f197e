//! Operator commands of a pair: `POST /api/v1/failback`, `/switchover`
//! and `/sync`.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState, Failover, Pair, state_name};
use crate::failover::machine::Command;

/// The answer to failback and switchover.
#[derive(Debug, Clone, Serialize)]
pub struct CommandReply {
    pub result: &'static str,
    pub state: &'static str,
    pub fs: u8,
    pub epoch: u64,
}

async fn pair_command(
    failover: Option<Failover>,
    command: Command,
) -> Result<Json<CommandReply>, ApiError> {
    let Some(f) = failover else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "wrong_role",
            "this node is standalone: failback and switchover need a primary/secondary pair",
        ));
    };
    match f.command(command).await {
        Ok(result) => {
            let v = f.view();
            Ok(Json(CommandReply {
                result,
                state: state_name(v.active),
                fs: v.fs,
                epoch: v.epoch,
            }))
        }
        Err(why) => Err(ApiError::new(StatusCode::CONFLICT, "refused", why)),
    }
}

pub(super) async fn failback(Extension(failover): Pair) -> Result<Json<CommandReply>, ApiError> {
    pair_command(failover, Command::Failback).await
}

pub(super) async fn switchover(Extension(failover): Pair) -> Result<Json<CommandReply>, ApiError> {
    pair_command(failover, Command::Switchover).await
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct SyncQuery {
    #[serde(default)]
    force: bool,
}

pub(super) async fn sync_now(
    State(node): State<AppState>,
    Extension(failover): Pair,
    Query(q): Query<SyncQuery>,
) -> Result<Json<crate::sync::push::SyncResult>, ApiError> {
    use crate::sync::SyncError;
    let Some(f) = failover else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "wrong_role",
            "this node is standalone: table sync needs a pair",
        ));
    };
    match crate::sync::push::sync_now(&node, &f, q.force).await {
        Ok(r) => Ok(Json(r)),
        Err(SyncError::Precondition(why)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "precondition",
            format!("table sync refused: {why}"),
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "sync_failed",
            e.to_string(),
        )),
    }
}
