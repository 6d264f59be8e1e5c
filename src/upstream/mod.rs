//! Upstreams, whatever the protocol: clusters of endpoints (`cluster`),
//! the one connector (`connect`) and why reaching one failed (`error`).
//! The HTTP connection pools built on them are `http::pool`'s.

pub mod cluster;
pub mod connect;
pub mod error;

pub use error::UpstreamError;
