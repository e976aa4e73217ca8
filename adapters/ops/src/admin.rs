//! The admin plane: an axum [`Router`] to mount in the service's own
//! server.
//!
//! | method and path | role | what |
//! |---|---|---|
//! | `GET /policies` | read-only | every live instance: section, name, state, resolved configuration; every keyed family |
//! | `GET /policies/{section}/{name}` | read-only | one instance (404 if it was never created) |
//! | `GET /config` | read-only | the configuration in force, as written (before inheritance) |
//! | `PUT /config/{section}/{name}` | admin | replace `section.instances.name` (a JSON object of its keys) and apply it |
//! | `PATCH /config/{section}/{name}` | admin | change only the keys given |
//! | `POST /breakers/{name}/{action}` | admin | `force_open`, `close` (back to closed, window emptied), `disable` |
//! | `PUT /bulkheads/{name}/limit` | admin | `{"limit": n}`: the bulkhead's limit, through its configuration |
//!
//! Every request needs `Authorization: Bearer <token>`: none or an unknown
//! one is 401, a read-only token on an admin route 403. Tokens are compared
//! in constant time (`subtle`) and never logged: records name the token's
//! holder (`who`). Bad JSON and refused values are 400 with the reason, and
//! change nothing. Every change is audited: a `tracing` record (target
//! `tenlives::audit`: who, action, target, old and new value) and an
//! `AUDIT` event ([`crate::events::AUDIT`]). The routes are rate-limited by a
//! tenlives rate limiter (the registry's `rate_limiter.instances.admin`,
//! else [`AdminConfig::rate_limit`]): over it, 429 with `Retry-After`.

use std::fmt;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use tenlives_engine::rate::Quota;

use crate::events::AUDIT;
use crate::registry::{Limiter, breaker_state_name};
use crate::{Registry, RegistryError};

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Read policies and configuration.
    ReadOnly,
    /// Read, and change configuration and breaker states.
    Admin,
}

struct Token {
    secret: Box<[u8]>,
    role: Role,
    who: String,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret.
        f.debug_struct("Token")
            .field("who", &self.who)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// The admin plane's tokens and rate limit.
#[derive(Debug)]
pub struct AdminConfig {
    tokens: Vec<Token>,
    rate_limit: Quota,
}

impl Default for AdminConfig {
    /// No token (every request is 401) and 10 requests a second, 20 at once.
    fn default() -> Self {
        AdminConfig {
            tokens: Vec::new(),
            rate_limit: Quota::per_second(10)
                .and_then(|q| q.with_burst(20))
                .expect("a valid quota"),
        }
    }
}

impl AdminConfig {
    /// Accepts `secret` as a bearer token with `role`, naming its holder
    /// `who` in audit records. Use long random secrets (32 bytes or more).
    pub fn token(mut self, who: impl Into<String>, secret: impl AsRef<[u8]>, role: Role) -> Self {
        self.tokens.push(Token {
            secret: secret.as_ref().into(),
            role,
            who: who.into(),
        });
        self
    }

    /// The admin routes' rate limit when the registry has no
    /// `rate_limiter` entry named `admin`.
    pub fn rate_limit(mut self, quota: Quota) -> Self {
        self.rate_limit = quota;
        self
    }
}

struct Admin {
    registry: Registry,
    tokens: Vec<Token>,
    limiter: Arc<Limiter>,
}

/// The admin router over `registry`, to nest under a path of the service's
/// own server (`Router::new().nest("/admin", router)`).
///
/// # Errors
///
/// A [`RegistryError`] if the `admin` rate limiter cannot be created (its
/// name is taken by a keyed family).
pub fn router(registry: Registry, config: AdminConfig) -> Result<Router, RegistryError> {
    let limiter = registry.rate_limiter_or("admin", config.rate_limit)?;
    let state = Arc::new(Admin {
        registry,
        tokens: config.tokens,
        limiter,
    });
    Ok(Router::new()
        .route("/policies", get(list))
        .route("/policies/{section}/{name}", get(one))
        .route("/config", get(whole_config))
        .route("/config/{section}/{name}", put(replace).patch(patch))
        .route("/breakers/{name}/{action}", post(breaker_action))
        .route("/bulkheads/{name}/limit", put(bulkhead_limit))
        .layer(middleware::from_fn_with_state(state.clone(), rate_limit))
        .with_state(state))
}

async fn rate_limit(State(admin): State<Arc<Admin>>, request: Request, next: Next) -> Response {
    match admin.limiter.check(admin.registry.now()) {
        Ok(()) => next.run(request).await,
        Err(limited) => {
            let secs = limited.wait().as_secs_f64().ceil().max(1.0) as u64;
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                "too many admin requests".into(),
            );
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            r
        }
    }
}

fn error(status: StatusCode, message: String) -> Response {
    (status, json_body(&json!({ "error": message }))).into_response()
}

fn json_body(v: &Value) -> ([(header::HeaderName, &'static str); 1], String) {
    ([(header::CONTENT_TYPE, "application/json")], v.to_string())
}

fn ok(v: Value) -> Response {
    (StatusCode::OK, json_body(&v)).into_response()
}

impl Admin {
    /// The caller's token if it may act as `needed`; else the 401 or 403.
    fn authorize(&self, headers: &HeaderMap, needed: Role) -> Result<&Token, Box<Response>> {
        let unauthorized = || {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "a valid bearer token is needed".into(),
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            Box::new(r)
        };
        // The scheme is case-insensitive (RFC 9110); the token is not.
        let presented = headers
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes())
            .filter(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer "))
            .map(|v| &v[7..])
            .ok_or_else(unauthorized)?;
        // Every token is compared, in constant time for equal lengths, so
        // that timing tells neither which token nor how much of one matched.
        let mut found = None;
        for token in &self.tokens {
            if bool::from(token.secret.ct_eq(presented)) {
                found = Some(token);
            }
        }
        let token = found.ok_or_else(unauthorized)?;
        if needed == Role::Admin && token.role != Role::Admin {
            return Err(Box::new(error(
                StatusCode::FORBIDDEN,
                format!("`{}` has a read-only token", token.who),
            )));
        }
        Ok(token)
    }

    fn audit(
        &self,
        who: &str,
        action: &'static str,
        code: u64,
        target: &str,
        old: &Value,
        new: &Value,
    ) {
        tracing::info!(
            target: "tenlives::audit",
            who,
            action,
            target,
            old = %old,
            new = %new,
            "admin change"
        );
        self.registry.emit(AUDIT, [code, 0]);
    }
}

async fn list(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    if let Err(r) = admin.authorize(&headers, Role::ReadOnly) {
        return *r;
    }
    ok(json!({ "policies": admin.registry.policies() }))
}

async fn one(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    Path((section, name)): Path<(String, String)>,
) -> Response {
    if let Err(r) = admin.authorize(&headers, Role::ReadOnly) {
        return *r;
    }
    match admin.registry.policy(&section, &name) {
        Some(v) => ok(v),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no live {section} named `{name}`"),
        ),
    }
}

async fn whole_config(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    if let Err(r) = admin.authorize(&headers, Role::ReadOnly) {
        return *r;
    }
    match serde_json::to_value(&admin.registry.config().spec) {
        Ok(v) => ok(v),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn parse_body(body: &Bytes) -> Result<Value, Box<Response>> {
    serde_json::from_slice(body)
        .map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}"))))
}

fn set(admin: &Admin, who: &str, section: &str, name: &str, body: Value, merge: bool) -> Response {
    match admin.registry.set_instance(section, name, body, merge) {
        Ok((old, new, report)) => {
            admin.audit(
                who,
                "set_config",
                1,
                &format!("{section}.instances.{name}"),
                &old,
                &new,
            );
            ok(json!({ "old": old, "new": new, "changed": report.changed }))
        }
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

async fn replace(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    Path((section, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    write_config(&admin, &headers, &section, &name, &body, false)
}

async fn patch(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    Path((section, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    write_config(&admin, &headers, &section, &name, &body, true)
}

/// `PUT` (`merge` false: the body replaces the configuration) and `PATCH`
/// (`merge` true: the body's keys are merged into it), for an admin.
fn write_config(
    admin: &Admin,
    headers: &HeaderMap,
    section: &str,
    name: &str,
    body: &Bytes,
    merge: bool,
) -> Response {
    let token = match admin.authorize(headers, Role::Admin) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    match parse_body(body) {
        Ok(v) => set(admin, &token.who, section, name, v, merge),
        Err(r) => *r,
    }
}

async fn bulkhead_limit(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let token = match admin.authorize(&headers, Role::Admin) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let body = match parse_body(&body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let Some(limit) = body
        .get("limit")
        .filter(|_| body.as_object().is_some_and(|o| o.len() == 1))
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "expected {\"limit\": <calls in flight>}".into(),
        );
    };
    if admin.registry.existing_bulkhead(&name).is_none() {
        return error(
            StatusCode::NOT_FOUND,
            format!("no live bulkhead named `{name}`"),
        );
    }
    set(
        &admin,
        &token.who,
        "bulkhead",
        &name,
        json!({ "limit": limit }),
        true,
    )
}

async fn breaker_action(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
) -> Response {
    let token = match admin.authorize(&headers, Role::Admin) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let Some(breaker) = admin.registry.existing_breaker(&name) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no live circuit breaker named `{name}`"),
        );
    };
    let now = admin.registry.now();
    let old = breaker_state_name(breaker.state());
    let code = match action.as_str() {
        "force_open" => {
            breaker.force_open(now);
            2
        }
        "close" => {
            breaker.reset(now);
            3
        }
        "disable" => {
            breaker.disable(now);
            4
        }
        other => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("unknown action `{other}`: one of force_open, close, disable"),
            );
        }
    };
    let new = breaker_state_name(breaker.state());
    admin.audit(
        &token.who,
        "breaker_state",
        code,
        &format!("circuit_breaker.{name}"),
        &json!(old),
        &json!(new),
    );
    ok(json!({ "old": old, "new": new }))
}
