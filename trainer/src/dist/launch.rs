//! `polylm launch`: starts this node's ranks as child processes of the same binary.
//!
//! ```text
//! polylm launch --nproc-per-node 8 -- train --config run.toml
//! # two nodes: run on each, with its --node-rank
//! polylm launch --nproc-per-node 8 --nnodes 2 --node-rank 0 --master-addr 10.0.0.1 --master-port 29500 -- train --config run.toml
//! ```
//!
//! Child `i` of node `R` gets `RANK = R·N + i`, `LOCAL_RANK = i`, `WORLD_SIZE = N·M`,
//! `MASTER_ADDR`, `MASTER_PORT`. The launcher waits for them; when one fails it stops the
//! others (SIGTERM, then SIGKILL after a grace period) and exits with the failed child's
//! status; when all succeed it exits 0.

use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use super::{DistError, Result};
use crate::setup::MAX_WORKERS_PER_CORE;

/// The default rendezvous port of multi-node runs.
pub const DEFAULT_PORT: u16 = 29500;

/// What `polylm launch` was asked to start.
#[derive(Clone, Debug)]
pub struct LaunchOptions {
    /// Processes (ranks) on this node.
    pub nproc_per_node: usize,
    /// Nodes in the run.
    pub nnodes: usize,
    /// This node's number, `0..nnodes`.
    pub node_rank: usize,
    /// Rank 0's host.
    pub master_addr: String,
    /// Rank 0's rendezvous port; when absent, a free local port on one node, else 29500.
    pub master_port: Option<u16>,
    /// The `polylm` arguments of every rank (`train --config ...`).
    pub command: Vec<String>,
    /// Time the others get to exit after SIGTERM before SIGKILL.
    pub grace: Duration,
}

/// Starts the ranks and waits; returns the exit code to exit with (0 when all succeeded).
pub fn launch(opts: &LaunchOptions) -> Result<i32> {
    if opts.nproc_per_node == 0 || opts.nnodes == 0 {
        return Err(DistError::Usage("--nproc-per-node and --nnodes must be at least 1".into()));
    }
    let cores = crate::setup::cores();
    if opts.nproc_per_node > MAX_WORKERS_PER_CORE * cores {
        return Err(DistError::Usage(format!(
            "--nproc-per-node {} is more than {MAX_WORKERS_PER_CORE}× this machine's {cores} cores \
             (one rank per GPU, or per few cores on the CPU)",
            opts.nproc_per_node
        )));
    }
    let Some(world) = opts.nproc_per_node.checked_mul(opts.nnodes) else {
        return Err(DistError::Usage("--nproc-per-node × --nnodes overflows".into()));
    };
    if opts.node_rank >= opts.nnodes {
        return Err(DistError::Usage(format!(
            "--node-rank {} must be below --nnodes {}",
            opts.node_rank, opts.nnodes
        )));
    }
    if opts.command.is_empty() {
        return Err(DistError::Usage(
            "nothing to launch: give the command after `--`, e.g. `-- train --config run.toml`".into(),
        ));
    }
    let port = match opts.master_port {
        Some(p) => p,
        None if opts.nnodes == 1 => free_port()?,
        None => DEFAULT_PORT,
    };
    let exe = std::env::current_exe()
        .map_err(|source| DistError::Io { what: "finding the polylm binary".into(), source })?;
    let mut children: Vec<(usize, Child)> = Vec::with_capacity(opts.nproc_per_node);
    for local in 0..opts.nproc_per_node {
        let rank = opts.node_rank * opts.nproc_per_node + local;
        let spawned = Command::new(&exe)
            .args(&opts.command)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", local.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("MASTER_ADDR", &opts.master_addr)
            .env("MASTER_PORT", port.to_string())
            .spawn();
        match spawned {
            Ok(c) => children.push((rank, c)),
            Err(source) => {
                stop_all(&mut children, opts.grace);
                return Err(DistError::Io { what: format!("starting rank {rank}"), source });
            }
        }
    }
    eprintln!(
        "launch: {} rank(s) on this node ({} in all), rendezvous {}:{port}",
        opts.nproc_per_node, world, opts.master_addr
    );
    loop {
        let mut running = 0;
        let mut failed: Option<(usize, ExitStatus)> = None;
        for (rank, child) in children.iter_mut() {
            match child.try_wait() {
                Ok(Some(status)) if !status.success() => {
                    failed = Some((*rank, status));
                    break;
                }
                Ok(Some(_)) => {}
                Ok(None) => running += 1,
                Err(source) => {
                    let what = format!("waiting for rank {rank}");
                    stop_all(&mut children, opts.grace);
                    return Err(DistError::Io { what, source });
                }
            }
        }
        if let Some((rank, status)) = failed {
            eprintln!("launch: rank {rank} failed ({status}); stopping the other ranks");
            stop_all(&mut children, opts.grace);
            return Ok(exit_code(status));
        }
        if running == 0 {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The code to exit with for a child's status: its code, or 128 + the signal that ended it.
fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().or_else(|| status.signal().map(|s| 128 + s)).unwrap_or(1)
}

/// SIGTERM to every child still running, then SIGKILL to those still there after `grace`.
fn stop_all(children: &mut [(usize, Child)], grace: Duration) {
    for (_, c) in children.iter_mut() {
        if matches!(c.try_wait(), Ok(None)) {
            if let Ok(pid) = i32::try_from(c.id()) {
                // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
        }
    }
    let deadline = Instant::now() + grace;
    for (_, c) in children.iter_mut() {
        loop {
            match c.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

/// A TCP port that is free on this machine now, for a rendezvous to listen on a moment later.
///
/// It is drawn at random from 20000..32768, below Linux's default range of ephemeral ports
/// (32768..61000), and checked by binding it on every address: a port the system hands out
/// itself (binding port 0) is an ephemeral one, which the very next outgoing connection on the
/// machine may take as its local port before the rendezvous binds it.
pub fn free_port() -> Result<u16> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static DRAWS: AtomicU64 = AtomicU64::new(0);
    let seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
            ^ (u64::from(std::process::id()) << 32)
            ^ DRAWS.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    // Never the same port twice in one process: tests start many worlds side by side.
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let mut x = seed;
    for _ in 0..64 {
        // SplitMix64 step.
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        let port = 20000 + ((z ^ (z >> 31)) % 12768) as u16;
        if !given.contains(&port) && std::net::TcpListener::bind(("0.0.0.0", port)).is_ok() {
            given.push(port);
            return Ok(port);
        }
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|source| DistError::Io { what: "finding a free port".into(), source })?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|source| DistError::Io { what: "finding a free port".into(), source })
}
