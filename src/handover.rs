//! Zero-downtime binary restart: a running process hands its listening
//! sockets to its successor over a Unix socket (`SCM_RIGHTS`, as HAProxy
//! and Pingora do), so that no connection is refused in between.
//!
//! The running process (`--handover PATH`) listens on `PATH`. Its
//! successor (`--handover PATH --takeover`) connects, and receives one
//! message: a JSON list of the listeners (name and configured bind; the
//! admin listener as `admin`) with their descriptors. It uses those of its
//! own listeners that have the same name and bind, binds the rest, and
//! once it accepts on all of them answers `ready`. Only then does the old
//! process stop accepting and drain, as on SIGTERM; both accept on the
//! shared sockets in between, so a connection waits in the kernel's queue
//! at worst. A successor that fails before `ready` leaves the old process
//! running as it was. The successor then listens on `PATH` itself, for
//! the next one.

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut, Read as _, Write as _};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

/// At most this many sockets are handed over (one `SCM_RIGHTS` message
/// carries at most 253 descriptors on Linux).
pub const MAX_SOCKETS: usize = 250;
/// The largest description message.
const MAX_MESSAGE: usize = 64 * 1024;
/// How long either side waits for the other at each step.
const STEP_DEADLINE: Duration = Duration::from_secs(10);
/// How long the old process waits for its successor's `ready`.
const READY_DEADLINE: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("cannot reach the running process at {path}: {error}")]
    Connect { path: String, error: std::io::Error },
    #[error("handover: {0}")]
    Io(#[from] std::io::Error),
    #[error("handover: the running process sent {0}")]
    Malformed(String),
}

/// One socket in the handover message.
#[derive(Debug, Serialize, Deserialize)]
struct Offered {
    /// The listener's name (`admin` for the admin listener).
    name: String,
    /// Its configured bind (port 0 included): a successor takes it for a
    /// listener of the same name and bind.
    bind: SocketAddr,
}

/// A socket the running process offers: its name, configured bind and a
/// descriptor of its own (a duplicate).
pub struct Offer {
    pub name: String,
    pub bind: SocketAddr,
    pub fd: OwnedFd,
}

/// What a successor received: the listening sockets by name, and the
/// connection on which it says `ready`.
pub struct Inherited {
    sockets: HashMap<String, (SocketAddr, OwnedFd)>,
    conn: UnixStream,
}

/// The admin listener's name in the message.
pub const ADMIN: &str = "admin";

/// Connects to the running process at `path` and receives its sockets.
pub fn take(path: &Path) -> Result<Inherited, HandoverError> {
    let conn = UnixStream::connect(path).map_err(|error| HandoverError::Connect {
        path: path.display().to_string(),
        error,
    })?;
    conn.set_read_timeout(Some(STEP_DEADLINE))?;
    conn.set_write_timeout(Some(STEP_DEADLINE))?;
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        &conn,
        &mut [IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(std::io::Error::from)?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = msg {
            fds.extend(received);
        }
    }
    // (The message is sent whole, 4 bytes of length first; a read that
    // stopped short is finished with plain reads.)
    let mut have = got.bytes;
    let want = buf
        .get(..4)
        .filter(|_| have >= 4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize + 4)
        .filter(|&w| w <= MAX_MESSAGE)
        .ok_or_else(|| HandoverError::Malformed(format!("{have} bytes")))?;
    while have < want {
        let n = (&conn).read(&mut buf[have..want])?;
        if n == 0 {
            return Err(HandoverError::Malformed("a cut message".into()));
        }
        have += n;
    }
    let list: Vec<Offered> = serde_json::from_slice(&buf[4..want])
        .map_err(|e| HandoverError::Malformed(e.to_string()))?;
    if list.len() != fds.len() {
        return Err(HandoverError::Malformed(format!(
            "{} sockets described and {} received",
            list.len(),
            fds.len()
        )));
    }
    let sockets = list
        .into_iter()
        .zip(fds)
        .map(|(o, fd)| (o.name, (o.bind, fd)))
        .collect();
    Ok(Inherited { sockets, conn })
}

impl Inherited {
    /// The listening socket handed over for `name` bound as `bind`, ready
    /// for tokio. `None`: not handed over (or differently bound): bind it.
    pub fn listener(&mut self, name: &str, bind: SocketAddr) -> Option<TcpListener> {
        if self.sockets.get(name).is_none_or(|(b, _)| *b != bind) {
            return None;
        }
        let (_, fd) = self.sockets.remove(name)?;
        let std = std::net::TcpListener::from(fd);
        std.set_nonblocking(true).ok()?;
        TcpListener::from_std(std).ok()
    }

    /// Tells the old process to stop accepting and drain. The sockets not
    /// taken are closed here.
    /// `kernel_table`: this process's nftables table (the old process
    /// removes its own unless it is the same one).
    pub fn ready(mut self, kernel_table: &str) -> std::io::Result<()> {
        // (One write: "ready" first, as a successor before tables said.)
        let said = format!("ready\ntable {kernel_table}\n");
        self.conn.write_all(said.as_bytes())?;
        self.conn.flush()
    }
}

/// A successor that took the sockets over.
#[derive(Debug)]
pub struct Successor {
    /// Its nftables table, when it said (a successor of an earlier
    /// version does not).
    pub kernel_table: Option<String>,
}

/// Sends `offers` on `conn` and waits for `ready` (blocking: run it off
/// the runtime). `Some`: the successor took over.
pub fn give(conn: UnixStream, offers: &[Offer]) -> Result<Option<Successor>, HandoverError> {
    conn.set_nonblocking(false)?;
    conn.set_write_timeout(Some(STEP_DEADLINE))?;
    conn.set_read_timeout(Some(READY_DEADLINE))?;
    let offers = &offers[..offers.len().min(MAX_SOCKETS)];
    let list: Vec<Offered> = offers
        .iter()
        .map(|o| Offered {
            name: o.name.clone(),
            bind: o.bind,
        })
        .collect();
    let json = serde_json::to_vec(&list).map_err(|e| HandoverError::Malformed(e.to_string()))?;
    let mut message = (json.len() as u32).to_be_bytes().to_vec();
    message.extend_from_slice(&json);
    let fds: Vec<BorrowedFd<'_>> = offers.iter().map(|o| o.fd.as_fd()).collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    control.push(SendAncillaryMessage::ScmRights(&fds));
    let sent = rustix::net::sendmsg(
        &conn,
        &[IoSlice::new(&message)],
        &mut control,
        SendFlags::NOSIGNAL,
    )
    .map_err(std::io::Error::from)?;
    (&conn).write_all(&message[sent..])?;
    let mut answer = [0u8; 6];
    match (&conn).read_exact(&mut answer) {
        Ok(()) if &answer == b"ready\n" => {}
        Ok(()) => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    // Then "table NAME\n", in the same write (a moment at most).
    conn.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut rest = Vec::new();
    let _ = (&conn).take(128).read_to_end(&mut rest);
    let kernel_table = std::str::from_utf8(&rest)
        .ok()
        .and_then(|t| t.lines().next()?.strip_prefix("table "))
        .map(str::to_owned);
    Ok(Some(Successor { kernel_table }))
}

/// Listens at `path` for a successor (a stale socket file left there is
/// replaced).
pub fn listen(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    tokio::net::UnixListener::bind(path)
}

/// The handover socket's path and whether to take over at start.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub path: Option<PathBuf>,
    pub takeover: bool,
}
