//! Contacts under `/api/v1/`: `persons`, `persons/{name}`, `groups`,
//! `groups/{name}` and `groups/{name}/members[/{person}]`, with create,
//! read, update and delete. A refused field answers 400 with `field`
//! naming it. Where `contact` tables are synced to this node (a secondary,
//! or a cluster subscriber) every change answers 409 naming where to make
//! it. A change triggers `sync_on_change` like a rule change.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{ApiError, AppState, read_body, read_only};
use crate::store::StoreError;
use crate::store::contacts::{self, ContactError, Group, Membership, Person};

/// The largest contact request body.
const MAX_BODY: usize = 256 << 10;

impl From<ContactError> for ApiError {
    fn from(e: ContactError) -> Self {
        let field = e.field();
        let err = match e {
            ContactError::Store(s) => return s.into(),
            ContactError::NoPerson(_) | ContactError::NoGroup(_) => {
                ApiError::not_found(e.to_string())
            }
            ContactError::Duplicate { .. } => {
                ApiError::bad_request("duplicate_name", e.to_string())
            }
            ContactError::Invalid { .. } => ApiError::bad_request("invalid_field", e.to_string()),
        };
        err.with_field(field)
    }
}

/// Parse a JSON body of at most [`MAX_BODY`] bytes: unknown fields and
/// wrong types are refused with what serde says.
async fn json_body<T: for<'de> Deserialize<'de>>(body: Body) -> Result<T, ApiError> {
    let bytes = read_body(body, MAX_BODY, "a contact request").await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request("bad_body", format!("not a valid request: {e}")))
}

/// A contact change: refused where contacts are synced here; then `f` in
/// one write; then `sync_on_change` told.
pub(super) async fn change<R: Send + 'static>(
    node: &AppState,
    f: impl FnOnce(&mut rusqlite::Connection) -> Result<R, ContactError> + Send + 'static,
) -> Result<R, ApiError> {
    read_only(node, "contact", "contacts")?;
    let r = node
        .store()
        .write(move |c| Ok::<_, StoreError>(f(c)))
        .await??;
    node.note_tables_changed();
    Ok(r)
}

async fn read<R: Send + 'static>(
    node: &AppState,
    f: impl FnOnce(&rusqlite::Connection) -> Result<R, ContactError> + Send + 'static,
) -> Result<R, ApiError> {
    Ok(node
        .store()
        .read(move |c| Ok::<_, StoreError>(f(c)))
        .await??)
}

pub(super) async fn list_persons(
    State(node): State<AppState>,
) -> Result<Json<Vec<Person>>, ApiError> {
    Ok(Json(read(&node, contacts::list_persons).await?))
}

pub(super) async fn get_person(
    State(node): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Person>, ApiError> {
    let n = name.clone();
    read(&node, move |c| contacts::get_person(c, &n))
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no person named `{name}`")))
}

/// The body of `PUT /persons/{name}` (the name is the path's).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PersonBody {
    #[serde(default)]
    address: String,
    #[serde(default)]
    addresses: std::collections::BTreeMap<String, String>,
}

/// `POST /persons`: a new person (201); a name in use is refused.
pub(super) async fn create_person(
    State(node): State<AppState>,
    body: Body,
) -> Result<Response, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct New {
        name: String,
        #[serde(flatten)]
        rest: PersonBody,
    }
    let New { name, rest } = json_body(body).await?;
    save(node, name, rest, true).await
}

/// `PUT /persons/{name}`: create (201) or replace (200).
pub(super) async fn put_person(
    State(node): State<AppState>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let rest: PersonBody = json_body(body).await?;
    save(node, name, rest, false).await
}

async fn save(
    node: AppState,
    name: String,
    b: PersonBody,
    create: bool,
) -> Result<Response, ApiError> {
    let p = Person {
        name: name.clone(),
        address: b.address,
        addresses: b.addresses,
        groups: Vec::new(),
    };
    let new = change(&node, move |c| contacts::save_person(c, &p, create)).await?;
    let saved = read(&node, move |c| contacts::get_person(c, &name))
        .await?
        .ok_or_else(|| ApiError::not_found("the person was deleted meanwhile"))?;
    let status = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(saved)).into_response())
}

pub(super) async fn delete_person(
    State(node): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let n = name.clone();
    if change(&node, move |c| contacts::delete_person(c, &n)).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no person named `{name}`")))
    }
}

pub(super) async fn list_groups(
    State(node): State<AppState>,
) -> Result<Json<Vec<Group>>, ApiError> {
    Ok(Json(read(&node, contacts::list_groups).await?))
}

pub(super) async fn get_group(
    State(node): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Group>, ApiError> {
    let n = name.clone();
    read(&node, move |c| contacts::get_group(c, &n))
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no group named `{name}`")))
}

/// `POST /groups`: `{"name", "members": [person names]}` (201).
pub(super) async fn create_group(
    State(node): State<AppState>,
    body: Body,
) -> Result<Response, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct New {
        name: String,
        #[serde(default)]
        members: Vec<String>,
    }
    let New { name, members } = json_body(body).await?;
    let g = Group { name, members };
    let shown = g.clone();
    change(&node, move |c| contacts::create_group(c, &g)).await?;
    let n = shown.name.clone();
    let saved = read(&node, move |c| contacts::get_group(c, &n))
        .await?
        .unwrap_or(shown);
    Ok((StatusCode::CREATED, Json(saved)).into_response())
}

pub(super) async fn delete_group(
    State(node): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let n = name.clone();
    if change(&node, move |c| contacts::delete_group(c, &n)).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no group named `{name}`")))
    }
}

pub(super) async fn get_members(
    State(node): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Vec<String>>, ApiError> {
    get_group(State(node), Path(name))
        .await
        .map(|Json(g)| Json(g.members))
}

/// A members body: `{"person": NAME}` or `{"persons": [NAME...]}` to add,
/// a bare array of names to replace.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum MembersBody {
    One { person: String },
    Many { persons: Vec<String> },
}

/// `POST /groups/{name}/members`: add persons; the members after.
pub(super) async fn add_members(
    State(node): State<AppState>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Json<Vec<String>>, ApiError> {
    let names = match json_body(body).await? {
        MembersBody::One { person } => vec![person],
        MembersBody::Many { persons } => persons,
    };
    members(&node, name, names, Membership::Add).await
}

/// `PUT /groups/{name}/members`: `[NAME...]` becomes the members.
pub(super) async fn put_members(
    State(node): State<AppState>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Json<Vec<String>>, ApiError> {
    let names: Vec<String> = json_body(body).await?;
    members(&node, name, names, Membership::Replace).await
}

/// `DELETE /groups/{name}/members/{person}`: the members after.
pub(super) async fn remove_member(
    State(node): State<AppState>,
    Path((name, person)): Path<(String, String)>,
) -> Result<Json<Vec<String>>, ApiError> {
    members(&node, name, vec![person], Membership::Remove).await
}

async fn members(
    node: &AppState,
    group: String,
    names: Vec<String>,
    how: Membership,
) -> Result<Json<Vec<String>>, ApiError> {
    Ok(Json(
        change(node, move |c| {
            contacts::change_members(c, &group, &names, how)
        })
        .await?,
    ))
}
