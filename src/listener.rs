//! Listening sockets and accept loops. Each accepted connection is registered
//! in the connection table at once (so `accepted` = sum of `closed`), checked
//! against the global limit, and handed to its own task in `l4`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

use crate::conn::EndReason;
use crate::server::{ListenerRt, Runtime};

pub fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_nonblocking(true)?;
    // Accepted sockets inherit it (Linux): no setsockopt per connection.
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    TcpListener::from_std(socket.into())
}

pub async fn accept_loop(listener: TcpListener, rt: Arc<ListenerRt>, runtime: Arc<Runtime>) {
    let max = runtime.config.limits.max_connections as usize;
    let draining = runtime.shutdown.draining();
    tokio::pin!(draining);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = &mut draining => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE/ENFILE/ENOBUFS: back off briefly instead of spinning;
                // the pending connection stays in the kernel's queue.
                tracing::warn!(listener = &*rt.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let guard = runtime.table.register(rt.name.clone(), peer);
        if runtime.table.active() > max {
            guard.finish(EndReason::LimitGlobal);
            drop(stream);
            continue;
        }
        // Boxed before spawning: the task then holds a pointer, and tokio's
        // moves of the task's future (into its cell, out at its end) copy
        // 8 bytes instead of the connection future's kilobyte and a half.
        tokio::spawn(Box::pin(crate::l4::serve(
            stream,
            peer,
            guard,
            rt.clone(),
            runtime.clone(),
        )));
    }
    // Closed before it is reported: once the line is out, a connect is refused.
    drop(listener);
    tracing::info!(listener = &*rt.name, "listener closed");
}
