//! The TCP rendezvous: rank 0 listens on `MASTER_ADDR:MASTER_PORT` (on every interface), the
//! other ranks connect to it with retries until a deadline, each says who it is, and when all
//! have arrived rank 0 answers each with a payload (the NCCL unique id, or nothing). The
//! connections stay open for the TCP backend.
//!
//! Wire format: every message is a little-endian `u64` length and that many bytes. A rank's
//! hello is `POLYLM-RDV1`, its rank and the world size (`u32` each); rank 0's answer is the
//! payload.
//!
//! Failures are named: a rank that never arrives makes rank 0 fail with the missing ranks
//! listed after `timeout`; a rank 0 that is not there makes the others fail with the address
//! they tried; a rank 0 that gives up closes the connections, so the ranks that did arrive
//! fail at once instead of waiting.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::{DistError, Result, World};

const MAGIC: &[u8] = b"POLYLM-RDV1";
/// The largest message accepted (guards against reading garbage as a length).
const MAX_MESSAGE: u64 = 1 << 40;

/// The connections of one rank after the rendezvous.
#[derive(Debug)]
pub enum Links {
    /// Rank 0: the connection to rank `r` at index `r - 1`.
    Root(Vec<TcpStream>),
    /// Any other rank: the connection to rank 0.
    Leaf(TcpStream),
    /// A world of one rank: no connections.
    Alone,
}

/// The outcome of a rendezvous.
#[derive(Debug)]
pub struct Rendezvous {
    /// This rank.
    pub rank: usize,
    /// Ranks in the world.
    pub world_size: usize,
    /// The open connections.
    pub links: Links,
    /// The payload rank 0 handed out (the same bytes on every rank).
    pub payload: Vec<u8>,
    /// The timeout every later receive uses.
    pub timeout: Duration,
}

/// Joins the world: rank 0 waits for every other rank and sends each `payload` (only rank
/// 0's is used); the others connect and receive it. Gives up after `timeout` with an error
/// naming the missing ranks or the unreachable address.
pub fn rendezvous(world: &World, payload: &[u8], timeout: Duration) -> Result<Rendezvous> {
    let links = if world.world_size == 1 {
        return Ok(Rendezvous {
            rank: 0,
            world_size: 1,
            links: Links::Alone,
            payload: payload.to_vec(),
            timeout,
        });
    } else if world.is_root() {
        Links::Root(serve(world, payload, timeout)?)
    } else {
        Links::Leaf(join(world, timeout)?)
    };
    let payload = match &links {
        Links::Leaf(s) => {
            let mut s = s;
            read_message(&mut s).map_err(|e| link_error(world.rank, 0, "the rendezvous", e, timeout))?
        }
        _ => payload.to_vec(),
    };
    Ok(Rendezvous { rank: world.rank, world_size: world.world_size, links, payload, timeout })
}

/// Rank 0's side: accepts a connection from every other rank, then answers all of them.
fn serve(world: &World, payload: &[u8], timeout: Duration) -> Result<Vec<TcpStream>> {
    let bind = format!("0.0.0.0:{}", world.master_port);
    let listener = listen(&bind, timeout.min(Duration::from_secs(2)))?;
    listener
        .set_nonblocking(true)
        .map_err(|source| DistError::Io { what: "a non-blocking listener".into(), source })?;
    let deadline = Instant::now() + timeout;
    let mut peers: Vec<Option<TcpStream>> = (1..world.world_size).map(|_| None).collect();
    while peers.iter().any(Option::is_none) {
        if Instant::now() >= deadline {
            let missing = peers.iter().enumerate().filter(|(_, p)| p.is_none()).map(|(i, _)| i + 1).collect();
            return Err(DistError::Missing {
                addr: world.master(),
                missing,
                world: world.world_size,
                secs: timeout.as_secs(),
            });
        }
        match listener.accept() {
            Ok((stream, from)) => {
                // A stranger or a confused rank is dropped; the wait goes on.
                if let Ok(r) = hello_of(stream.try_clone(), world.world_size, deadline) {
                    match peers.get_mut(r.wrapping_sub(1)) {
                        Some(slot @ None) => *slot = Some(stream),
                        _ => eprintln!("rendezvous: ignoring a second rank {r} (from {from})"),
                    }
                } else {
                    eprintln!("rendezvous: ignoring a connection from {from} that did not introduce itself");
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(10)),
            Err(source) => return Err(DistError::Io { what: format!("accepting on {bind}"), source }),
        }
    }
    let mut out = Vec::with_capacity(peers.len());
    for (i, p) in peers.into_iter().enumerate() {
        let mut s =
            p.ok_or_else(|| DistError::Protocol { rank: 0, reason: "rendezvous bookkeeping".into() })?;
        configure(&s, timeout).map_err(|source| DistError::Io {
            what: format!("configuring rank {}'s socket", i + 1),
            source,
        })?;
        write_message(&mut s, payload).map_err(|e| link_error(0, i + 1, "the rendezvous", e, timeout))?;
        out.push(s);
    }
    Ok(out)
}

/// Binds `bind`, retrying for up to `patience` while the port is in use: another process's
/// check that a port is free (`launch::free_port` binds it for an instant) may hold it briefly.
fn listen(bind: &str, patience: Duration) -> Result<TcpListener> {
    let deadline = Instant::now() + patience;
    loop {
        match TcpListener::bind(bind) {
            Ok(l) => return Ok(l),
            Err(e) if e.kind() == ErrorKind::AddrInUse && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(source) => return Err(DistError::Io { what: format!("listening on {bind}"), source }),
        }
    }
}

/// Reads a hello from a freshly accepted connection; returns the rank it announces.
fn hello_of(stream: std::io::Result<TcpStream>, world: usize, deadline: Instant) -> std::io::Result<usize> {
    let mut s = stream?;
    s.set_nonblocking(false)?;
    let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
    s.set_read_timeout(Some(left.min(Duration::from_secs(5))))?;
    let msg = read_message(&mut s)?;
    let bad = || std::io::Error::new(ErrorKind::InvalidData, "not a polylm hello");
    if msg.len() != MAGIC.len() + 8 || &msg[..MAGIC.len()] != MAGIC {
        return Err(bad());
    }
    let num = |at: usize| u32::from_le_bytes([msg[at], msg[at + 1], msg[at + 2], msg[at + 3]]) as usize;
    let (rank, size) = (num(MAGIC.len()), num(MAGIC.len() + 4));
    if size != world || rank == 0 || rank >= world {
        eprintln!("rendezvous: a process says it is rank {rank} of {size}; this world has {world} ranks");
        return Err(bad());
    }
    Ok(rank)
}

/// Another rank's side: connects to rank 0 (retrying until the deadline) and says hello.
fn join(world: &World, timeout: Duration) -> Result<TcpStream> {
    let deadline = Instant::now() + timeout;
    let addr = world.master();
    let mut last = String::from("no attempt");
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(DistError::Unreachable { rank: world.rank, addr, secs: timeout.as_secs(), last });
        }
        let left = deadline - now;
        match try_connect(&addr, left.min(Duration::from_secs(2))) {
            Ok(mut s) => {
                configure(&s, timeout)
                    .map_err(|source| DistError::Io { what: "configuring the socket".into(), source })?;
                let mut hello = MAGIC.to_vec();
                hello.extend_from_slice(&(world.rank as u32).to_le_bytes());
                hello.extend_from_slice(&(world.world_size as u32).to_le_bytes());
                match write_message(&mut s, &hello) {
                    Ok(()) => return Ok(s),
                    Err(e) => last = e.to_string(),
                }
            }
            Err(e) => last = e,
        }
        std::thread::sleep(
            Duration::from_millis(100).min(deadline.saturating_duration_since(Instant::now())),
        );
    }
}

fn try_connect(addr: &str, timeout: Duration) -> std::result::Result<TcpStream, String> {
    let addrs: Vec<SocketAddr> =
        addr.to_socket_addrs().map_err(|e| format!("cannot resolve {addr}: {e}"))?.collect();
    let mut last = format!("{addr} resolves to no address");
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout.max(Duration::from_millis(10))) {
            Ok(s) => return Ok(s),
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

/// Blocking mode, no Nagle delay, read and write timeouts.
pub(crate) fn configure(s: &TcpStream, timeout: Duration) -> std::io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_nodelay(true)?;
    let t = Some(timeout.max(Duration::from_millis(1)));
    s.set_read_timeout(t)?;
    s.set_write_timeout(t)
}

/// Sends one length-prefixed message.
pub(crate) fn write_message(s: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    s.write_all(&(bytes.len() as u64).to_le_bytes())?;
    s.write_all(bytes)?;
    s.flush()
}

/// Receives one length-prefixed message.
pub(crate) fn read_message(s: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 8];
    s.read_exact(&mut len)?;
    let len = u64::from_le_bytes(len);
    if len > MAX_MESSAGE {
        return Err(std::io::Error::new(ErrorKind::InvalidData, format!("a message of {len} bytes")));
    }
    let mut buf = vec![0u8; len as usize];
    s.read_exact(&mut buf)?;
    Ok(buf)
}

/// Receives one message into `buf` (whose length the sender must match).
pub(crate) fn read_message_into(s: &mut impl Read, buf: &mut [u8]) -> std::io::Result<()> {
    let mut len = [0u8; 8];
    s.read_exact(&mut len)?;
    let len = u64::from_le_bytes(len);
    if len != buf.len() as u64 {
        return Err(std::io::Error::new(
            ErrorKind::InvalidData,
            format!(
                "a message of {len} bytes where {} were expected (the ranks disagree on sizes)",
                buf.len()
            ),
        ));
    }
    s.read_exact(buf)
}

/// The error for a failed send or receive between `rank` and `peer`.
pub(crate) fn link_error(
    rank: usize,
    peer: usize,
    op: &'static str,
    e: std::io::Error,
    timeout: Duration,
) -> DistError {
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => {
            DistError::Timeout { rank, peer, op, secs: timeout.as_secs_f64().ceil() as u64 }
        }
        ErrorKind::InvalidData => DistError::Protocol { rank, reason: format!("{op} with rank {peer}: {e}") },
        _ => DistError::PeerLost { rank, peer, op, source: e },
    }
}

/// Closes every connection at once (so that peers waiting on this rank fail fast).
pub(crate) fn shutdown(links: &Links) {
    match links {
        Links::Root(v) => v.iter().for_each(|s| {
            let _ = s.shutdown(Shutdown::Both);
        }),
        Links::Leaf(s) => {
            let _ = s.shutdown(Shutdown::Both);
        }
        Links::Alone => {}
    }
}
