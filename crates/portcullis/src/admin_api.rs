//! The admin REST API: a `builtin = "admin-api"` route, so the gateway authenticates and
//! authorizes every call with the same policies as any route (scopes such as
//! `portcullis/admin.read` for automation, groups for signed-in administrators) and applies the
//! CSRF rule to cookie-authenticated writes. What the API does is what the CLI does: the same
//! user-pool and store operations, recorded in the audit log with the caller as the actor.
//!
//! Errors are `application/problem+json` (RFC 9457). Documents carry an `ETag`: a policy write
//! must send it back in `If-Match` (428 without, 412 when someone else changed it first); user
//! and client writes honour one when sent (edits of attributes and client settings merge field
//! by field without). Lists are pages (`items`, and `next` to pass as `after`).
//! The OpenAPI 3.1 document is generated from these handlers by `utoipa`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use portcullis_gateway::authn::Identity;
use portcullis_idp::audit::Actor;
use portcullis_idp::{AddUser, PoolError};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::{OpenApi, ToSchema};

use crate::app::App;

/// The caller of one request, as the gateway verified it.
#[derive(Clone)]
struct Caller {
    actor: Actor,
}

#[derive(Clone)]
struct Api {
    app: App,
}

/// `Path`, whose rejection (a segment that is not valid for its type) is a problem too.
struct ApiPath<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> axum::extract::FromRequestParts<S>
    for ApiPath<T>
{
    type Rejection = Response<Body>;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(t)) => Ok(ApiPath(t)),
            Err(e) => Err(problem(
                StatusCode::BAD_REQUEST,
                "Invalid path",
                e.body_text(),
            )),
        }
    }
}

/// An RFC 9457 problem.
fn problem(status: StatusCode, title: &str, detail: impl Into<String>) -> Response<Body> {
    let body = json!({
        "type": "about:blank",
        "title": title,
        "status": status.as_u16(),
        "detail": detail.into(),
    });
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    r
}

fn ok_json(status: StatusCode, body: Value) -> Response<Body> {
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn pool_problem(e: PoolError) -> Response<Body> {
    match &e {
        PoolError::Store(portcullis_store::StoreError::NotFound { .. }) => {
            problem(StatusCode::NOT_FOUND, "Not found", e.to_string())
        }
        PoolError::Store(portcullis_store::StoreError::AlreadyExists { .. }) => {
            problem(StatusCode::CONFLICT, "Already exists", e.to_string())
        }
        PoolError::Store(portcullis_store::StoreError::Changed { .. }) => problem(
            StatusCode::PRECONDITION_FAILED,
            "Changed meanwhile",
            e.to_string(),
        ),
        PoolError::Store(portcullis_store::StoreError::InUse { .. }) => {
            problem(StatusCode::CONFLICT, "In use", e.to_string())
        }
        _ if e.is_user_error() => {
            problem(StatusCode::BAD_REQUEST, "Invalid request", e.to_string())
        }
        _ => {
            tracing::error!(error = %e, "admin API operation failed");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                "the operation could not be completed; try again shortly",
            )
        }
    }
}

fn store_problem(e: portcullis_store::StoreError) -> Response<Body> {
    pool_problem(PoolError::Store(e))
}

/// The strong ETag of a user or client (`kind`) at a revision.
fn revision_etag(kind: &str, revision: i64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{kind}-r{revision}\""))
        .unwrap_or(HeaderValue::from_static("\"\""))
}

/// The revision an `If-Match` names: `None` without one (or with `*`, RFC 9110: whatever is
/// current); a 412 problem when it names no revision of a `kind` (so it cannot match).
fn if_match_revision(headers: &HeaderMap, kind: &str) -> Result<Option<i64>, Box<Response<Body>>> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let value = value.to_str().unwrap_or_default().trim();
    if value == "*" {
        return Ok(None);
    }
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .and_then(|v| v.strip_prefix(kind))
        .and_then(|v| v.strip_prefix("-r"))
        .and_then(|r| r.parse::<i64>().ok())
        .filter(|r| *r > 0)
        .map(Some)
        .ok_or_else(|| {
            Box::new(problem(
                StatusCode::PRECONDITION_FAILED,
                "Changed meanwhile",
                format!("If-Match does not name the current {kind}; GET it again for its ETag"),
            ))
        })
}

/// Evaluates a user's `If-Match` before a command (disable, a password, a membership...).
async fn user_precondition(
    api: &Api,
    username: &str,
    headers: &HeaderMap,
) -> Result<(), Box<Response<Body>>> {
    let Some(expected) = if_match_revision(headers, "user")? else {
        return Ok(());
    };
    match api.app.pool.user(username).await {
        Ok(u) if u.revision == expected => Ok(()),
        Ok(_) => Err(Box::new(pool_problem(PoolError::Store(
            portcullis_store::StoreError::Changed {
                kind: "user",
                name: username.to_owned(),
            },
        )))),
        Err(e) => Err(Box::new(pool_problem(e))),
    }
}

/// A user answer, with the user's ETag.
fn user_ok(status: StatusCode, u: &portcullis_store::User) -> Response<Body> {
    let mut r = ok_json(status, user_view(u));
    r.headers_mut()
        .insert(header::ETAG, revision_etag("user", u.revision));
    r
}

/// A query string, whose rejection is a problem.
fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, Box<Response<Body>>> {
    q.map(|Query(q)| q).map_err(|e| {
        Box::new(problem(
            StatusCode::BAD_REQUEST,
            "Invalid query",
            e.body_text(),
        ))
    })
}

/// A list's `limit`: 100 when absent, a problem outside 1..=`max`.
fn page_limit(limit: Option<usize>, max: usize) -> Result<usize, Box<Response<Body>>> {
    match limit.unwrap_or(100) {
        l if (1..=max).contains(&l) => Ok(l),
        _ => Err(Box::new(problem(
            StatusCode::BAD_REQUEST,
            "Invalid query",
            format!("limit: between 1 and {max}"),
        ))),
    }
}

/// The first `limit` of `items` and the cursor of the next page (`key` of the last shown), if
/// there is more.
fn page<T, K>(
    items: impl Iterator<Item = T>,
    limit: usize,
    key: impl Fn(&T) -> K,
) -> (Vec<T>, Option<K>) {
    let mut page: Vec<T> = items.take(limit + 1).collect();
    if page.len() > limit {
        page.truncate(limit);
        let next = page.last().map(&key);
        (page, next)
    } else {
        (page, None)
    }
}

/// A user as the API shows it.
#[derive(serde::Serialize, ToSchema)]
struct UserView {
    id: String,
    username: String,
    email: Option<String>,
    email_verified: bool,
    status: String,
    groups: Vec<String>,
    attributes: HashMap<String, String>,
    password_set: bool,
    created_at: i64,
    updated_at: i64,
}

fn user_view(u: &portcullis_store::User) -> Value {
    json!({
        "id": u.id,
        "username": u.username,
        "email": u.email,
        "email_verified": u.email_verified,
        "status": u.status,
        "groups": u.groups,
        "attributes": u.attributes,
        "password_set": u.password_hash.is_some(),
        "created_at": u.created_at,
        "updated_at": u.updated_at,
    })
}

#[derive(serde::Serialize, ToSchema)]
struct UserPage {
    items: Vec<UserView>,
    /// Pass as `after` for the next page; absent on the last page.
    next: Option<String>,
}

#[derive(Deserialize, ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListUsers {
    /// Only usernames after this one (the `next` of the previous page).
    #[param(nullable = false)]
    after: Option<String>,
    /// Only users whose username or e-mail contains this (any case).
    #[param(nullable = false)]
    q: Option<String>,
    /// At most this many (1–500, default 100).
    #[param(nullable = false, minimum = 1, maximum = 500)]
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/users", params(ListUsers), responses(
    (status = 200, description = "A page of users", body = UserPage),
))]
async fn list_users(
    State(api): State<Api>,
    q: Result<Query<ListUsers>, QueryRejection>,
) -> Response<Body> {
    let q = match query(q) {
        Ok(q) => q,
        Err(r) => return *r,
    };
    let limit = match page_limit(q.limit, 500) {
        Ok(l) => l,
        Err(r) => return *r,
    };
    let users = match api
        .app
        .store
        .users_page(
            q.after.as_deref(),
            q.q.as_deref().filter(|n| !n.is_empty()),
            limit + 1,
        )
        .await
    {
        Ok(u) => u,
        Err(e) => return store_problem(e),
    };
    let (items, next) = page(users.into_iter(), limit, |u| u.username.clone());
    ok_json(
        StatusCode::OK,
        json!({ "items": items.iter().map(user_view).collect::<Vec<_>>(), "next": next }),
    )
}

#[utoipa::path(get, path = "/users/{username}", params(("username" = String, Path)), responses(
    (status = 200, description = "The user, with its ETag", body = UserView),
    (status = 404, description = "No such user"),
))]
async fn get_user(State(api): State<Api>, ApiPath(username): ApiPath<String>) -> Response<Body> {
    match api.app.pool.user(&username).await {
        Ok(u) => user_ok(StatusCode::OK, &u),
        Err(e) => pool_problem(e),
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewUser {
    username: String,
    email: Option<String>,
    #[serde(default)]
    email_verified: bool,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    attributes: HashMap<String, String>,
    /// Mail a link to choose the first password (needs `email` and mail).
    #[serde(default)]
    invite: bool,
}

fn parse_json<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<T, Box<Response<Body>>> {
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json_type {
        return Err(Box::new(problem(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Unsupported media type",
            "send application/json",
        )));
    }
    serde_json::from_slice(body).map_err(|e| {
        Box::new(problem(
            StatusCode::BAD_REQUEST,
            "Invalid request",
            e.to_string(),
        ))
    })
}

#[utoipa::path(post, path = "/users", request_body = NewUser, responses(
    (status = 201, description = "Created", body = UserView),
    (status = 400, description = "Invalid"),
    (status = 409, description = "The username is taken"),
))]
async fn create_user(
    State(api): State<Api>,
    axum::Extension(caller): axum::Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let req: NewUser = match parse_json(&headers, &body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    if req.invite && (req.email.is_none() || !api.app.config.idp.accounts.mail) {
        return problem(
            StatusCode::BAD_REQUEST,
            "Invalid request",
            "an invitation needs an e-mail address and mail.transport",
        );
    }
    let add = AddUser {
        username: req.username.clone(),
        email: req.email.clone(),
        email_verified: req.email_verified,
        attributes: req.attributes.clone().into_iter().collect(),
        groups: req.groups.clone(),
        password: None,
        temporary_password: false,
        no_password: req.invite,
    };
    let user = match api.app.pool.add_user(add).await {
        Ok((user, _generated)) => user,
        Err(e) => return pool_problem(e),
    };
    if req.invite
        && let Err(e) = api.app.accounts.invite(&user.username, &caller.actor).await
    {
        tracing::error!(error = %e, "invitation not sent");
    }
    audit(
        &api,
        &caller,
        "user.create",
        &user.username,
        json!({ "email": req.email, "groups": req.groups, "invite": req.invite }),
    )
    .await;
    user_ok(StatusCode::CREATED, &user)
}

#[utoipa::path(post, path = "/users/{username}/disable", params(("username" = String, Path), ("If-Match" = Option<String>, Header, description = "The user's ETag: only if the user is still as read")), responses(
    (status = 412, description = "The user changed since that ETag"),
    (status = 200, description = "Disabled; every session ended", body = UserView),
    (status = 404, description = "No such user"),
))]
async fn disable_user(
    State(api): State<Api>,
    axum::Extension(caller): axum::Extension<Caller>,
    ApiPath(username): ApiPath<String>,
    headers: HeaderMap,
) -> Response<Body> {
    if let Err(r) = user_precondition(&api, &username, &headers).await {
        return *r;
    }
    set_enabled(api, caller, username, false).await
}

#[utoipa::path(post, path = "/users/{username}/enable", params(("username" = String, Path), ("If-Match" = Option<String>, Header, description = "The user's ETag: only if the user is still as read")), responses(
    (status = 412, description = "The user changed since that ETag"),
    (status = 200, description = "Enabled", body = UserView),
    (status = 404, description = "No such user"),
))]
async fn enable_user(
    State(api): State<Api>,
    axum::Extension(caller): axum::Extension<Caller>,
    ApiPath(username): ApiPath<String>,
    headers: HeaderMap,
) -> Response<Body> {
    if let Err(r) = user_precondition(&api, &username, &headers).await {
        return *r;
    }
    set_enabled(api, caller, username, true).await
}

async fn set_enabled(api: Api, caller: Caller, username: String, enabled: bool) -> Response<Body> {
    if let Err(e) = api.app.pool.set_enabled(&username, enabled).await {
        return pool_problem(e);
    }
    let kind = if enabled {
        "user.enable"
    } else {
        "user.disable"
    };
    audit(&api, &caller, kind, &username, json!({})).await;
    match api.app.pool.user(&username).await {
        Ok(u) => user_ok(StatusCode::OK, &u),
        Err(e) => pool_problem(e),
    }
}

#[utoipa::path(delete, path = "/users/{username}", params(("username" = String, Path), ("If-Match" = Option<String>, Header, description = "The user's ETag: only if the user is still as read")), responses(
    (status = 412, description = "The user changed since that ETag"),
    (status = 204, description = "Deleted; every session ended"),
    (status = 404, description = "No such user"),
))]
async fn delete_user(
    State(api): State<Api>,
    axum::Extension(caller): axum::Extension<Caller>,
    ApiPath(username): ApiPath<String>,
    headers: HeaderMap,
) -> Response<Body> {
    let revision = match if_match_revision(&headers, "user") {
        Ok(r) => r,
        Err(r) => return *r,
    };
    if let Err(e) = api.app.pool.delete_user(&username, revision).await {
        return pool_problem(e);
    }
    audit(&api, &caller, "user.delete", &username, json!({})).await;
    StatusCode::NO_CONTENT.into_response()
}

#[derive(serde::Serialize, ToSchema)]
struct GroupView {
    name: String,
    description: String,
    precedence: Option<i64>,
    members: i64,
}

#[derive(serde::Serialize, ToSchema)]
struct GroupPage {
    items: Vec<GroupView>,
    /// Pass as `after` for the next page; absent on the last page.
    next: Option<String>,
}

#[derive(Deserialize, ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListNamed {
    /// Only entries after this one (the `next` of the previous page).
    #[param(nullable = false)]
    after: Option<String>,
    /// Only entries whose name contains this (any case).
    #[param(nullable = false)]
    q: Option<String>,
    /// At most this many (1–500, default 100).
    #[param(nullable = false, minimum = 1, maximum = 500)]
    limit: Option<usize>,
}

fn group_view(g: &portcullis_store::Group) -> Value {
    json!({ "name": g.name, "description": g.description, "precedence": g.precedence, "members": g.members })
}

#[utoipa::path(get, path = "/groups", params(ListNamed), responses(
    (status = 200, description = "A page of groups, by name", body = GroupPage),
))]
async fn list_groups(
    State(api): State<Api>,
    q: Result<Query<ListNamed>, QueryRejection>,
) -> Response<Body> {
    let q = match query(q) {
        Ok(q) => q,
        Err(r) => return *r,
    };
    let limit = match page_limit(q.limit, 500) {
        Ok(l) => l,
        Err(r) => return *r,
    };
    let mut groups = match api.app.pool.list_groups().await {
        Ok(g) => g,
        Err(e) => return pool_problem(e),
    };
    groups.sort_by_key(|g| g.name.to_ascii_lowercase());
    let needle = q.q.unwrap_or_default().to_ascii_lowercase();
    let after = q.after.map(|a| a.to_ascii_lowercase());
    let (items, next) = page(
        groups.iter().filter(|g| {
            let key = g.name.to_ascii_lowercase();
            after.as_ref().is_none_or(|a| key > *a) && key.contains(&needle)
        }),
        limit,
        |g| g.name.clone(),
    );
    ok_json(
        StatusCode::OK,
        json!({ "items": items.into_iter().map(group_view).collect::<Vec<_>>(), "next": next }),
    )
}

#[derive(serde::Serialize, ToSchema)]
struct GroupDetail {
    name: String,
    description: String,
    precedence: Option<i64>,
    members: i64,
    /// The members' usernames, sorted.
    usernames: Vec<String>,
}

#[utoipa::path(get, path = "/groups/{group}", params(("group" = String, Path)), responses(
    (status = 200, description = "The group and its members", body = GroupDetail),
    (status = 404, description = "No such group"),
))]
async fn get_group(State(api): State<Api>, ApiPath(group): ApiPath<String>) -> Response<Body> {
    let g = match api.app.store.group(&group).await {
        Ok(Some(g)) => g,
        Ok(None) => {
            return problem(
                StatusCode::NOT_FOUND,
                "Not found",
                format!("group {group:?} does not exist"),
            );
        }
        Err(e) => return store_problem(e),
    };
    match api.app.store.group_members(&g.name).await {
        Ok(usernames) => {
            let mut v = group_view(&g);
            v["usernames"] = json!(usernames);
            ok_json(StatusCode::OK, v)
        }
        Err(e) => store_problem(e),
    }
}

#[utoipa::path(put, path = "/groups/{group}/members/{username}", params(("group" = String, Path), ("username" = String, Path), ("If-Match" = Option<String>, Header, description = "The user's ETag: only if the user is still as read")), responses(
    (status = 412, description = "The user changed since that ETag"),
    (status = 200, description = "A member (the user's sessions end when it changes)", body = UserView),
    (status = 404, description = "No such group or user"),
))]
async fn add_member(
    State(api): State<Api>,
    axum::Extension(caller): axum::Extension<Caller>,
    ApiPath((group, username)): ApiPath<(String, String)>,
    headers: HeaderMap,
) -> Response<Body> {
    if let Err(r) = user_precondition(&api, &username, &headers).await {
        return *r;
    }
    match api.app.pool.add_member(&group, &username).await {
        Ok(added) => {
            if added {
                audit(
                    &api,
                    &caller,
                    "group.add_member",
                    &username,
                    json!({ "group": group }),
                )
                .await;
            }
            match api.app.pool.user(&username).await {
                Ok(u) => user_ok(StatusCode::OK, &u),
                Err(e) => pool_problem(e),
            }
        }
        Err(e) => pool_problem(e),
    }
}

#[utoipa::path(delete, path = "/groups/{group}/members/{username}", params(("group" = String, Path), ("username" = String, Path), ("If-Match" = Option<String>, Header, description = "The user's ETag: only if the user is still as read")), responses(
    (status = 412, description = "The user changed since that ETag"),
    (status = 200, description = "Not a member (any more)", body = UserView),
    (status = 404, description = "No such group or user"),
))]
async fn remove_member(
    State(api): State<Api>,
    axum::Extension(caller): axum::Extension<Caller>,
    ApiPath((group, username)): ApiPath<(String, String)>,
    headers: HeaderMap,
) -> Response<Body> {
    if let Err(r) = user_precondition(&api, &username, &headers).await {
        return *r;
    }
    match api.app.pool.remove_member(&group, &username).await {
        Ok(removed) => {
            if removed {
                audit(
                    &api,
                    &caller,
                    "group.remove_member",
                    &username,
                    json!({ "group": group }),
                )
                .await;
            }
            match api.app.pool.user(&username).await {
                Ok(u) => user_ok(StatusCode::OK, &u),
                Err(e) => pool_problem(e),
            }
        }
        Err(e) => pool_problem(e),
    }
}

#[derive(serde::Serialize, ToSchema)]
struct PolicyView {
    version: i64,
    /// The documents as a policy file (TOML).
    document: String,
    comment: String,
    created_at: i64,
}

fn etag(version: i64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"policy-v{version}\""))
        .unwrap_or(HeaderValue::from_static("\"\""))
}

#[utoipa::path(get, path = "/policies", responses(
    (status = 200, description = "The policies in force, with their ETag", body = PolicyView),
))]
async fn get_policies(State(api): State<Api>) -> Response<Body> {
    match api.app.store.current_policy().await {
        Ok(current) => {
            let (version, document, comment, created_at) = current
                .map(|p| (p.version, p.document, p.comment, p.created_at))
                .unwrap_or((0, String::new(), String::new(), 0));
            let mut r = ok_json(
                StatusCode::OK,
                json!({ "version": version, "document": document, "comment": comment, "created_at": created_at }),
            );
            r.headers_mut().insert(header::ETAG, etag(version));
            r
        }
        Err(e) => store_problem(e),
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SetPolicies {
    /// A policy file (TOML with `[[policy]]` tables).
    document: String,
    #[serde(default)]
    comment: String,
}

#[utoipa::path(put, path = "/policies", request_body = SetPolicies, params(
    ("If-Match" = String, Header, description = "The ETag of the version this edit starts from"),
), responses(
    (status = 200, description = "The new version in force", body = PolicyView),
    (status = 400, description = "The document is invalid"),
    (status = 412, description = "Someone else changed the policies first"),
    (status = 428, description = "If-Match is required"),
))]
async fn set_policies(
    State(api): State<Api>,
    axum::Extension(caller): axum::Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let Some(if_match) = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok()) else {
        return problem(
            StatusCode::PRECONDITION_REQUIRED,
            "If-Match required",
            "send the ETag of GET /policies in If-Match, so that two edits cannot overwrite each other",
        );
    };
    let req: SetPolicies = match parse_json(&headers, &body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let docs = match portcullis_policy::parse_file(&req.document) {
        Ok(d) => d,
        Err(e) => return problem(StatusCode::BAD_REQUEST, "Invalid policy", e.to_string()),
    };
    let before = match api.app.store.current_policy().await {
        Ok(c) => c,
        Err(e) => return store_problem(e),
    };
    let current = before.as_ref().map_or(0, |p| p.version);
    // `*` (RFC 9110): whatever is current — the caller gives up the protection knowingly.
    if if_match.trim() != "*" && if_match != etag(current).to_str().unwrap_or_default() {
        return problem(
            StatusCode::PRECONDITION_FAILED,
            "Changed meanwhile",
            format!(
                "the policies are at version {current} now; GET them again and reapply your edit"
            ),
        );
    }
    let document = portcullis_policy::export(&docs);
    let now = api.app.provider.now();
    // The version check and the insert are one step in the store: of two edits from the same
    // version, one wins.
    match api
        .app
        .store
        .add_policy_version_if(current, &document, &req.comment, now)
        .await
    {
        Ok(Some(version)) => {
            audit(
                &api,
                &caller,
                "policy.set",
                "",
                json!({
                    "comment": req.comment,
                    "before": before.map(|p| json!({ "version": p.version, "document": p.document })),
                    "after": { "version": version, "document": document },
                }),
            )
            .await;
            let mut r = ok_json(
                StatusCode::OK,
                json!({ "version": version, "document": document, "comment": req.comment, "created_at": now }),
            );
            r.headers_mut().insert(header::ETAG, etag(version));
            r
        }
        Ok(None) => problem(
            StatusCode::PRECONDITION_FAILED,
            "Changed meanwhile",
            "the policies changed while this edit was applied; GET them again",
        ),
        Err(e) => store_problem(e),
    }
}

#[derive(Deserialize, ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListAudit {
    /// Oldest first: only events after this sequence number (the `next` of the previous page).
    #[param(nullable = false)]
    after: Option<i64>,
    /// Newest first: only events before this sequence number (the `next` of the previous page).
    #[param(nullable = false)]
    before: Option<i64>,
    /// `asc` (oldest first, the default; follow the log with `after`) or `desc` (newest first).
    #[param(nullable = false)]
    order: Option<AuditOrder>,
    /// Only events whose kind starts with this.
    #[param(nullable = false)]
    kind: Option<String>,
    /// Only events about or by this subject or actor.
    #[param(nullable = false)]
    who: Option<String>,
    /// At most this many (1–1000, default 100).
    #[param(nullable = false, minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

#[derive(Deserialize, ToSchema, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum AuditOrder {
    Asc,
    Desc,
}

#[derive(serde::Serialize, ToSchema)]
struct AuditPage {
    items: Vec<AuditView>,
    /// The cursor of the next page (`after` oldest first, `before` newest first); absent on the
    /// last page. Following the log: pass the last `seq` seen as `after`.
    next: Option<i64>,
}

#[derive(serde::Serialize, ToSchema)]
struct AuditView {
    seq: i64,
    at: i64,
    kind: String,
    actor: String,
    source: String,
    subject: String,
    #[schema(value_type = Object)]
    detail: Value,
    hash: String,
}

#[utoipa::path(get, path = "/audit", params(ListAudit), responses(
    (status = 200, description = "A page of audit events", body = AuditPage),
))]
async fn list_audit(
    State(api): State<Api>,
    q: Result<Query<ListAudit>, QueryRejection>,
) -> Response<Body> {
    let q = match query(q) {
        Ok(q) => q,
        Err(r) => return *r,
    };
    let limit = match page_limit(q.limit, 1000) {
        Ok(l) => l,
        Err(r) => return *r,
    };
    let filter = portcullis_store::AuditFilter {
        after: q.after,
        before: q.before,
        newest_first: q.order == Some(AuditOrder::Desc),
        kind_prefix: q.kind,
        who: q.who,
        limit: i64::try_from(limit + 1).unwrap_or(1001),
        ..Default::default()
    };
    match api.app.store.audit_events(&filter).await {
        Ok(events) => {
            let (items, next) = page(events.iter(), limit, |e| e.seq);
            ok_json(
                StatusCode::OK,
                json!({
                    "items": items
                        .iter()
                        .map(|e| json!({ "seq": e.seq, "at": e.at, "kind": e.kind, "actor": e.actor, "source": e.source, "subject": e.subject, "detail": e.detail, "hash": e.hash }))
                        .collect::<Vec<_>>(),
                    "next": next,
                }),
            )
        }
        Err(e) => store_problem(e),
    }
}

async fn audit(api: &Api, caller: &Caller, kind: &str, subject: &str, detail: Value) {
    portcullis_idp::audit::record(
        &api.app.store,
        api.app.provider.now(),
        kind,
        &caller.actor,
        subject,
        detail,
    )
    .await;
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SetPassword {
    /// The user must choose another at the next sign-in.
    #[serde(default)]
    temporary: bool,
    /// The new password (checked against the policy). Absent: a random one is set and not
    /// shown (send an invitation or a reset instead).
    password: Option<String>,
}

#[utoipa::path(put, path = "/users/{username}/password", params(("username" = String, Path), ("If-Match" = Option<String>, Header, description = "The user's ETag: only if the user is still as read")), request_body = SetPassword, responses(
    (status = 412, description = "The user changed since that ETag"),
    (status = 200, description = "Set; every session ended", body = UserView),
    (status = 400, description = "The password does not meet the policy"),
    (status = 404, description = "No such user"),
))]
async fn set_password(
    State(api): State<Api>,
    axum::Extension(caller): axum::Extension<Caller>,
    ApiPath(username): ApiPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let req: SetPassword = match parse_json(&headers, &body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    if let Err(r) = user_precondition(&api, &username, &headers).await {
        return *r;
    }
    let password = req.password.map(portcullis_token::Secret::new);
    if let Err(e) = api
        .app
        .pool
        .set_password(&username, password, req.temporary)
        .await
    {
        return pool_problem(e);
    }
    audit(
        &api,
        &caller,
        "user.set_password",
        &username,
        json!({ "temporary": req.temporary, "sessions": "all revoked" }),
    )
    .await;
    match api.app.pool.user(&username).await {
        Ok(u) => user_ok(StatusCode::OK, &u),
        Err(e) => pool_problem(e),
    }
}

#[utoipa::path(get, path = "/users/{username}/sessions", params(("username" = String, Path)), responses(
    (status = 200, description = "The user's live sessions", body = Vec<SessionView>),
    (status = 404, description = "No such user"),
))]
async fn user_sessions(
    State(api): State<Api>,
    ApiPath(username): ApiPath<String>,
) -> Response<Body> {
    let user = match api.app.pool.user(&username).await {
        Ok(u) => u,
        Err(e) => return pool_problem(e),
    };
    match api.app.store.user_sessions(&user.id, api.app.provider.now()).await {
        Ok(sessions) => ok_json(
            StatusCode::OK,
            json!(
                sessions
                    .iter()
                    .map(|(s, clients)| json!({ "sid": s.sid, "auth_time": s.auth_time, "expires_at": s.expires_at, "amr": s.amr, "clients": clients }))
                    .collect::<Vec<_>>()
            ),
        ),
        Err(e) => store_problem(e),
    }
}

/// (The shape the OpenAPI document gives; the handler writes the JSON.)
#[allow(dead_code)]
#[derive(serde::Serialize, ToSchema)]
struct SessionView {
    sid: String,
    auth_time: i64,
    expires_at: i64,
    amr: Vec<String>,
    clients: Vec<String>,
}

#[utoipa::path(get, path = "/users/{username}/identities", params(("username" = String, Path)), responses(
    (status = 200, description = "The user's identities at upstream providers (docs/federation.md)", body = Vec<IdentityView>),
    (status = 404, description = "No such user"),
))]
async fn user_identities(
    State(api): State<Api>,
    ApiPath(username): ApiPath<String>,
) -> Response<Body> {
    let user = match api.app.pool.user(&username).await {
        Ok(u) => u,
        Err(e) => return pool_problem(e),
    };
    match api.app.store.identities_of(&user.id).await {
        Ok(ids) => ok_json(
            StatusCode::OK,
            json!(
                ids.iter()
                    .map(|i| json!({ "provider": i.provider, "subject": i.subject, "email": i.email, "linked_at": i.created_at, "last_used_at": i.last_used_at }))
                    .collect::<Vec<_>>()
            ),
        ),
        Err(e) => store_problem(e),
    }
}

/// (The shape the OpenAPI document gives; the handler writes the JSON.)
#[allow(dead_code)]
#[derive(serde::Serialize, ToSchema)]
struct IdentityView {
    /// The provider's id in `[[idp.providers]]`.
    provider: String,
    /// The user's `sub` at the provider.
    subject: String,
    email: Option<String>,
    linked_at: i64,
    last_used_at: i64,
}

#[utoipa::path(delete, path = "/users/{username}/identities/{provider}", params(("username" = String, Path), ("provider" = String, Path)), responses(
    (status = 200, description = "Unlinked: the user no longer signs in through that provider", body = Object),
    (status = 404, description = "No such user, or no identity at that provider"),
))]
async fn unlink_identity(
    State(api): State<Api>,
    axum::Extension(caller): axum::Extension<Caller>,
    ApiPath((username, provider)): ApiPath<(String, String)>,
) -> Response<Body> {
    let user = match api.app.pool.user(&username).await {
        Ok(u) => u,
        Err(e) => return pool_problem(e),
    };
    let ids = match api.app.store.identities_of(&user.id).await {
        Ok(ids) => ids,
        Err(e) => return store_problem(e),
    };
    let mut unlinked = 0;
    for i in ids.iter().filter(|i| i.provider == provider) {
        match api
            .app
            .store
            .unlink_identity(&user.id, &i.provider, &i.subject)
            .await
        {
            Ok(true) => unlinked += 1,
            Ok(false) => {}
            Err(e) => return store_problem(e),
        }
    }
    if unlinked == 0 {
        return problem(
            StatusCode::NOT_FOUND,
            "Not found",
            format!("{username} has no identity at {provider:?}"),
        );
    }
    audit(
        &api,
        &caller,
        "federation.unlink",
        &username,
        json!({ "provider": provider, "by": "operator" }),
    )
    .await;
    ok_json(StatusCode::OK, json!({ "unlinked": unlinked }))
}

#[utoipa::path(delete, path = "/users/{username}/sessions", params(("username" = String, Path)), responses(
    (status = 200, description = "Every session ended (the gateway refuses their tokens within a second)", body = Object),
    (status = 404, description = "No such user"),
))]
async fn end_sessions(
    State(api): State<Api>,
    axum::Extension(caller): axum::Extension<Caller>,
    ApiPath(username): ApiPath<String>,
) -> Response<Body> {
    match api.app.pool.end_sessions(&username).await {
        Ok(n) => {
            audit(
                &api,
                &caller,
                "session.end_all",
                &username,
                json!({ "sessions": n }),
            )
            .await;
            ok_json(StatusCode::OK, json!({ "ended": n }))
        }
        Err(e) => pool_problem(e),
    }
}

#[utoipa::path(delete, path = "/users/{username}/mfa", params(("username" = String, Path), ("If-Match" = Option<String>, Header, description = "The user's ETag: only if the user is still as read")), responses(
    (status = 412, description = "The user changed since that ETag"),
    (status = 200, description = "Second factors removed and sessions ended", body = UserView),
    (status = 404, description = "No such user"),
))]
async fn reset_mfa(
    State(api): State<Api>,
    axum::Extension(caller): axum::Extension<Caller>,
    ApiPath(username): ApiPath<String>,
    headers: HeaderMap,
) -> Response<Body> {
    if let Err(r) = user_precondition(&api, &username, &headers).await {
        return *r;
    }
    let user = match api.app.pool.user(&username).await {
        Ok(u) => u,
        Err(e) => return pool_problem(e),
    };
    let removed = match api.app.store.reset_mfa(&user.id).await {
        Ok(a) => match api.app.store.remove_credentials(&user.id).await {
            Ok(b) => a || b > 0,
            Err(e) => return store_problem(e),
        },
        Err(e) => return store_problem(e),
    };
    if let Err(e) = api.app.pool.end_sessions(&username).await {
        return pool_problem(e);
    }
    audit(
        &api,
        &caller,
        "mfa.reset",
        &username,
        json!({ "removed": removed, "sessions": "all revoked" }),
    )
    .await;
    user_ok(StatusCode::OK, &user)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewGroup {
    name: String,
    #[serde(default)]
    description: String,
    precedence: Option<i64>,
}

#[utoipa::path(post, path = "/groups", request_body = NewGroup, responses(
    (status = 201, description = "Created", body = GroupView),
    (status = 400, description = "Invalid"),
    (status = 409, description = "The name is taken"),
))]
async fn create_group(
    State(api): State<Api>,
    axum::Extension(caller): axum::Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let req: NewGroup = match parse_json(&headers, &body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    match api
        .app
        .pool
        .add_group(&req.name, &req.description, req.precedence)
        .await
    {
        Ok(g) => {
            audit(
                &api,
                &caller,
                "group.create",
                &g.name,
                json!({ "description": g.description, "precedence": g.precedence }),
            )
            .await;
            ok_json(StatusCode::CREATED, group_view(&g))
        }
        Err(e) => pool_problem(e),
    }
}

#[utoipa::path(delete, path = "/groups/{group}", params(("group" = String, Path)), responses(
    (status = 204, description = "Deleted (its members stay, without it)"),
    (status = 404, description = "No such group"),
))]
async fn delete_group(
    State(api): State<Api>,
    axum::Extension(caller): axum::Extension<Caller>,
    ApiPath(group): ApiPath<String>,
) -> Response<Body> {
    match api.app.pool.delete_group(&group).await {
        Ok(()) => {
            audit(&api, &caller, "group.delete", &group, json!({})).await;
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => pool_problem(e),
    }
}

/// (The shape the OpenAPI document gives; the handler writes the JSON.)
#[allow(dead_code)]
#[derive(serde::Serialize, ToSchema)]
struct VersionView {
    version: i64,
    comment: String,
    created_at: i64,
}

#[derive(serde::Serialize, ToSchema)]
struct VersionPage {
    items: Vec<VersionView>,
    /// Pass as `before` for the next (older) page; absent on the last page.
    next: Option<i64>,
}

#[derive(Deserialize, ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListVersions {
    /// Only versions older than this one (the `next` of the previous page).
    #[param(nullable = false)]
    before: Option<i64>,
    /// At most this many (1–500, default 100).
    #[param(nullable = false, minimum = 1, maximum = 500)]
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/policies/versions", params(ListVersions), responses(
    (status = 200, description = "A page of versions, newest first", body = VersionPage),
))]
async fn policy_versions(
    State(api): State<Api>,
    q: Result<Query<ListVersions>, QueryRejection>,
) -> Response<Body> {
    let q = match query(q) {
        Ok(q) => q,
        Err(r) => return *r,
    };
    let limit = match page_limit(q.limit, 500) {
        Ok(l) => l,
        Err(r) => return *r,
    };
    match api.app.store.policy_history().await {
        Ok(versions) => {
            let (items, next) = page(
                versions
                    .iter()
                    .filter(|v| q.before.is_none_or(|b| v.version < b)),
                limit,
                |v| v.version,
            );
            ok_json(
                StatusCode::OK,
                json!({
                    "items": items
                        .iter()
                        .map(|v| json!({ "version": v.version, "comment": v.comment, "created_at": v.created_at }))
                        .collect::<Vec<_>>(),
                    "next": next,
                }),
            )
        }
        Err(e) => store_problem(e),
    }
}

#[utoipa::path(get, path = "/policies/versions/{version}", params(("version" = i64, Path)), responses(
    (status = 200, description = "One version", body = PolicyView),
    (status = 404, description = "No such version"),
))]
async fn policy_version(State(api): State<Api>, ApiPath(version): ApiPath<i64>) -> Response<Body> {
    match api.app.store.policy_at(version).await {
        Ok(Some(v)) => ok_json(
            StatusCode::OK,
            json!({ "version": v.version, "document": v.document, "comment": v.comment, "created_at": v.created_at }),
        ),
        Ok(None) => problem(
            StatusCode::NOT_FOUND,
            "Not found",
            format!("there is no policy version {version}"),
        ),
        Err(e) => store_problem(e),
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Explain {
    method: String,
    path: String,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    scopes: Vec<String>,
    client: Option<String>,
    /// A user whose groups are read from the store.
    user: Option<String>,
    /// The caller signed in with a second factor.
    #[serde(default)]
    mfa: bool,
    /// Seconds since the caller signed in.
    #[serde(default)]
    signed_in_ago: i64,
}

#[utoipa::path(post, path = "/policies/explain", request_body = Explain, responses(
    (status = 200, description = "The decision and why", body = Object),
    (status = 400, description = "The path is not canonical, or the input is invalid"),
    (status = 404, description = "No such user"),
))]
async fn explain(State(api): State<Api>, headers: HeaderMap, body: Bytes) -> Response<Body> {
    let req: Explain = match parse_json(&headers, &body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let current = match api.app.store.current_policy().await {
        Ok(c) => c,
        Err(e) => return store_problem(e),
    };
    let (version, docs) = match &current {
        Some(p) => match portcullis_policy::parse_file(&p.document) {
            Ok(d) => (p.version, d),
            Err(e) => {
                return problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Invalid stored policy",
                    e.to_string(),
                );
            }
        },
        None => (0, Vec::new()),
    };
    let set = portcullis_policy::PolicySet::new(docs, version);
    let mut principals: Vec<portcullis_policy::Principal> = req
        .groups
        .iter()
        .map(|g| portcullis_policy::Principal::Group(g.to_ascii_lowercase()))
        .collect();
    if let Some(u) = &req.user {
        match api.app.pool.user(u).await {
            Ok(u) => principals.extend(
                u.groups
                    .iter()
                    .map(|g| portcullis_policy::Principal::Group(g.to_ascii_lowercase())),
            ),
            Err(e) => return pool_problem(e),
        }
    }
    principals.extend(
        req.scopes
            .iter()
            .map(|s| portcullis_policy::Principal::Scope(s.clone())),
    );
    principals.extend(
        req.client
            .iter()
            .map(|c| portcullis_policy::Principal::Client(c.clone())),
    );
    principals.push(portcullis_policy::Principal::Authenticated);
    let canonical = match portcullis_gateway::canonical::canonicalize(&req.path) {
        Ok(c) => c,
        Err(e) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "Not a canonical path",
                format!("{}: {e} (the gateway answers 400)", req.path),
            );
        }
    };
    let now = api.app.provider.now();
    let auth = portcullis_policy::AuthContext {
        mfa: req.mfa,
        auth_time: Some(now.saturating_sub(req.signed_in_ago.max(0))),
    };
    let d = set.decide_as(&principals, &req.method, &canonical.lower, &auth, now);
    ok_json(
        StatusCode::OK,
        json!({ "allowed": d.allowed, "explanation": d.to_string(), "version": version }),
    )
}

/// (The shape the OpenAPI document gives; the handler writes the JSON.)
#[allow(dead_code)]
#[derive(serde::Serialize, ToSchema)]
struct KeyView {
    kid: String,
    alg: String,
    purpose: String,
    state: String,
    activate_at: i64,
    retire_at: Option<i64>,
}

async fn keys_view(api: &Api) -> Response<Body> {
    let now = api.app.provider.now();
    match api.app.provider.keys().list(now).await {
        Ok(keys) => ok_json(
            StatusCode::OK,
            json!(
                keys.iter()
                    .map(|k| json!({
                        "kid": k.kid, "alg": k.alg, "purpose": k.purpose,
                        "state": match (k.activate_at <= now, k.retire_at) { (false, _) => "next", (true, Some(_)) => "retiring", (true, None) => "active" },
                        "activate_at": k.activate_at, "retire_at": k.retire_at,
                    }))
                    .collect::<Vec<_>>()
            ),
        ),
        Err(e) => problem(StatusCode::SERVICE_UNAVAILABLE, "Unavailable", e.to_string()),
    }
}

#[utoipa::path(get, path = "/keys", responses((status = 200, description = "The signing keys and their schedule", body = Vec<KeyView>)))]
async fn list_keys(State(api): State<Api>) -> Response<Body> {
    keys_view(&api).await
}

#[utoipa::path(post, path = "/keys/rotate", responses(
    (status = 200, description = "New keys published; they sign after idp.key_rotation_delay", body = Vec<KeyView>),
))]
async fn rotate_keys(
    State(api): State<Api>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Response<Body> {
    match api.app.provider.keys().rotate(api.app.provider.now()).await {
        Ok(new) => {
            audit(
                &api,
                &caller,
                "keys.rotate",
                "",
                json!({ "published": new }),
            )
            .await;
            keys_view(&api).await
        }
        Err(e) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "Unavailable",
            e.to_string(),
        ),
    }
}

/// (The shape the OpenAPI document gives; the handler writes the JSON.)
#[allow(dead_code)]
#[derive(serde::Serialize, ToSchema)]
struct ClientView {
    client_id: String,
    name: String,
    confidential: bool,
    redirect_uris: Vec<String>,
    logout_uris: Vec<String>,
    grants: Vec<String>,
    scopes: Vec<String>,
    access_ttl: i64,
    id_ttl: i64,
    refresh_ttl: i64,
    /// Declared in the configuration file (`[[clients]]`): changed there, not here.
    declared: bool,
    /// Only in the answer that creates a confidential client or rotates its secret: shown once.
    client_secret: Option<String>,
}

#[derive(serde::Serialize, ToSchema)]
struct ClientPage {
    items: Vec<ClientView>,
    /// Pass as `after` for the next page; absent on the last page.
    next: Option<String>,
}

fn client_view(api: &Api, c: &portcullis_store::Client, secret: Option<&str>) -> Value {
    let mut v = json!({
        "client_id": c.client_id, "name": c.name, "confidential": c.secret_hash.is_some(),
        "declared": declared(api, &c.client_id),
        "redirect_uris": c.redirect_uris, "logout_uris": c.logout_uris, "grants": c.grants,
        "scopes": c.scopes, "access_ttl": c.access_ttl, "id_ttl": c.id_ttl, "refresh_ttl": c.refresh_ttl,
    });
    if let Some(s) = secret {
        v["client_secret"] = json!(s);
    }
    v
}

/// A client answer, with the client's ETag.
fn client_ok(
    api: &Api,
    status: StatusCode,
    c: &portcullis_store::Client,
    secret: Option<&str>,
) -> Response<Body> {
    let mut r = ok_json(status, client_view(api, c, secret));
    r.headers_mut()
        .insert(header::ETAG, revision_etag("client", c.revision));
    r
}

/// Whether a client comes from the configuration file, which wins at every start.
fn declared(api: &Api, client_id: &str) -> bool {
    api.app.config.clients.iter().any(|c| c.id == client_id)
}

/// The answer to a change of a client the configuration file declares.
fn declared_problem(client_id: &str) -> Response<Body> {
    problem(
        StatusCode::CONFLICT,
        "Declared in the configuration",
        format!(
            "client {client_id:?} is declared in the configuration file ([[clients]]), which is applied at every start; change it there"
        ),
    )
}

fn client_problem(e: portcullis_idp::ClientError) -> Response<Body> {
    match e {
        portcullis_idp::ClientError::Store(e) => store_problem(e),
        e => problem(StatusCode::BAD_REQUEST, "Invalid client", e.to_string()),
    }
}

#[utoipa::path(get, path = "/clients", params(ListNamed), responses(
    (status = 200, description = "A page of clients, by client id", body = ClientPage),
))]
async fn list_clients(
    State(api): State<Api>,
    q: Result<Query<ListNamed>, QueryRejection>,
) -> Response<Body> {
    let q = match query(q) {
        Ok(q) => q,
        Err(r) => return *r,
    };
    let limit = match page_limit(q.limit, 500) {
        Ok(l) => l,
        Err(r) => return *r,
    };
    let clients = match api.app.store.list_clients().await {
        Ok(c) => c,
        Err(e) => return store_problem(e),
    };
    let needle = q.q.unwrap_or_default().to_ascii_lowercase();
    let (items, next) = page(
        clients.iter().filter(|c| {
            q.after.as_ref().is_none_or(|a| c.client_id > *a)
                && (c.client_id.to_ascii_lowercase().contains(&needle)
                    || c.name.to_ascii_lowercase().contains(&needle))
        }),
        limit,
        |c| c.client_id.clone(),
    );
    ok_json(
        StatusCode::OK,
        json!({ "items": items.into_iter().map(|c| client_view(&api, c, None)).collect::<Vec<_>>(), "next": next }),
    )
}

#[utoipa::path(get, path = "/clients/{client_id}", params(("client_id" = String, Path)), responses(
    (status = 200, description = "The client, with its ETag", body = ClientView),
    (status = 404, description = "No such client"),
))]
async fn get_client(State(api): State<Api>, ApiPath(client_id): ApiPath<String>) -> Response<Body> {
    match api.app.store.client(&client_id).await {
        Ok(Some(c)) => client_ok(&api, StatusCode::OK, &c, None),
        Ok(None) => problem(
            StatusCode::NOT_FOUND,
            "Not found",
            format!("client {client_id:?} does not exist"),
        ),
        Err(e) => store_problem(e),
    }
}

/// Changes to a client; an absent field keeps its value. A list replaces the whole list.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateClient {
    name: Option<String>,
    redirect_uris: Option<Vec<String>>,
    logout_uris: Option<Vec<String>>,
    grants: Option<Vec<String>>,
    scopes: Option<Vec<String>>,
    /// Seconds.
    access_ttl: Option<i64>,
    /// Seconds.
    id_ttl: Option<i64>,
    /// Seconds.
    refresh_ttl: Option<i64>,
    /// `RS256` or `ES256`.
    id_token_alg: Option<String>,
}

#[utoipa::path(patch, path = "/clients/{client_id}", params(("client_id" = String, Path), ("If-Match" = Option<String>, Header, description = "The client's ETag: only if the client is still as read")), request_body = UpdateClient, responses(
    (status = 200, description = "The client as it is now", body = ClientView),
    (status = 400, description = "The changed client would be invalid"),
    (status = 404, description = "No such client"),
    (status = 409, description = "Declared in the configuration file"),
    (status = 412, description = "The client changed since that ETag"),
))]
async fn update_client(
    State(api): State<Api>,
    axum::Extension(caller): axum::Extension<Caller>,
    ApiPath(client_id): ApiPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let req: UpdateClient = match parse_json(&headers, &body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let revision = match if_match_revision(&headers, "client") {
        Ok(r) => r,
        Err(r) => return *r,
    };
    if declared(&api, &client_id) {
        return declared_problem(&client_id);
    }
    let before = match api.app.store.client(&client_id).await {
        Ok(c) => c,
        Err(e) => return store_problem(e),
    };
    let changes = portcullis_idp::ClientChanges {
        name: req.name,
        redirect_uris: req.redirect_uris,
        logout_uris: req.logout_uris,
        grants: req.grants,
        scopes: req.scopes,
        access_ttl: req.access_ttl,
        id_ttl: req.id_ttl,
        refresh_ttl: req.refresh_ttl,
        id_token_alg: req.id_token_alg,
    };
    match api
        .app
        .provider
        .update_client(
            &client_id,
            &changes,
            revision,
            api.app.config.allow_insecure_http,
        )
        .await
    {
        Ok(client) => {
            audit(
                &api,
                &caller,
                "client.update",
                &client_id,
                json!({ "before": before, "after": client }),
            )
            .await;
            client_ok(&api, StatusCode::OK, &client, None)
        }
        Err(e) => client_problem(e),
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewClientBody {
    name: String,
    client_id: Option<String>,
    #[serde(default)]
    confidential: bool,
    #[serde(default)]
    redirect_uris: Vec<String>,
    #[serde(default)]
    logout_uris: Vec<String>,
    #[serde(default)]
    grants: Vec<String>,
    #[serde(default)]
    scopes: Vec<String>,
}

#[utoipa::path(post, path = "/clients", request_body = NewClientBody, responses(
    (status = 201, description = "Registered; a confidential client's secret is in this answer only", body = ClientView),
    (status = 400, description = "Invalid"),
    (status = 409, description = "The client id is taken"),
))]
async fn create_client(
    State(api): State<Api>,
    axum::Extension(caller): axum::Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let req: NewClientBody = match parse_json(&headers, &body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let new = portcullis_idp::NewClient {
        client_id: req.client_id,
        name: req.name,
        confidential: req.confidential,
        redirect_uris: req.redirect_uris,
        logout_uris: req.logout_uris,
        grants: req.grants,
        scopes: req.scopes,
        access_ttl: None,
        id_ttl: None,
        refresh_ttl: None,
        id_token_alg: None,
        secret: None,
        allow_insecure_http: api.app.config.allow_insecure_http,
    };
    match api.app.provider.create_client(new).await {
        Ok((client, secret)) => {
            audit(&api, &caller, "client.create", &client.client_id, json!({ "name": client.name, "grants": client.grants, "scopes": client.scopes, "redirect_uris": client.redirect_uris })).await;
            client_ok(
                &api,
                StatusCode::CREATED,
                &client,
                secret.as_ref().map(|s| s.expose().as_str()),
            )
        }
        Err(e) => client_problem(e),
    }
}

#[utoipa::path(post, path = "/clients/{client_id}/secret", params(("client_id" = String, Path)), responses(
    (status = 200, description = "A new secret, in this answer only; the old one stops working", body = ClientView),
    (status = 404, description = "No such client"),
    (status = 409, description = "Declared in the configuration file"),
))]
async fn rotate_client_secret(
    State(api): State<Api>,
    axum::Extension(caller): axum::Extension<Caller>,
    ApiPath(client_id): ApiPath<String>,
) -> Response<Body> {
    if declared(&api, &client_id) {
        return declared_problem(&client_id);
    }
    let secret = match api.app.provider.rotate_client_secret(&client_id).await {
        Ok(s) => s,
        Err(e) => return client_problem(e),
    };
    audit(&api, &caller, "client.rotate_secret", &client_id, json!({})).await;
    match api.app.store.client(&client_id).await {
        Ok(Some(c)) => client_ok(&api, StatusCode::OK, &c, Some(secret.expose())),
        Ok(None) => problem(
            StatusCode::NOT_FOUND,
            "Not found",
            format!("no client {client_id}"),
        ),
        Err(e) => store_problem(e),
    }
}

#[utoipa::path(delete, path = "/clients/{client_id}", params(("client_id" = String, Path), ("If-Match" = Option<String>, Header, description = "The client's ETag: only if the client is still as read")), responses(
    (status = 204, description = "Deleted"),
    (status = 404, description = "No such client"),
    (status = 409, description = "Declared in the configuration file"),
    (status = 412, description = "The client changed since that ETag"),
))]
async fn delete_client(
    State(api): State<Api>,
    axum::Extension(caller): axum::Extension<Caller>,
    ApiPath(client_id): ApiPath<String>,
    headers: HeaderMap,
) -> Response<Body> {
    let revision = match if_match_revision(&headers, "client") {
        Ok(r) => r,
        Err(r) => return *r,
    };
    if declared(&api, &client_id) {
        return declared_problem(&client_id);
    }
    match api.app.store.delete_client(&client_id, revision).await {
        Ok(()) => {
            audit(&api, &caller, "client.delete", &client_id, json!({})).await;
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => store_problem(e),
    }
}

/// (The shape the OpenAPI document gives; the handler writes the JSON.)
#[allow(dead_code)]
#[derive(serde::Serialize, ToSchema)]
struct ResourceServerView {
    identifier: String,
    name: String,
    /// Full scope names, `identifier/scope`.
    scopes: Vec<String>,
}

#[utoipa::path(get, path = "/resource-servers", responses((status = 200, description = "Resource servers and their scopes", body = Vec<ResourceServerView>)))]
async fn list_resource_servers(State(api): State<Api>) -> Response<Body> {
    match api.app.store.list_resource_servers().await {
        Ok(list) => ok_json(
            StatusCode::OK,
            json!(
                list.iter()
                    .map(|r| json!({ "identifier": r.identifier, "name": r.name, "scopes": r.scopes.iter().map(|s| format!("{}/{s}", r.identifier)).collect::<Vec<_>>() }))
                    .collect::<Vec<_>>()
            ),
        ),
        Err(e) => store_problem(e),
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewResourceServer {
    identifier: String,
    #[serde(default)]
    name: String,
    /// Scope names without the identifier (`read`, `admin`).
    scopes: Vec<String>,
}

fn valid_scope_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':'))
}

#[utoipa::path(post, path = "/resource-servers", request_body = NewResourceServer, responses(
    (status = 201, description = "Defined", body = ResourceServerView),
    (status = 400, description = "Invalid"),
    (status = 409, description = "The identifier is taken"),
))]
async fn create_resource_server(
    State(api): State<Api>,
    axum::Extension(caller): axum::Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let req: NewResourceServer = match parse_json(&headers, &body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    if !valid_scope_name(&req.identifier)
        || req.scopes.is_empty()
        || !req.scopes.iter().all(|s| valid_scope_name(s))
    {
        return problem(
            StatusCode::BAD_REQUEST,
            "Invalid resource server",
            "an identifier and at least one scope, each 1-64 ASCII letters, digits or `- . _ :`",
        );
    }
    let rs = portcullis_store::ResourceServer {
        identifier: req.identifier,
        name: req.name,
        scopes: req.scopes,
        created_at: api.app.provider.now(),
    };
    match api.app.store.create_resource_server(&rs).await {
        Ok(()) => {
            audit(
                &api,
                &caller,
                "resource_server.create",
                &rs.identifier,
                json!({ "scopes": rs.scopes }),
            )
            .await;
            ok_json(
                StatusCode::CREATED,
                json!({ "identifier": rs.identifier, "name": rs.name, "scopes": rs.scopes.iter().map(|s| format!("{}/{s}", rs.identifier)).collect::<Vec<_>>() }),
            )
        }
        Err(e) => store_problem(e),
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Rollback {
    /// The version whose documents come back into force (as a new version).
    version: i64,
}

#[utoipa::path(post, path = "/policies/rollback", request_body = Rollback, params(
    ("If-Match" = String, Header, description = "The ETag of the version in force"),
), responses(
    (status = 200, description = "The new version in force, with the old version's documents", body = PolicyView),
    (status = 404, description = "No such version"),
    (status = 412, description = "Someone else changed the policies first"),
    (status = 428, description = "If-Match is required"),
))]
async fn rollback_policies(
    State(api): State<Api>,
    axum::Extension(caller): axum::Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let req: Rollback = match parse_json(&headers, &body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let old = match api.app.store.policy_at(req.version).await {
        Ok(Some(v)) => v,
        Ok(None) => {
            return problem(
                StatusCode::NOT_FOUND,
                "Not found",
                format!("there is no policy version {}", req.version),
            );
        }
        Err(e) => return store_problem(e),
    };
    let body = json!({ "document": old.document, "comment": format!("rollback to version {}", req.version) });
    set_policies(
        State(api),
        axum::Extension(caller),
        headers_as_json(headers),
        Bytes::from(body.to_string()),
    )
    .await
}

/// The request headers with the JSON content type (a rollback reuses `set_policies`).
fn headers_as_json(mut headers: HeaderMap) -> HeaderMap {
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers
}

#[derive(Deserialize, ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct DiffQuery {
    from: i64,
    to: i64,
}

#[utoipa::path(get, path = "/policies/diff", params(DiffQuery), responses(
    (status = 200, description = "The lines removed and added between two versions' documents", body = Object),
    (status = 404, description = "No such version"),
))]
async fn diff_policies(
    State(api): State<Api>,
    q: Result<Query<DiffQuery>, QueryRejection>,
) -> Response<Body> {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return problem(StatusCode::BAD_REQUEST, "Invalid query", e.body_text()),
    };
    let (a, b) = match (
        api.app.store.policy_at(q.from).await,
        api.app.store.policy_at(q.to).await,
    ) {
        (Ok(Some(a)), Ok(Some(b))) => (a, b),
        (Err(e), _) | (_, Err(e)) => return store_problem(e),
        _ => {
            return problem(
                StatusCode::NOT_FOUND,
                "Not found",
                "both versions must exist",
            );
        }
    };
    let old: Vec<&str> = a.document.lines().collect();
    let new: Vec<&str> = b.document.lines().collect();
    let removed: Vec<&str> = old.iter().filter(|l| !new.contains(l)).copied().collect();
    let added: Vec<&str> = new.iter().filter(|l| !old.contains(l)).copied().collect();
    ok_json(
        StatusCode::OK,
        json!({ "from": q.from, "to": q.to, "removed": removed, "added": added }),
    )
}

#[utoipa::path(get, path = "/policies/matrix", responses(
    (status = 200, description = "Routes × principals: allow, deny, `allow if <condition>` or public", body = Object),
))]
async fn policy_matrix(State(api): State<Api>) -> Response<Body> {
    let current = match api.app.store.current_policy().await {
        Ok(c) => c,
        Err(e) => return store_problem(e),
    };
    let (version, docs) = match &current {
        Some(p) => match portcullis_policy::parse_file(&p.document) {
            Ok(d) => (p.version, d),
            Err(e) => {
                return problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Invalid stored policy",
                    e.to_string(),
                );
            }
        },
        None => (0, Vec::new()),
    };
    let (principals, rows) = crate::commands::access_matrix(&api.app.config.routes, &docs, version);
    ok_json(
        StatusCode::OK,
        json!({
            "version": version,
            "principals": principals,
            "rows": rows.iter().map(|(r, c)| json!({ "route": r, "decisions": c })).collect::<Vec<_>>(),
        }),
    )
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Validate {
    /// A policy file (TOML with `[[policy]]` tables).
    document: String,
}

#[utoipa::path(post, path = "/policies/validate", request_body = Validate, responses(
    (status = 200, description = "Whether the document is valid, and if not where and why; nothing is stored", body = Object),
))]
async fn validate_policies(headers: HeaderMap, body: Bytes) -> Response<Body> {
    let req: Validate = match parse_json(&headers, &body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    match portcullis_policy::parse_file(&req.document) {
        Ok(docs) => ok_json(
            StatusCode::OK,
            json!({ "valid": true, "documents": docs.len() }),
        ),
        Err(e) => ok_json(
            StatusCode::OK,
            json!({ "valid": false, "error": e.to_string() }),
        ),
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateAttributes {
    /// Attributes to add or replace.
    #[serde(default)]
    set: HashMap<String, String>,
    /// Attribute names to remove.
    #[serde(default)]
    remove: Vec<String>,
}

#[utoipa::path(patch, path = "/users/{username}/attributes", params(("username" = String, Path), ("If-Match" = Option<String>, Header, description = "The user's ETag: only if the user is still as read")), request_body = UpdateAttributes, responses(
    (status = 412, description = "The user changed since that ETag"),
    (status = 200, description = "The user with the new attributes", body = UserView),
    (status = 400, description = "An attribute name or value is not allowed"),
    (status = 404, description = "No such user"),
))]
async fn update_attributes(
    State(api): State<Api>,
    axum::Extension(caller): axum::Extension<Caller>,
    ApiPath(username): ApiPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let req: UpdateAttributes = match parse_json(&headers, &body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let revision = match if_match_revision(&headers, "user") {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let set = req.set.clone().into_iter().collect();
    match api
        .app
        .pool
        .update_attributes(&username, &set, &req.remove, revision)
        .await
    {
        Ok(user) => {
            audit(
                &api,
                &caller,
                "user.update_attributes",
                &username,
                json!({ "set": req.set, "remove": req.remove }),
            )
            .await;
            user_ok(StatusCode::OK, &user)
        }
        Err(e) => pool_problem(e),
    }
}

#[utoipa::path(delete, path = "/resource-servers/{identifier}", params(("identifier" = String, Path)), responses(
    (status = 204, description = "Deleted"),
    (status = 404, description = "No such resource server"),
    (status = 409, description = "A client may still ask for one of its scopes, or it is declared in the configuration file"),
))]
async fn delete_resource_server(
    State(api): State<Api>,
    axum::Extension(caller): axum::Extension<Caller>,
    ApiPath(identifier): ApiPath<String>,
) -> Response<Body> {
    if api
        .app
        .config
        .resource_servers
        .iter()
        .any(|r| r.identifier == identifier)
    {
        return problem(
            StatusCode::CONFLICT,
            "Declared in the configuration",
            format!(
                "resource server {identifier:?} is declared in the configuration file ([[resource_servers]]); remove it there"
            ),
        );
    }
    match api.app.store.delete_resource_server(&identifier).await {
        Ok(()) => {
            audit(
                &api,
                &caller,
                "resource_server.delete",
                &identifier,
                json!({}),
            )
            .await;
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => store_problem(e),
    }
}

/// (The shape the OpenAPI document gives; the handler writes the JSON.)
#[allow(dead_code)]
#[derive(serde::Serialize, ToSchema)]
struct LiveSessionView {
    sid: String,
    username: String,
    auth_time: i64,
    created_at: i64,
    expires_at: i64,
    amr: Vec<String>,
}

#[derive(serde::Serialize, ToSchema)]
struct SessionPage {
    items: Vec<LiveSessionView>,
    /// Pass as `after` for the next page; absent on the last page.
    next: Option<String>,
}

#[derive(Deserialize, ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListSessions {
    /// Only sessions after this one (the `next` of the previous page).
    #[param(nullable = false)]
    after: Option<String>,
    /// Only this user's sessions.
    #[param(nullable = false)]
    username: Option<String>,
    /// At most this many (1–500, default 100).
    #[param(nullable = false, minimum = 1, maximum = 500)]
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/sessions", params(ListSessions), responses(
    (status = 200, description = "Live sessions of every user, newest first", body = SessionPage),
))]
async fn list_sessions(
    State(api): State<Api>,
    q: Result<Query<ListSessions>, QueryRejection>,
) -> Response<Body> {
    let q = match query(q) {
        Ok(q) => q,
        Err(r) => return *r,
    };
    // The cursor is `<created_at>.<sid>` of the last session shown.
    let after = match q.after.as_deref().map(|a| {
        a.split_once('.')
            .and_then(|(at, sid)| Some((at.parse::<i64>().ok()?, sid)))
    }) {
        None => None,
        Some(Some(c)) => Some(c),
        Some(None) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "Invalid query",
                "after: pass the `next` of the previous page",
            );
        }
    };
    let limit = match page_limit(q.limit, 500) {
        Ok(l) => l,
        Err(r) => return *r,
    };
    match api
        .app
        .store
        .live_sessions_page(
            api.app.provider.now(),
            after,
            q.username.as_deref(),
            limit + 1,
        )
        .await
    {
        Ok(sessions) => {
            let (items, next) = page(sessions.iter(), limit, |(s, _)| {
                format!("{}.{}", s.created_at, s.sid)
            });
            ok_json(
                StatusCode::OK,
                json!({
                    "items": items
                        .iter()
                        .map(|(s, username)| json!({ "sid": s.sid, "username": username, "auth_time": s.auth_time, "created_at": s.created_at, "expires_at": s.expires_at, "amr": s.amr }))
                        .collect::<Vec<_>>(),
                    "next": next,
                }),
            )
        }
        Err(e) => store_problem(e),
    }
}

#[utoipa::path(delete, path = "/sessions/{sid}", params(("sid" = String, Path)), responses(
    (status = 204, description = "Ended: its refresh tokens stop working, the gateway refuses its access tokens within a second"),
    (status = 404, description = "No such live session"),
))]
async fn end_session(
    State(api): State<Api>,
    axum::Extension(caller): axum::Extension<Caller>,
    ApiPath(sid): ApiPath<String>,
) -> Response<Body> {
    let now = api.app.provider.now();
    let session = match api.app.store.session(&sid).await {
        Ok(Some(s)) if s.revoked_at.is_none() && s.expires_at > now => s,
        Ok(_) => {
            return problem(
                StatusCode::NOT_FOUND,
                "Not found",
                "no live session with this id",
            );
        }
        Err(e) => return store_problem(e),
    };
    if let Err(e) = api.app.store.revoke_session(&sid, now).await {
        return store_problem(e);
    }
    let username = match api.app.store.user_by_id(&session.user_id).await {
        Ok(Some(u)) => u.username,
        _ => session.user_id.clone(),
    };
    audit(
        &api,
        &caller,
        "session.end",
        &username,
        json!({ "sid": sid }),
    )
    .await;
    StatusCode::NO_CONTENT.into_response()
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "portcullis admin API",
        description = "Users, groups, policies, keys and the audit log. Authorized by the gateway's policies on the admin route (docs/admin.md)."
    ),
    paths(
        list_users,
        get_user,
        create_user,
        disable_user,
        enable_user,
        delete_user,
        update_attributes,
        set_password,
        user_sessions,
        end_sessions,
        user_identities,
        unlink_identity,
        reset_mfa,
        list_groups,
        get_group,
        create_group,
        delete_group,
        add_member,
        remove_member,
        get_policies,
        set_policies,
        policy_versions,
        policy_version,
        explain,
        list_keys,
        rotate_keys,
        rollback_policies,
        diff_policies,
        policy_matrix,
        validate_policies,
        list_clients,
        get_client,
        update_client,
        create_client,
        rotate_client_secret,
        delete_client,
        list_resource_servers,
        create_resource_server,
        delete_resource_server,
        list_sessions,
        end_session,
        list_audit
    ),
    components(schemas(
        UserView,
        UserPage,
        NewUser,
        SetPassword,
        SessionView,
        IdentityView,
        GroupView,
        GroupPage,
        GroupDetail,
        NewGroup,
        PolicyView,
        SetPolicies,
        VersionView,
        VersionPage,
        AuditPage,
        AuditOrder,
        LiveSessionView,
        SessionPage,
        Explain,
        KeyView,
        AuditView,
        ClientView,
        ClientPage,
        UpdateClient,
        NewClientBody,
        ResourceServerView,
        NewResourceServer,
        Rollback,
        Validate,
        UpdateAttributes
    ))
)]
struct ApiDoc;

/// The OpenAPI document, with the route's prefix as its server, and the answers every operation
/// can give besides its own: the gateway's (400 for a request target it will not route, 401,
/// 403, 429) and the API's problems (400, 415, 503), all `application/problem+json` — except the
/// gateway's answers, which are plain JSON errors (docs/gateway.md).
fn openapi(prefix: &str) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    doc["servers"] = json!([{ "url": prefix }]);
    doc["components"]["schemas"]["Problem"] = json!({
        "type": "object",
        "description": "RFC 9457 problem details",
        "properties": {
            "type": { "type": "string" }, "title": { "type": "string" },
            "status": { "type": "integer" }, "detail": { "type": "string" }
        },
        "required": ["type", "title", "status"]
    });
    doc["components"]["schemas"]["GatewayError"] = json!({
        "type": "object",
        "description": "an answer of the gateway in front of the API",
        "properties": { "error": { "type": "string" }, "message": { "type": "string" } },
        "required": ["error"]
    });
    let problem = |description: &str| json!({ "description": description, "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } } });
    let gateway = |description: &str| json!({ "description": description, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/GatewayError" } } } });
    if let Some(paths) = doc["paths"].as_object_mut() {
        for item in paths.values_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for op in item.values_mut() {
                let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
                    continue;
                };
                // The operation's own error answers are problems too.
                for (code, r) in responses.iter_mut() {
                    if !code.starts_with('2') && r.get("content").is_none() {
                        let description = r["description"].as_str().unwrap_or_default().to_owned();
                        *r = problem(&description);
                    }
                    // Any request may also meet the gateway's own refusal of its target.
                    if code == "400" {
                        r["content"]["application/json"] =
                            json!({ "schema": { "$ref": "#/components/schemas/GatewayError" } });
                    }
                }
                let mut add = |code: &str, value: Value| {
                    responses.entry(code.to_owned()).or_insert(value);
                };
                add(
                    "400",
                    json!({
                        "description": "A malformed request: the gateway's refusal of an ambiguous request target (plain JSON), or the API's problem",
                        "content": {
                            "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } },
                            "application/json": { "schema": { "$ref": "#/components/schemas/GatewayError" } }
                        }
                    }),
                );
                add("401", gateway("No valid credential"));
                add(
                    "403",
                    gateway("The policies do not allow this caller this operation"),
                );
                add("415", problem("The body is not application/json"));
                add("429", gateway("Too many requests"));
                add("503", problem("The store is unavailable; try again"));
            }
        }
    }
    doc
}

/// The service the gateway calls for `builtin = "admin-api"` routes mounted at `prefix`.
pub struct AdminApi {
    router: Router,
}

impl AdminApi {
    pub fn new(app: App, prefix: &str) -> AdminApi {
        let doc = openapi(prefix);
        let routes = Router::new()
            .route(
                "/openapi.json",
                get(move || async move { ok_json(StatusCode::OK, doc.clone()) }),
            )
            .route("/users", get(list_users).post(create_user))
            .route("/users/{username}", get(get_user).delete(delete_user))
            .route("/users/{username}/disable", post(disable_user))
            .route("/users/{username}/enable", post(enable_user))
            .route("/users/{username}/password", put(set_password))
            .route(
                "/users/{username}/attributes",
                axum::routing::patch(update_attributes),
            )
            .route(
                "/users/{username}/sessions",
                get(user_sessions).delete(end_sessions),
            )
            .route("/users/{username}/mfa", axum::routing::delete(reset_mfa))
            .route("/users/{username}/identities", get(user_identities))
            .route(
                "/users/{username}/identities/{provider}",
                axum::routing::delete(unlink_identity),
            )
            .route("/groups", get(list_groups).post(create_group))
            .route("/groups/{group}", get(get_group).delete(delete_group))
            .route("/policies/versions", get(policy_versions))
            .route("/policies/versions/{version}", get(policy_version))
            .route("/policies/explain", post(explain))
            .route("/policies/rollback", post(rollback_policies))
            .route("/policies/diff", get(diff_policies))
            .route("/policies/matrix", get(policy_matrix))
            .route("/policies/validate", post(validate_policies))
            .route("/clients", get(list_clients).post(create_client))
            .route(
                "/clients/{client_id}",
                get(get_client).patch(update_client).delete(delete_client),
            )
            .route("/clients/{client_id}/secret", post(rotate_client_secret))
            .route(
                "/resource-servers",
                get(list_resource_servers).post(create_resource_server),
            )
            .route(
                "/resource-servers/{identifier}",
                axum::routing::delete(delete_resource_server),
            )
            .route("/sessions", get(list_sessions))
            .route("/sessions/{sid}", axum::routing::delete(end_session))
            .route("/keys", get(list_keys))
            .route("/keys/rotate", post(rotate_keys))
            .route(
                "/groups/{group}/members/{username}",
                put(add_member).delete(remove_member),
            )
            .route("/policies", get(get_policies).put(set_policies))
            .route("/audit", get(list_audit))
            .fallback(|| async {
                problem(
                    StatusCode::NOT_FOUND,
                    "Not found",
                    "no such operation; see openapi.json",
                )
            })
            .with_state(Api { app });
        AdminApi {
            router: Router::new().nest(prefix, routes),
        }
    }
}

impl portcullis_gateway::Builtin for AdminApi {
    fn call(
        &self,
        mut req: Request<Body>,
        identity: Option<Arc<Identity>>,
        peer: SocketAddr,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<Body>> + Send>> {
        let router = self.router.clone();
        Box::pin(async move {
            let Some(id) = identity else {
                return problem(
                    StatusCode::UNAUTHORIZED,
                    "Unauthorized",
                    "sign in or send a Bearer token",
                );
            };
            let who = match (&id.username, &id.client_id) {
                (Some(_), _) => format!("user:{}", id.sub),
                (None, Some(c)) => format!("client:{c}"),
                (None, None) => format!("user:{}", id.sub),
            };
            req.extensions_mut().insert(Caller {
                actor: Actor {
                    who,
                    source: peer.ip().to_string(),
                },
            });
            match tower::ServiceExt::oneshot(router, req).await {
                Ok(r) => r,
                Err(never) => match never {},
            }
        })
    }
}

/// The admin API's prefix: the path of the `builtin = "admin-api"` route without its `/**`.
pub fn prefix(routes: &portcullis_gateway::route::RouteTable) -> Option<String> {
    routes.routes().iter().find_map(|r| match &r.target {
        portcullis_gateway::route::Target::Builtin { name } if name == "admin-api" => Some(
            r.pattern
                .as_str()
                .trim_end_matches("/**")
                .trim_end_matches('/')
                .to_owned(),
        ),
        _ => None,
    })
}
