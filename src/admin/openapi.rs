//! The admin API's OpenAPI 3.1 document (`GET /v1/openapi.json`),
//! generated at build time by `utoipa` from the operations declared here
//! and the schemas derived on the types the handlers read and answer
//! (`ConnSnapshot`, the registration body, the audit report, a reload's
//! `Changes`). A test checks that every path `GET /` lists is in it and
//! that every path in it is answered.
#![allow(dead_code)] // (the functions exist for their attributes)

use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use super::audit::{Counts, Finding, Report};
use super::services::{Body as RegistrationBody, HealthHint};
use crate::conn::{ConnSnapshot, TlvSnapshot};
use crate::reload::{Changes, Diff};

/// An error answer.
#[derive(Serialize, ToSchema)]
struct ErrorAnswer {
    error: String,
}

/// `GET /connections`.
#[derive(Serialize, ToSchema)]
struct ConnectionList {
    /// Live connections in the table.
    active: u64,
    /// Those the filters match.
    matching: u64,
    connections: Vec<ConnSnapshot>,
}

/// Connections closed.
#[derive(Serialize, ToSchema)]
struct Closed {
    closed: Vec<u64>,
}

/// A route's drain.
#[derive(Serialize, ToSchema)]
struct DrainAnswer {
    route: String,
    draining: bool,
    /// Its live connections.
    live: u64,
}

/// A reload's answer.
#[derive(Serialize, ToSchema)]
struct Applied {
    applied: Changes,
}

#[utoipa::path(get, path = "/v1/", tag = "admin",
    responses((status = 200, description = "The list of endpoints (text)", content_type = "text/plain", body = String)))]
fn index() {}

#[utoipa::path(get, path = "/v1/healthz", tag = "admin",
    responses((status = 200, description = "Liveness: `ok` (never needs the token)", content_type = "text/plain", body = String)))]
fn healthz() {}

#[utoipa::path(get, path = "/v1/openapi.json", tag = "admin",
    responses((status = 200, description = "This document", body = Value)))]
fn openapi_json() {}

#[utoipa::path(get, path = "/v1/metrics", tag = "admin",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String)))]
fn metrics() {}

#[utoipa::path(get, path = "/v1/dashboard", tag = "admin",
    responses((status = 200, description = "The dashboard (one HTML page polling this API)", content_type = "text/html", body = String)))]
fn dashboard() {}

#[utoipa::path(get, path = "/v1/connections", tag = "connections",
    params(
        ("route" = Option<String>, Query, description = "Only connections on this route"),
        ("listener" = Option<String>, Query, description = "Only connections on this listener"),
        ("state" = Option<String>, Query, description = "Only connections in this state (established, upgraded…)"),
        ("client" = Option<String>, Query, description = "Only clients in this network or address (10.0.0.0/8)"),
        ("older_than" = Option<String>, Query, description = "Only connections older than this (30s)"),
    ),
    responses(
        (status = 200, description = "The live connection table, filtered", body = ConnectionList),
        (status = 400, description = "An unknown filter or a bad value", body = ErrorAnswer),
    ))]
fn connections() {}

#[utoipa::path(delete, path = "/v1/connections/{id}", tag = "connections",
    params(("id" = u64, Path, description = "The connection's id")),
    responses(
        (status = 200, description = "Closed: it ends as admin_closed", body = Closed),
        (status = 404, description = "No live connection has that id", body = ErrorAnswer),
        (status = 409, description = "It is ending already", body = ErrorAnswer),
    ))]
fn close_connection() {}

#[utoipa::path(post, path = "/v1/connections/close", tag = "connections",
    params(
        ("route" = Option<String>, Query, description = "Connections on this route"),
        ("listener" = Option<String>, Query, description = "Connections on this listener"),
        ("state" = Option<String>, Query, description = "Connections in this state"),
        ("client" = Option<String>, Query, description = "Clients in this network"),
        ("older_than" = Option<String>, Query, description = "Connections older than this"),
    ),
    responses(
        (status = 200, description = "Every matching connection closed", body = Closed),
        (status = 400, description = "No filter, or a bad one", body = ErrorAnswer),
    ))]
fn close_connections() {}

#[utoipa::path(get, path = "/v1/routes", tag = "connections",
    responses((status = 200, description = "Every route: live connections, requests, bytes, drained or not", body = Value)))]
fn routes() {}

#[utoipa::path(post, path = "/v1/routes/{name}/drain", tag = "connections",
    params(("name" = String, Path, description = "The route")),
    responses(
        (status = 200, description = "Drained: no new connections or requests (route_draining)", body = DrainAnswer),
        (status = 404, description = "No such route", body = ErrorAnswer),
    ))]
fn drain_route() {}

#[utoipa::path(delete, path = "/v1/routes/{name}/drain", tag = "connections",
    params(("name" = String, Path, description = "The route")),
    responses(
        (status = 200, description = "Resumed", body = DrainAnswer),
        (status = 404, description = "No such route", body = ErrorAnswer),
    ))]
fn resume_route() {}

#[utoipa::path(get, path = "/v1/audit", tag = "admin",
    responses((status = 200, description = "The leak audit: every mismatch between the table and pools and the process's sockets", body = Report)))]
fn audit() {}

#[utoipa::path(post, path = "/v1/tls/reload", tag = "config",
    responses((status = 200, description = "Certificates read from disk again", body = Value)))]
fn tls_reload() {}

#[utoipa::path(get, path = "/v1/config", tag = "config",
    responses((status = 200, description = "The running config (TOML text) and its generation", body = Value)))]
fn config() {}

#[utoipa::path(post, path = "/v1/config/reload", tag = "config",
    responses(
        (status = 200, description = "Applied: what changed", body = Applied),
        (status = 422, description = "Refused: every error; the running config stays", body = Value),
    ))]
fn config_reload() {}

#[utoipa::path(post, path = "/v1/config/validate", tag = "config",
    request_body(content = String, content_type = "application/toml", description = "A candidate config (at most 1 MiB)"),
    responses(
        (status = 200, description = "Valid", body = Value),
        (status = 422, description = "Every error, file:line: field: message", body = Value),
    ))]
fn config_validate() {}

#[utoipa::path(get, path = "/v1/clusters", tag = "clusters",
    responses((status = 200, description = "Every cluster and endpoint: state, load, latency, last probe, history", body = Value)))]
fn clusters() {}

#[utoipa::path(post, path = "/v1/clusters/{name}/endpoints", tag = "clusters",
    params(("name" = String, Path, description = "The cluster")),
    request_body(content = Value, description = "{\"address\": \"ip:port\", \"weight\": 1}"),
    responses(
        (status = 200, description = "Added (or its weight set)", body = Value),
        (status = 400, description = "Bad input", body = ErrorAnswer),
        (status = 404, description = "No such cluster", body = ErrorAnswer),
    ))]
fn add_endpoint() {}

#[utoipa::path(patch, path = "/v1/clusters/{name}/endpoints/{address}", tag = "clusters",
    params(("name" = String, Path, description = "The cluster"), ("address" = String, Path, description = "ip:port")),
    request_body(content = Value, description = "{\"weight\": 5}"),
    responses(
        (status = 200, description = "Its weight set", body = Value),
        (status = 404, description = "No such cluster or endpoint", body = ErrorAnswer),
    ))]
fn set_weight() {}

#[utoipa::path(delete, path = "/v1/clusters/{name}/endpoints/{address}", tag = "clusters",
    params(
        ("name" = String, Path, description = "The cluster"),
        ("address" = String, Path, description = "ip:port"),
        ("drain" = Option<String>, Query, description = "How long it may finish its requests (default 30s; 0s: at once)"),
    ),
    responses(
        (status = 200, description = "Draining: it leaves when idle or at the deadline", body = Value),
        (status = 404, description = "No such cluster or endpoint", body = ErrorAnswer),
    ))]
fn drain_endpoint() {}

#[utoipa::path(get, path = "/v1/services", tag = "services",
    responses((status = 200, description = "Registered services and their instances", body = Value)))]
fn services() {}

#[utoipa::path(get, path = "/v1/services/{service}", tag = "services",
    params(("service" = String, Path, description = "The service")),
    responses(
        (status = 200, description = "Its instances", body = Value),
        (status = 404, description = "No such service", body = ErrorAnswer),
    ))]
fn service() {}

#[utoipa::path(put, path = "/v1/services/{service}/instances/{id}", tag = "services",
    params(("service" = String, Path, description = "The service"), ("id" = String, Path, description = "The instance")),
    request_body(content = RegistrationBody),
    responses(
        (status = 201, description = "Registered", body = Value),
        (status = 200, description = "Renewed, or updated", body = Value),
        (status = 400, description = "Bad input (nothing applied)", body = ErrorAnswer),
        (status = 401, description = "No token"),
        (status = 403, description = "Wrong token"),
        (status = 507, description = "registry.max_instances reached", body = ErrorAnswer),
    ))]
fn register() {}

#[utoipa::path(post, path = "/v1/services/{service}/instances/{id}/heartbeat", tag = "services",
    params(("service" = String, Path, description = "The service"), ("id" = String, Path, description = "The instance")),
    responses(
        (status = 200, description = "Its TTL renewed", body = Value),
        (status = 404, description = "Not registered (or lapsed)", body = ErrorAnswer),
    ))]
fn heartbeat() {}

#[utoipa::path(delete, path = "/v1/services/{service}/instances/{id}", tag = "services",
    params(("service" = String, Path, description = "The service"), ("id" = String, Path, description = "The instance")),
    responses(
        (status = 200, description = "Deregistered: no new requests; those in flight finish", body = Value),
        (status = 404, description = "Not registered", body = ErrorAnswer),
    ))]
fn deregister() {}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Gatehouse admin API",
        description = "Every path is also served without the /v1 prefix. With admin.token_file or admin.token_env set, writes (and, with admin.public_reads = false, reads) need `Authorization: Bearer <token>`: 401 without, 403 with a wrong one."
    ),
    paths(
        index,
        healthz,
        openapi_json,
        metrics,
        dashboard,
        connections,
        close_connection,
        close_connections,
        routes,
        drain_route,
        resume_route,
        audit,
        tls_reload,
        config,
        config_reload,
        config_validate,
        clusters,
        add_endpoint,
        set_weight,
        drain_endpoint,
        services,
        service,
        register,
        heartbeat,
        deregister
    ),
    components(schemas(
        ErrorAnswer,
        ConnectionList,
        ConnSnapshot,
        TlvSnapshot,
        Closed,
        DrainAnswer,
        Applied,
        Changes,
        Diff,
        Report,
        Finding,
        Counts,
        RegistrationBody,
        HealthHint,
    ))
)]
struct ApiDoc;

/// The document, as JSON.
pub fn document() -> String {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc.to_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}
