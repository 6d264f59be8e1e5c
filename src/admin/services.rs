//! The service registry on the admin listener:
//! `PUT /v1/services/{service}/instances/{id}` registers (or renews) an
//! instance from a JSON body, `POST …/{id}/heartbeat` renews its TTL,
//! `DELETE …/{id}` deregisters it, `GET /v1/services[/{service}]` lists.
//! Bad input is a 400 naming what is wrong, and nothing of it is applied.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::registry::{Put, Registration, Registry, RegistryError};

/// The largest registration body.
pub const MAX_BODY: usize = 16 * 1024;

/// A registration's body.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = RegistrationBody)]
pub(super) struct Body {
    /// `ip:port` (not a wildcard address, not port 0).
    #[schema(example = "10.0.0.5:8080")]
    address: String,
    /// A duration such as "30s" (default 30s; 1s to 24h).
    #[schema(example = "30s")]
    ttl: Option<String>,
    /// 1 to 10000 (default 1).
    #[schema(minimum = 1, maximum = 10000)]
    weight: Option<u32>,
    /// At most 32, each at most 64 characters.
    tags: Option<Vec<String>>,
    /// A health-check hint: `{"path": "/ready"}`. A service cluster without
    /// a `health` of its own probes the instance there (GET every 5 s,
    /// 200–399 passes); a cluster with one probes its own way.
    health: Option<HealthHint>,
}

/// A registration's health-check hint.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct HealthHint {
    /// The path a probe asks for.
    #[schema(example = "/ready")]
    path: String,
    /// How often (1s to 60s, default 5s).
    #[schema(example = "5s")]
    interval: Option<String>,
}

fn bad(message: impl Into<String>) -> (u16, Value) {
    (400, json!({ "error": message.into() }))
}

/// The registration `body` asks for.
fn registration(service: &str, id: &str, body: &[u8]) -> Result<Registration, String> {
    let b: Body = serde_json::from_slice(body).map_err(|e| format!("body: {e}"))?;
    let address = b.address.parse().map_err(|_| {
        format!(
            "address: {:?} is not an address like 10.0.0.5:8080",
            b.address
        )
    })?;
    let ttl = match &b.ttl {
        None => std::time::Duration::from_secs(30),
        Some(t) => crate::config::parse_duration(t).map_err(|m| format!("ttl: {m}"))?,
    };
    let reg = Registration {
        service: service.into(),
        id: id.into(),
        address,
        weight: b.weight.unwrap_or(1),
        tags: b.tags.unwrap_or_default(),
        ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
        health_path: b.health.as_ref().map(|h| h.path.clone()),
        health_interval_ms: match b.health.as_ref().and_then(|h| h.interval.as_ref()) {
            None => None,
            Some(t) => {
                let d = crate::config::parse_duration(t)
                    .map_err(|m| format!("health.interval: {m}"))?;
                Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            }
        },
    };
    reg.check()?;
    Ok(reg)
}

fn error(e: &RegistryError) -> (u16, Value) {
    let status = match e {
        RegistryError::NotFound(..) => 404,
        RegistryError::Full(_) => 507,
        RegistryError::Store(_) => 503,
    };
    (status, json!({ "error": e.to_string() }))
}

/// A change that goes to the registry's store: its write syncs a file, so
/// it runs off the runtime's threads; without a data directory there is
/// nothing to wait for, and a hand-off to another thread would cost more
/// than the change.
async fn with_store<T: Send + 'static>(
    registry: &Registry,
    change: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    if registry.persistent() {
        tokio::task::spawn_blocking(change).await
    } else {
        Ok(change())
    }
}

/// A request under `/services` (the path without `/v1`).
pub async fn handle(
    registry: &Arc<Registry>,
    method: &http::Method,
    path: &str,
    body: &[u8],
) -> (u16, Value) {
    let rest = path.strip_prefix("/services").unwrap_or_default();
    let parts: Vec<&str> = rest.split('/').skip(1).collect();
    use http::Method as M;
    match (method, &parts[..]) {
        (&M::GET, []) => (200, registry.list(None).unwrap_or_default()),
        (&M::GET, [service]) => match registry.list(Some(service)) {
            Some(v) => (200, v),
            None => (404, json!({ "error": format!("no service {service:?}") })),
        },
        (&M::PUT, [service, "instances", id]) => {
            let reg = match registration(service, id, body) {
                Ok(r) => r,
                Err(m) => return bad(m),
            };
            let r = registry.clone();
            match with_store(registry, move || r.put(reg)).await {
                Ok(Ok(put)) => {
                    let status = if put == Put::Created { 201 } else { 200 };
                    let word = match put {
                        Put::Created => "created",
                        Put::Updated => "updated",
                        Put::Renewed => "renewed",
                    };
                    (status, json!({ "result": word }))
                }
                Ok(Err(e)) => error(&e),
                Err(_) => (500, json!({ "error": "the registration failed" })),
            }
        }
        (&M::POST, [service, "instances", id, "heartbeat"]) => {
            match registry.heartbeat(service, id) {
                Ok(ttl) => (200, json!({ "ttl_ms": ttl.as_millis() as u64 })),
                Err(e) => error(&e),
            }
        }
        (&M::DELETE, [service, "instances", id]) => {
            let (r, s, i) = (registry.clone(), service.to_string(), id.to_string());
            match with_store(registry, move || r.remove(&s, &i)).await {
                Ok(Ok(())) => (200, json!({ "result": "deregistered" })),
                Ok(Err(e)) => error(&e),
                Err(_) => (500, json!({ "error": "the deregistration failed" })),
            }
        }
        _ => (
            404,
            json!({ "error": "see GET /v1/ for the registry's paths" }),
        ),
    }
}
