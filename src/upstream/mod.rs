//! Upstreams, whatever the protocol: clusters of endpoints (`cluster`),
//! what is known of each endpoint (`endpoint`), how one is picked
//! (`balance`), active health checks (`health`), the one connector
//! (`connect`) and why reaching one failed (`error`).
//! The HTTP connection pools built on them are `http::pool`'s.

pub mod balance;
pub mod cluster;
pub mod connect;
pub mod endpoint;
pub mod error;
pub mod health;

pub use error::UpstreamError;
