//! Gatehouse: an edge proxy and API gateway.
//!
//! Data plane: `listener` (accept, global limits) → `l4` (one owner task per
//! connection: PROXY header, routing, connect, `pump`) → `http` for HTTP
//! connections, with `conn` (the connection table), `lifecycle` (states and
//! end reasons), `upstream` (clusters, the connector), `filter` (what a
//! route does to requests before and after the upstream), reading the running
//! config's `runtime::Snapshot`. Control plane: `config`, `reload` (live
//! config changes), `admin`, `metrics`, `notify` (readiness for systemd),
//! and `server`, the root (start-up, signals and graceful shutdown).

pub mod admin;
pub mod alloc;
pub mod config;
pub mod conn;
pub mod filter;
pub mod handover;
pub mod http;
pub mod io;
pub mod kernel;
pub mod l4;
pub mod lifecycle;
pub mod listener;
pub mod metrics;
pub mod notify;
pub mod proxy_protocol;
pub mod pump;
pub mod registry;
pub mod reload;
pub mod routing;
pub mod runtime;
pub mod server;
pub mod shutdown;
pub mod splice;
pub mod sys;
pub mod tls;
pub mod trace;
pub mod upstream;
