//! What conntrack says of kernel routes' connections: a dump of the
//! table, matched to the routes by original destination and answering
//! source, turned into live connections, byte totals (conntrack
//! accounting) and ends with the reasons conntrack can give.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Instant, SystemTime};

use ::conntrack::model::Flow;
use ::conntrack::model::TcpState;

use crate::config::KernelRoute;
use crate::lifecycle::EndReason;

/// Ids of kernel connections in `/connections`: apart from the process's own.
pub const ID_BASE: u64 = 1 << 48;

/// A kernel route's connection as conntrack last showed it.
#[derive(Debug, Clone)]
pub struct KernelConn {
    pub id: u64,
    pub route: String,
    pub client: SocketAddr,
    /// The address the client connected to.
    pub dst: SocketAddr,
    pub target: SocketAddr,
    pub state: &'static str,
    /// When this process first saw it.
    pub since: SystemTime,
    pub age_ms: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

/// A route's figures since the process started.
#[derive(Debug, Default, Clone)]
pub struct Totals {
    /// Connections conntrack showed.
    pub seen: u64,
    pub live: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// By reason and side.
    pub ends: BTreeMap<(&'static str, &'static str), u64>,
}

struct Tracked {
    conn: KernelConn,
    first: Instant,
    established: bool,
    ended: bool,
}

/// Flows followed from one dump to the next.
#[derive(Default)]
pub struct Tracker {
    flows: HashMap<(u32, SocketAddr), Tracked>,
    pub totals: BTreeMap<String, Totals>,
}

fn state_name(s: TcpState) -> &'static str {
    match s {
        TcpState::SynSent | TcpState::SynSent2 => "syn_sent",
        TcpState::SynRecv => "syn_recv",
        TcpState::Established => "established",
        TcpState::FinWait => "fin_wait",
        TcpState::CloseWait => "close_wait",
        TcpState::LastAck => "last_ack",
        TcpState::TimeWait => "time_wait",
        TcpState::Close => "close",
        _ => "none",
    }
}

fn addr(ip: Option<IpAddr>, port: Option<u16>) -> Option<SocketAddr> {
    Some(SocketAddr::new(ip?, port?))
}

/// Why a connection ended, from the state it ended in (`None`: it
/// vanished from the table before it closed: conntrack timed it out).
/// conntrack does not say which side closed or reset a connection.
fn end_reason(t: &Tracked, now: Option<TcpState>) -> (&'static str, &'static str) {
    let r = match now {
        Some(TcpState::TimeWait) => return ("closed", "unknown"),
        Some(TcpState::Close) if t.established => return ("reset", "unknown"),
        Some(TcpState::Close) => EndReason::UpstreamRefused,
        _ if !t.established => EndReason::UpstreamConnectTimeout,
        _ if t.conn.state == "established" => EndReason::IdleTimeout,
        // (Closing, when conntrack's timeout for that state ran out.)
        _ => return ("closed", "unknown"),
    };
    (r.as_str(), r.side().as_str())
}

impl Tracker {
    /// Takes a new dump: the routes' live connections.
    pub fn update(&mut self, flows: &[Flow], routes: &[(String, KernelRoute)]) -> Vec<KernelConn> {
        let now = Instant::now();
        let mut seen: Vec<(u32, SocketAddr)> = Vec::new();
        for f in flows {
            let (Some(id), Some(o), Some(r)) = (f.id, &f.origin, &f.reply) else {
                continue;
            };
            let (Some(op), Some(rp)) = (&o.proto, &r.proto) else {
                continue;
            };
            let (Some(client), Some(dst), Some(answered)) = (
                addr(o.src, op.src_port),
                addr(o.dst, op.dst_port),
                addr(r.src, rp.src_port),
            ) else {
                continue;
            };
            let Some((route, _)) = routes
                .iter()
                .find(|(_, k)| super::nft::takes(k, dst, answered))
            else {
                continue;
            };
            let tcp = f.proto_info.as_ref().and_then(|p| p.tcp.as_ref());
            let state = tcp.and_then(|t| t.state).unwrap_or(TcpState::None);
            let up = f.counter_origin.as_ref().and_then(|c| c.bytes).unwrap_or(0);
            let down = f.counter_reply.as_ref().and_then(|c| c.bytes).unwrap_or(0);
            let key = (id, client);
            seen.push(key);
            let totals = self.totals.entry(route.clone()).or_default();
            let t = self.flows.entry(key).or_insert_with(|| {
                totals.seen += 1;
                Tracked {
                    conn: KernelConn {
                        id: ID_BASE + u64::from(id),
                        route: route.clone(),
                        client,
                        dst,
                        target: answered,
                        state: "none",
                        since: SystemTime::now(),
                        age_ms: 0,
                        bytes_up: 0,
                        bytes_down: 0,
                    },
                    first: now,
                    established: false,
                    ended: false,
                }
            });
            totals.bytes_up += up.saturating_sub(t.conn.bytes_up);
            totals.bytes_down += down.saturating_sub(t.conn.bytes_down);
            t.conn.bytes_up = t.conn.bytes_up.max(up);
            t.conn.bytes_down = t.conn.bytes_down.max(down);
            t.conn.state = state_name(state);
            t.conn.age_ms = now.duration_since(t.first).as_millis() as u64;
            t.established |= !matches!(
                state,
                TcpState::SynSent | TcpState::SynSent2 | TcpState::SynRecv | TcpState::Close
            );
            if !t.ended && matches!(state, TcpState::TimeWait | TcpState::Close) {
                t.ended = true;
                *totals.ends.entry(end_reason(t, Some(state))).or_default() += 1;
            }
        }
        // Gone from the table without having closed: timed out.
        seen.sort_unstable();
        let totals = &mut self.totals;
        self.flows.retain(|k, t| {
            let kept = seen.binary_search(k).is_ok();
            if !kept && !t.ended {
                let why = end_reason(t, None);
                *totals
                    .entry(t.conn.route.clone())
                    .or_default()
                    .ends
                    .entry(why)
                    .or_default() += 1;
            }
            kept
        });
        for t in self.totals.values_mut() {
            t.live = 0;
        }
        let mut live = Vec::new();
        for t in self.flows.values().filter(|t| !t.ended) {
            if let Some(tot) = self.totals.get_mut(&t.conn.route) {
                tot.live += 1;
            }
            live.push(t.conn.clone());
        }
        live.sort_by_key(|c| c.id);
        live
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::conntrack::model::{Counter, IpTuple, ProtoInfo, ProtoTuple, TcpInfo};

    fn route() -> (String, KernelRoute) {
        let k = KernelRoute {
            strict: false,
            listen: "127.0.0.1:7000".parse().unwrap(),
            last_port: 7000,
            clients: Vec::new(),
            target: "10.0.0.5:80".parse().unwrap(),
            max_connections: None,
        };
        ("r".to_owned(), k)
    }

    fn tuple(src: &str, dst: &str) -> IpTuple {
        let (s, d): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
        IpTuple {
            src: Some(s.ip()),
            dst: Some(d.ip()),
            proto: Some(ProtoTuple {
                src_port: Some(s.port()),
                dst_port: Some(d.port()),
                ..Default::default()
            }),
            zone: None,
        }
    }

    /// A flow from `client` to the route's listener (or elsewhere).
    fn flow(id: u32, client: &str, dst: &str, state: TcpState, bytes: (u64, u64)) -> Flow {
        Flow {
            id: Some(id),
            origin: Some(tuple(client, dst)),
            reply: Some(tuple("10.0.0.5:80", client)),
            proto_info: Some(ProtoInfo {
                tcp: Some(TcpInfo {
                    state: Some(state),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            counter_origin: Some(Counter {
                packets: Some(1),
                bytes: Some(bytes.0),
            }),
            counter_reply: Some(Counter {
                packets: Some(1),
                bytes: Some(bytes.1),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn flows_become_live_connections_bytes_and_ends() {
        let routes = [route()];
        let mut t = Tracker::default();
        let (a, b, c) = ("1.1.1.1:5000", "1.1.1.1:5001", "1.1.1.1:5002");
        let listen = "127.0.0.1:7000";
        let live = t.update(
            &[
                flow(1, a, listen, TcpState::Established, (100, 200)),
                flow(2, b, listen, TcpState::SynSent, (60, 0)),
                flow(3, c, listen, TcpState::Established, (10, 10)),
                // Another destination: not the route's.
                flow(4, a, "127.0.0.1:7001", TcpState::Established, (1, 1)),
            ],
            &routes,
        );
        assert_eq!(live.len(), 3);
        let tot = &t.totals["r"];
        assert_eq!(
            (tot.seen, tot.live, tot.bytes_up, tot.bytes_down),
            (3, 3, 170, 210)
        );
        // 1 closes, 2 is refused, 3 vanishes (conntrack timed it out).
        let live = t.update(
            &[
                flow(1, a, listen, TcpState::TimeWait, (150, 300)),
                flow(2, b, listen, TcpState::Close, (60, 40)),
            ],
            &routes,
        );
        assert!(live.is_empty());
        let tot = &t.totals["r"];
        assert_eq!((tot.bytes_up, tot.bytes_down), (220, 350));
        assert_eq!(tot.ends[&("closed", "unknown")], 1);
        assert_eq!(tot.ends[&("upstream_refused", "upstream")], 1);
        assert_eq!(
            tot.ends[&("idle_timeout", EndReason::IdleTimeout.side().as_str())],
            1
        );
        // Seen again in TIME_WAIT, then gone: counted once.
        t.update(
            &[flow(1, a, listen, TcpState::TimeWait, (150, 300))],
            &routes,
        );
        t.update(&[], &routes);
        assert_eq!(t.totals["r"].ends.values().sum::<u64>(), 3);
        assert_eq!(t.totals["r"].seen, 3);
    }

    #[test]
    fn a_port_range_takes_each_port_to_the_same_port() {
        let k = KernelRoute {
            strict: true,
            listen: "0.0.0.0:10000".parse().unwrap(),
            last_port: 10100,
            clients: Vec::new(),
            target: "10.0.0.5:10000".parse().unwrap(),
            max_connections: None,
        };
        let at =
            |d: &str, a: &str| super::super::nft::takes(&k, d.parse().unwrap(), a.parse().unwrap());
        assert!(at("192.0.2.1:10050", "10.0.0.5:10050"));
        assert!(!at("192.0.2.1:10050", "10.0.0.5:10000"));
        assert!(!at("192.0.2.1:10101", "10.0.0.5:10101"));
        assert!(!at("192.0.2.1:10050", "10.0.0.6:10050"));
    }
}
