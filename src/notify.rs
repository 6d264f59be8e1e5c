//! Readiness for a service manager (systemd's `Type=notify`): `READY=1`
//! once every listener is bound and serving, `STOPPING=1` when the drain
//! begins, as datagrams to `$NOTIFY_SOCKET` (a path, or `@` for Linux's
//! abstract namespace). Without the variable, nothing is sent.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `state` (`READY=1`, `STOPPING=1`, …) to the service manager, if
/// there is one; a failure is logged, never fatal.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = (|| {
        let bytes = path.as_encoded_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name)?,
            None => SocketAddr::from_pathname(&path)?,
        };
        UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr)
    })();
    if let Err(e) = sent {
        tracing::warn!(error = %e, state, "could not notify the service manager");
    }
}
