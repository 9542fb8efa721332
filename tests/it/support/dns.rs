//! A tiny scriptable DNS server on `127.0.0.1:0` (UDP, and TCP on the same port).
//!
//! It answers `A` queries for the names set with [`DnsServer::set`] (TTL 1 s unless changed with
//! [`DnsServer::set_ttl`]), any other type for a known name with no record (NODATA), an unknown
//! name with NXDOMAIN, and everything with SERVFAIL while [`DnsServer::fail`] is on. With
//! [`DnsServer::truncate_udp`] every UDP answer is empty and truncated, so clients retry over
//! TCP. Names compare case-insensitively, without the trailing dot. The wire format is
//! hand-rolled: one question per query, answers point back at it (`0xC00C`). Dropping the
//! server stops its tasks.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::AbortHandle;

/// A running DNS server; see the module docs.
pub struct DnsServer {
    addr: SocketAddr,
    state: Arc<State>,
    tasks: Vec<AbortHandle>,
}

impl DnsServer {
    /// Binds UDP and TCP on one free port of 127.0.0.1 and starts answering.
    pub async fn start() -> DnsServer {
        let state = Arc::new(State {
            records: Mutex::new(HashMap::new()),
            fail: AtomicBool::new(false),
            truncate_udp: AtomicBool::new(false),
            ttl: AtomicU32::new(1),
            udp_queries: AtomicUsize::new(0),
            tcp_queries: AtomicUsize::new(0),
            tcp_tasks: Mutex::new(Vec::new()),
        });
        for _ in 0..20 {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = udp.local_addr().unwrap();
            // The port is free for UDP; TCP on the same port is usually free too.
            let Ok(tcp) = TcpListener::bind(addr).await else {
                continue;
            };
            let tasks = vec![
                tokio::spawn(serve_udp(udp, state.clone())).abort_handle(),
                tokio::spawn(serve_tcp(tcp, state.clone())).abort_handle(),
            ];
            return DnsServer { addr, state, tasks };
        }
        panic!("no port of 127.0.0.1 was free for both UDP and TCP");
    }

    /// The `ip:port` to name in `dns_servers` / `HickoryResolver::with_servers`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// From now on `name` has these `A` records (an empty list: the name exists, no address).
    pub fn set(&self, name: &str, ips: Vec<Ipv4Addr>) {
        self.state
            .records
            .lock()
            .unwrap()
            .insert(normalize(name), ips);
    }

    /// From now on `name` does not exist (NXDOMAIN).
    pub fn remove(&self, name: &str) {
        self.state.records.lock().unwrap().remove(&normalize(name));
    }

    /// While on, every query is answered with SERVFAIL.
    pub fn fail(&self, on: bool) {
        self.state.fail.store(on, SeqCst);
    }

    /// While on, every UDP answer is empty with the TC (truncated) bit set.
    pub fn truncate_udp(&self, on: bool) {
        self.state.truncate_udp.store(on, SeqCst);
    }

    /// The TTL (seconds) of the records in later answers; 1 at start.
    pub fn set_ttl(&self, secs: u32) {
        self.state.ttl.store(secs, SeqCst);
    }

    /// Queries received so far, over UDP and TCP.
    pub fn queries(&self) -> usize {
        self.udp_queries() + self.tcp_queries()
    }

    /// Queries received over UDP so far.
    pub fn udp_queries(&self) -> usize {
        self.state.udp_queries.load(SeqCst)
    }

    /// Queries received over TCP so far.
    pub fn tcp_queries(&self) -> usize {
        self.state.tcp_queries.load(SeqCst)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.tasks.iter().for_each(AbortHandle::abort);
        self.state
            .tcp_tasks
            .lock()
            .unwrap()
            .iter()
            .for_each(AbortHandle::abort);
    }
}

// === internals ===

struct State {
    records: Mutex<HashMap<String, Vec<Ipv4Addr>>>,
    fail: AtomicBool,
    truncate_udp: AtomicBool,
    ttl: AtomicU32,
    udp_queries: AtomicUsize,
    tcp_queries: AtomicUsize,
    tcp_tasks: Mutex<Vec<AbortHandle>>,
}

async fn serve_udp(socket: UdpSocket, state: Arc<State>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        state.udp_queries.fetch_add(1, SeqCst);
        let truncate = state.truncate_udp.load(SeqCst);
        if let Some(reply) = answer(&buf[..n], &state, truncate) {
            let _ = socket.send_to(&reply, peer).await;
        }
    }
}

async fn serve_tcp(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let task = tokio::spawn(serve_tcp_conn(stream, state.clone())).abort_handle();
        let mut tasks = state.tcp_tasks.lock().unwrap();
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }
}

/// Messages on a TCP connection carry a two-byte length prefix; several may follow each other.
async fn serve_tcp_conn(mut stream: TcpStream, state: Arc<State>) {
    loop {
        let Ok(len) = stream.read_u16().await else {
            return;
        };
        let mut msg = vec![0u8; usize::from(len)];
        if stream.read_exact(&mut msg).await.is_err() {
            return;
        }
        state.tcp_queries.fetch_add(1, SeqCst);
        let Some(reply) = answer(&msg, &state, false) else {
            return;
        };
        let mut framed = u16::try_from(reply.len()).unwrap().to_be_bytes().to_vec();
        framed.extend_from_slice(&reply);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

/// The reply to one query message; `None` if it is not a query with one question.
fn answer(query: &[u8], state: &State, truncate: bool) -> Option<Vec<u8>> {
    let header = query.get(..12)?;
    let flags = u16::from_be_bytes([header[2], header[3]]);
    let qdcount = u16::from_be_bytes([header[4], header[5]]);
    if flags & FLAG_QR != 0 || qdcount != 1 {
        return None;
    }
    // The question: labels up to the root label, then type and class.
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*query.get(pos)?);
        pos += 1;
        if len == 0 {
            break;
        }
        if len & 0xC0 != 0 {
            return None; // no compression in a question
        }
        labels.push(String::from_utf8_lossy(query.get(pos..pos + len)?).to_ascii_lowercase());
        pos += len;
    }
    let qtype = u16::from_be_bytes([*query.get(pos)?, *query.get(pos + 1)?]);
    let question = query.get(12..pos + 4)?;
    let name = labels.join(".");

    let (rcode, ips) = if state.fail.load(SeqCst) {
        (RCODE_SERVFAIL, Vec::new())
    } else {
        match state.records.lock().unwrap().get(&name) {
            None => (RCODE_NXDOMAIN, Vec::new()),
            Some(_) if truncate => (RCODE_NOERROR, Vec::new()),
            Some(ips) if qtype == TYPE_A => (RCODE_NOERROR, ips.clone()),
            Some(_) => (RCODE_NOERROR, Vec::new()),
        }
    };
    let ttl = state.ttl.load(SeqCst);

    let mut flags_out = FLAG_QR | (flags & (FLAG_OPCODE | FLAG_RD)) | FLAG_RA | rcode;
    if truncate {
        flags_out |= FLAG_TC;
    }
    let mut out = Vec::with_capacity(question.len() + 12 + ips.len() * 16);
    out.extend_from_slice(&header[..2]); // id
    out.extend_from_slice(&flags_out.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes()); // questions
    out.extend_from_slice(&u16::try_from(ips.len()).unwrap().to_be_bytes()); // answers
    out.extend_from_slice(&0u16.to_be_bytes()); // authority
    out.extend_from_slice(&0u16.to_be_bytes()); // additional
    out.extend_from_slice(question);
    for ip in ips {
        out.extend_from_slice(&[0xC0, 0x0C]); // the name of the question
        out.extend_from_slice(&TYPE_A.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&ip.octets());
    }
    Some(out)
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

const FLAG_QR: u16 = 0x8000;
const FLAG_OPCODE: u16 = 0x7800;
const FLAG_TC: u16 = 0x0200;
const FLAG_RD: u16 = 0x0100;
const FLAG_RA: u16 = 0x0080;
const RCODE_NOERROR: u16 = 0;
const RCODE_SERVFAIL: u16 = 2;
const RCODE_NXDOMAIN: u16 = 3;
const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;
