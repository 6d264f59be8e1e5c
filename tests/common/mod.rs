//! Test harness: runs Gatehouse as its own process on a generated config,
//! learns its bound addresses from its JSON log events, and reads its state
//! through the admin API and /proc. Backends are real sockets on 127.0.0.1.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

pub struct Gatehouse {
    child: Option<Child>,
    pub listeners: HashMap<String, SocketAddr>,
    pub admin: SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Gatehouse {
    /// Starts Gatehouse on `config` (TOML). The config must bind listeners and
    /// the admin endpoint to port 0; the real ports come from the log.
    pub fn start(config: &str) -> Gatehouse {
        Self::start_with_env(config, &[])
    }

    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Gatehouse {
        Self::start_with(config, env, &[])
    }

    /// Starts Gatehouse with its descriptor limit (soft and hard) set to
    /// `nofile`, through util-linux's `prlimit`.
    pub fn start_with_nofile(config: &str, nofile: u64) -> Gatehouse {
        Self::start_with(
            config,
            &[],
            &["prlimit", &format!("--nofile={nofile}:{nofile}")],
        )
    }

    /// Starts Gatehouse in a mount namespace of its own where `hosts` is
    /// its /etc/hosts (bind-mounted: the test rewrites the file in place
    /// to change what names resolve to).
    pub fn start_with_hosts(config: &str, hosts: &std::path::Path) -> Gatehouse {
        let hosts = hosts.to_str().unwrap();
        Self::start_with(
            config,
            &[],
            &[
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                "mount --bind \"$0\" /etc/hosts && exec \"$@\"",
                hosts,
            ],
        )
    }

    /// `wrapper`: a command line that runs the binary (its last word
    /// before the binary's path), as the same process.
    pub fn start_with(config: &str, env: &[(&str, &str)], wrapper: &[&str]) -> Gatehouse {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gatehouse.toml");
        std::fs::write(&path, config).unwrap();
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        cmd.args(["run", "--config"])
            .arg(&path)
            .args(["--log-format", "json"]);
        cmd.env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<serde_json::Value>();
        let log2 = log.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    let _ = tx.send(v);
                }
                log2.lock().unwrap().push(line);
            }
        });
        let mut listeners = HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        let admin = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ev = match rx.recv_timeout(left) {
                Ok(ev) => ev,
                Err(_) => panic!(
                    "gatehouse did not start; log:\n{}",
                    log.lock().unwrap().join("\n")
                ),
            };
            match ev["message"].as_str() {
                Some("listening") => {
                    let name = ev["listener"].as_str().unwrap().to_string();
                    listeners.insert(name, ev["addr"].as_str().unwrap().parse().unwrap());
                }
                Some("admin listening") => break ev["addr"].as_str().unwrap().parse().unwrap(),
                _ => {}
            }
        };
        // Keep draining events so the reader thread never blocks.
        thread::spawn(move || while rx.recv().is_ok() {});
        Gatehouse {
            child: Some(child),
            listeners,
            admin,
            log,
            _dir: dir,
        }
    }

    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.listeners[listener]
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn get(&self, path: &str) -> String {
        http_get(self.admin, path)
    }

    pub fn connections(&self) -> serde_json::Value {
        serde_json::from_str(&self.get("/connections")).unwrap()
    }

    pub fn active(&self) -> u64 {
        self.connections()["active"].as_u64().unwrap()
    }

    /// Sum of every sample of `name` whose labels contain all of `labels`.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        metric_sum(&self.get("/metrics"), name, labels)
    }

    pub fn closed(&self, reason: &str) -> u64 {
        self.metric("gatehouse_connections_closed_total", &[("reason", reason)])
    }

    /// Waits until `n` connections have ended with `reason`. (The client can
    /// see its socket close a moment before the proxy's task counts the end.)
    pub fn wait_closed_count(&self, reason: &str, n: u64) {
        self.wait_for(reason, Duration::from_secs(2), |g| g.closed(reason) == n);
    }

    /// Waits until the table is empty; panics with the table after `timeout`.
    pub fn wait_empty(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.connections();
            if c["active"].as_u64() == Some(0) {
                return;
            }
            if Instant::now() > deadline {
                panic!("table not empty after {timeout:?}: {c:#}");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `cond` holds, polling the admin API.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut cond: impl FnMut(&Gatehouse) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        while !cond(self) {
            if Instant::now() > deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; table: {:#}",
                    self.connections()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process's resident memory (VmRSS), in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib_of(self.pid())
    }

    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }

    /// Sockets of this process in CLOSE_WAIT (state 08 in /proc/net/tcp*).
    pub fn close_wait(&self) -> usize {
        close_wait_of(self.pid())
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Sends SIGTERM and waits for the exit (at most `timeout`).
    pub fn terminate(self, timeout: Duration) -> ExitStatus {
        self.signal("TERM");
        self.wait_exit(timeout)
    }

    /// Waits for the process to exit on its own (at most `timeout`).
    pub fn wait_exit(mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let table = http_get(self.admin, "/connections");
                let _ = child.kill();
                panic!(
                    "gatehouse did not exit within {timeout:?}; table: {table}\nlog:\n{}",
                    self.log_text()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until a log line contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.log.lock().unwrap().iter().any(|l| l.contains(needle)) {
            assert!(
                Instant::now() < deadline,
                "no log line with {needle:?} after {timeout:?}:\n{}",
                self.log_text()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// The file the config was read from (what a reload reads again).
    pub fn config_path(&self) -> std::path::PathBuf {
        self._dir.path().join("gatehouse.toml")
    }

    /// A request to the admin listener with a JSON body: its status and
    /// JSON answer.
    pub fn admin_call(&self, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
        let mut s = TcpStream::connect(self.admin).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: admin\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(request.as_bytes()).unwrap();
        let (head, body) = read_response(&mut s);
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, serde_json::from_slice(&body).unwrap_or_default())
    }

    /// Writes `config` to the config file and asks for a reload
    /// (`POST /config/reload`): its status and JSON answer.
    pub fn reload(&self, config: &str) -> (u16, serde_json::Value) {
        std::fs::write(self.config_path(), config).unwrap();
        let (status, body) = http_post(self.admin, "/config/reload", b"");
        (status, serde_json::from_slice(&body).unwrap())
    }

    /// The address the listener `name` was last bound to (its latest
    /// `listening` line: a reload may have added it).
    pub fn listening(&self, name: &str) -> Option<SocketAddr> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .rev()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["message"] == "listening" && v["listener"] == name)
            .and_then(|v| v["addr"].as_str()?.parse().ok())
    }
}

impl Gatehouse {
    /// The address of the listener `name` once its `listening` line is
    /// read (the log arrives a moment after the admin API's answer).
    pub fn wait_listening(&self, name: &str) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(a) = self.listening(name) {
                return a;
            }
            assert!(
                Instant::now() < deadline,
                "listener {name} never listening:\n{}",
                self.log_text()
            );
            thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Reloads going on in the background (see `Gatehouse::reload_every`).
pub struct Reloading {
    stop: mpsc::Sender<()>,
    thread: Option<thread::JoinHandle<u64>>,
}

impl Reloading {
    /// Stops the reloads: how many were applied (each one must have been).
    pub fn stop(mut self) -> u64 {
        let _ = self.stop.send(());
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Reloading {
    fn drop(&mut self) {
        let _ = self.stop.send(());
    }
}

impl Gatehouse {
    /// Reloads every `every`: `config` with, every other time, one route
    /// more (on `listener`, after the others, forwarding nowhere), so that
    /// each reload adds or removes a route. Each must be applied.
    pub fn reload_every(&self, every: Duration, config: &str, listener: &str) -> Reloading {
        let (stop, stopped) = mpsc::channel();
        let (admin, path) = (self.admin, self.config_path());
        let plain = config.to_string();
        let more = format!(
            "{config}\n[[routes]]\nname = \"reload-churn\"\nmatch.listener = \"{listener}\"\naction.forward = [\"127.0.0.1:9\"]\n"
        );
        let thread = thread::spawn(move || {
            let mut applied = 0;
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                let text = if applied % 2 == 0 { &more } else { &plain };
                std::fs::write(&path, text).unwrap();
                let (status, body) = http_post(admin, "/config/reload", b"");
                assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
                applied += 1;
            }
            applied
        });
        Reloading {
            stop,
            thread: Some(thread),
        }
    }
}

/// `POST path` with `body` to an HTTP/1.1 server: the status and body.
pub fn http_post(addr: SocketAddr, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: admin\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let (head, body) = read_response(&mut s);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, body)
}

impl Drop for Gatehouse {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn close_wait_of(pid: u32) -> usize {
    let mut inodes = std::collections::HashSet::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        if let Ok(target) = std::fs::read_link(e.path()) {
            let t = target.to_string_lossy().to_string();
            if let Some(inode) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                inodes.insert(inode.to_string());
            }
        }
    }
    let mut n = 0;
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() > 9 && cols[3] == "08" && inodes.contains(cols[9]) {
                n += 1;
            }
        }
    }
    n
}

/// The resident memory (VmRSS) of process `pid`, in KiB.
pub fn rss_kib_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")
                .map(|v| v.trim().trim_end_matches("kB").trim().parse().unwrap())
        })
        .unwrap()
}

/// Panics when no sample matches, so a renamed or missing metric cannot pass as 0.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    let mut sum = 0;
    let mut found = false;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, lbl) = series.split_once('{').unwrap_or((series, ""));
        if n == name
            && labels
                .iter()
                .all(|(k, v)| lbl.contains(&format!("{k}=\"{v}\"")))
        {
            sum += value.parse::<f64>().unwrap() as u64;
            found = true;
        }
    }
    // Series of ended connections and requests appear only once a reason
    // has occurred.
    assert!(
        found
            || name == "gatehouse_connections_closed_total"
            || name == "gatehouse_http_request_end_total"
            || name == "gatehouse_mirror_requests_total",
        "no sample of {name} {labels:?} in:\n{text}"
    );
    sum
}

pub fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
    body.to_string()
}

/// A backend on `bind` (`"127.0.0.1:0"` for any port) that gives each
/// accepted connection to `serve` in a thread of its own. Returns its
/// address; runs until the test ends.
pub fn thread_backend(bind: &str, serve: impl Fn(TcpStream) + Send + Sync + 'static) -> SocketAddr {
    let l = TcpListener::bind(bind).unwrap();
    let addr = l.local_addr().unwrap();
    let serve = Arc::new(serve);
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let serve = serve.clone();
            thread::spawn(move || serve(s));
        }
    });
    addr
}

/// Echoes every byte until the peer's EOF, then shuts down its own write side.
pub fn echo(mut s: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
    let _ = s.shutdown(Shutdown::Write);
}

/// An echo backend: echoes every byte, and after the client's EOF shuts down
/// its own write side. Returns its address; runs until the test ends.
pub fn echo_backend() -> SocketAddr {
    thread_backend("127.0.0.1:0", echo)
}

/// A backend that hands every accepted connection to the test.
pub fn capture_backend() -> (SocketAddr, mpsc::Receiver<TcpStream>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            if tx.send(s).is_err() {
                break;
            }
        }
    });
    (addr, rx)
}

/// An address that never answers: a listener whose accept queue is full, so
/// the kernel drops further SYNs. Keep the returned value alive.
pub struct Blackhole {
    pub addr: SocketAddr,
    _listener: socket2::Socket,
    _fillers: Vec<TcpStream>,
}

pub fn blackhole() -> Blackhole {
    use socket2::{Domain, Socket, Type};
    let l = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    l.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    l.listen(0).unwrap();
    let addr = l.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(s) => fillers.push(s),
            Err(_) => break,
        }
        assert!(fillers.len() < 64, "accept queue never filled");
    }
    Blackhole {
        addr,
        _listener: l,
        _fillers: fillers,
    }
}

/// A local port with nothing listening: a socket bound to it but never
/// listening keeps the port reserved (so nothing started later, such as the
/// proxy's own listeners, can be given it) while connections to it are refused.
pub struct RefusedPort {
    pub addr: SocketAddr,
    _bound: socket2::Socket,
}

pub fn refused_addr() -> RefusedPort {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    RefusedPort { addr, _bound: s }
}

/// Reads until EOF or error; returns what was read and whether it ended by EOF.
pub fn read_to_end(s: &mut TcpStream) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (out, false),
        }
    }
}

/// Waits for the peer to close `s` (EOF or reset), bounded by `timeout`;
/// returns how long it took.
pub fn wait_closed(s: &mut TcpStream, timeout: Duration) -> Duration {
    let start = Instant::now();
    s.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return start.elapsed(),
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                panic!("connection still open after {timeout:?}")
            }
            Err(_) => return start.elapsed(),
        }
    }
}

/// Config text for one listener ("in") and one route forwarding to `target`,
/// with extra TOML appended to the route / prepended at top level.
pub fn simple_config(
    top: &str,
    listener_extra: &str,
    target: SocketAddr,
    route_extra: &str,
) -> String {
    // Two workers (the multi-thread runtime) unless the test picks.
    let workers = if top.contains("workers") {
        ""
    } else {
        "workers = 2"
    };
    format!(
        r#"admin.bind = "127.0.0.1:0"
{workers}
{top}

[[listeners]]
name = "in"
bind = "127.0.0.1:0"
{listener_extra}

[[routes]]
name = "r"
action.forward = ["{target}"]
{route_extra}
"#
    )
}

/// Deterministic bytes for transfer checks.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Connects from a chosen local address (any 127.0.0.0/8 address works on Linux).
pub fn connect_from(src: &str, dst: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&format!("{src}:0").parse::<SocketAddr>().unwrap().into())
        .unwrap();
    s.connect(&dst.into()).unwrap();
    s.into()
}

/// Every connection accepted is either live or was closed with some reason.
/// (A connection ending counts its reason a moment before it leaves the
/// table, and the exposition reads one after the other: a snapshot taken
/// in between is retried, within a second, rather than taken as a leak.)
pub fn assert_accounted(gh: &Gatehouse) {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let m = gh.get("/metrics");
        let accepted = metric_sum(&m, "gatehouse_connections_accepted_total", &[]);
        let closed = metric_sum(&m, "gatehouse_connections_closed_total", &[]);
        let live = metric_sum(&m, "gatehouse_connections_live", &[]);
        if accepted == closed + live || Instant::now() > deadline {
            assert_eq!(accepted, closed + live, "accepted != closed + live:\n{m}");
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    assert_audit_clean(gh);
}

/// The leak audit finds nothing: every socket and pipe of the process is
/// owned by a live connection, a pool, a listener or a probe, and every
/// live connection has its socket.
pub fn assert_audit_clean(gh: &Gatehouse) {
    let report: serde_json::Value =
        serde_json::from_str(&gh.get("/v1/audit")).expect("the audit answers JSON");
    assert_eq!(report["mismatches"], 0, "leak audit: {report:#}");
}

/// One request as a raw-HTTP test backend saw it.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    /// The head exactly as received, request line included, without the final CRLF CRLF.
    pub head: String,
    pub body: Vec<u8>,
}

impl SeenRequest {
    pub fn request_line(&self) -> &str {
        self.head.lines().next().unwrap_or("")
    }

    /// Values of a header (case-insensitive name), in order.
    pub fn header(&self, name: &str) -> Vec<String> {
        self.head
            .split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }
}

/// Reads one request (head + Content-Length or chunked body) from a raw socket.
pub fn read_request(s: &mut impl Read) -> Option<SeenRequest> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8_lossy(&buf[..buf.len() - 4]).to_string();
    let req = SeenRequest {
        head,
        body: Vec::new(),
    };
    let mut body = Vec::new();
    if let Some(len) = req
        .header("content-length")
        .first()
        .and_then(|v| v.parse::<usize>().ok())
    {
        body.resize(len, 0);
        s.read_exact(&mut body).ok()?;
    } else if req
        .header("transfer-encoding")
        .iter()
        .any(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let mut line = Vec::new();
            while !line.ends_with(b"\r\n") {
                s.read_exact(&mut byte).ok()?;
                line.push(byte[0]);
            }
            let size =
                usize::from_str_radix(String::from_utf8_lossy(&line).trim().split(';').next()?, 16)
                    .ok()?;
            let mut chunk = vec![0u8; size + 2];
            s.read_exact(&mut chunk).ok()?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    }
    Some(SeenRequest { body, ..req })
}

/// A raw HTTP/1.1 backend: for each request it records what it saw and
/// writes `respond(&request)` (a complete raw response). Keeps connections alive.
pub fn raw_http_backend(
    respond: impl Fn(&SeenRequest) -> Vec<u8> + Send + Sync + 'static,
) -> (SocketAddr, Arc<Mutex<Vec<SeenRequest>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let respond = Arc::new(respond);
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let seen = seen2.clone();
            let respond = respond.clone();
            thread::spawn(move || {
                while let Some(req) = read_request(&mut s) {
                    let resp = respond(&req);
                    seen.lock().unwrap().push(req);
                    if s.write_all(&resp).is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, seen)
}

pub fn ok_response(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A raw HTTP exchange: writes `request`, reads one response head + body
/// (Content-Length or until close). Returns (status line + headers, body).
pub fn raw_exchange(addr: SocketAddr, request: &[u8]) -> (String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    read_response(&mut s)
}

pub fn read_response(s: &mut impl Read) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            _ => return (String::from_utf8_lossy(&buf).to_string(), Vec::new()),
        }
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status.starts_with('1') || status == "204" || status == "304" {
        return (head, Vec::new());
    }
    let len = head.lines().find_map(|l| {
        l.split_once(':')
            .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.trim().parse::<usize>().unwrap_or(0))
    });
    let mut body = Vec::new();
    match len {
        Some(n) => {
            // Stop at EOF or error: a cut-short body comes back short.
            let _ = s.take(n as u64).read_to_end(&mut body);
        }
        None => {
            let _ = s.read_to_end(&mut body);
        }
    }
    (head, body)
}

/// Config with one HTTP listener "web" and one route "app" to `target`.
pub fn http_config(top: &str, http_extra: &str, target: SocketAddr, route_extra: &str) -> String {
    // Two workers (the multi-thread runtime) unless the test picks.
    let workers = if top.contains("workers") {
        ""
    } else {
        "workers = 2"
    };
    format!(
        r#"admin.bind = "127.0.0.1:0"
{workers}
{top}

[[listeners]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"
{http_extra}

[[routes]]
name = "app"
match.listener = "web"
action.forward = ["{target}"]
{route_extra}
"#
    )
}
/// A config with an HTTP listener `web` whose one route `app` forwards to
/// the cluster `pool`, whose settings (endpoints included) are `cluster`.
pub fn cluster_config(cluster: &str) -> String {
    format!(
        r#"admin.bind = "127.0.0.1:0"
workers = 2

[[listeners]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"
http.access_log = false

[[routes]]
name = "app"
match.listener = "web"
action.cluster = "pool"

[[clusters]]
name = "pool"
{cluster}
"#
    )
}

/// A two-worker tokio runtime for a test's clients and backends.
pub fn test_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// An HTTP/2 prior-knowledge client connection to `addr` (hyper's): its
/// request sender, and the task running the connection.
pub async fn h2c_client<B>(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<B>,
    tokio::task::JoinHandle<hyper::Result<()>>,
)
where
    B: hyper::body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    (sender, tokio::spawn(conn))
}

pub mod tls;

/// A field of a response head (case-insensitive name), if present.
pub fn head_field<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

/// A loopback port free a moment ago (for servers a test cannot ask).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sends `size` bytes through the proxy to the echo backend while reading
/// the echo, and checks every byte.
pub fn echo_through(addr: std::net::SocketAddr, size: usize, seed: u64) {
    let data = pattern(size, seed);
    let mut c = TcpStream::connect(addr).unwrap();
    let mut w = c.try_clone().unwrap();
    let sent = data.clone();
    // Write and read at the same time: the echo makes both directions busy.
    let writer = thread::spawn(move || {
        for chunk in sent.chunks(100_000) {
            w.write_all(chunk).unwrap();
        }
        w.shutdown(Shutdown::Write).unwrap();
    });
    let (got, eof) = read_to_end(&mut c);
    writer.join().unwrap();
    assert!(eof, "size {size}: no clean EOF");
    assert_eq!(got.len(), data.len(), "size {size}");
    assert!(got == data, "size {size}: bytes differ");
}
