//! The CPU collective backend: ranks (threads or processes, local or remote) joined in a star
//! around rank 0 by the [`rendezvous`] connections.
//!
//! Every reduction is done by rank 0 in a fixed order: it takes its own values and adds rank
//! 1's, then rank 2's, and so on (`((x0 + x1) + x2) + …` in f32), then sends the result to
//! every rank. So the sum is the sequential one and bit-identical on every rank, whatever the
//! timing. Reduce-scatter is the same sum with each rank sent only its slice; all-gather and
//! broadcast go through rank 0 too. The star moves `2 (N-1)` buffers through rank 0 per
//! all-reduce, fine for tests and small CPU jobs; NCCL's rings are the fast path.
//!
//! Every send and receive has the rendezvous timeout: a rank that hangs makes the others fail
//! with [`DistError::Timeout`] naming it; one that dies (its sockets close) makes them fail at
//! once with [`DistError::PeerLost`]. Rank 0 closes all connections when it fails, so the
//! others do not wait for the timeout then.

use std::net::TcpStream;
use std::time::Duration;

use super::rendezvous::{
    self, link_error, read_message, read_message_into, write_message, Links, Rendezvous,
};
use super::{check_counts, check_gather, Collective, DistError, Result, World};

/// The TCP collective backend (see the module documentation).
#[derive(Debug)]
pub struct TcpCollective {
    rank: usize,
    world: usize,
    links: Links,
    timeout: Duration,
    failed: bool,
}

impl TcpCollective {
    /// Joins the world through a rendezvous on `MASTER_ADDR:MASTER_PORT`.
    pub fn connect(world: &World, timeout: Duration) -> Result<TcpCollective> {
        Ok(TcpCollective::from_rendezvous(rendezvous::rendezvous(world, &[], timeout)?))
    }

    /// Uses the connections of a finished rendezvous.
    pub fn from_rendezvous(r: Rendezvous) -> TcpCollective {
        TcpCollective { rank: r.rank, world: r.world_size, links: r.links, timeout: r.timeout, failed: false }
    }

    fn fail(&mut self, e: DistError) -> DistError {
        // Close everything so that ranks waiting on this one fail at once.
        self.failed = true;
        rendezvous::shutdown(&self.links);
        e
    }

    fn check_usable(&self) -> Result<()> {
        if self.failed {
            return Err(DistError::Protocol {
                rank: self.rank,
                reason: "a collective failed earlier; this connection is closed".into(),
            });
        }
        Ok(())
    }

    /// Rank 0: receives one message from every other rank, in rank order.
    fn gather_bytes(&mut self, op: &'static str, sizes: Option<&[usize]>) -> Result<Vec<Vec<u8>>> {
        let (rank, timeout) = (self.rank, self.timeout);
        let Links::Root(peers) = &mut self.links else {
            return Err(DistError::Protocol { rank, reason: "gather on a non-root rank".into() });
        };
        let mut out = Vec::with_capacity(peers.len());
        for (i, s) in peers.iter_mut().enumerate() {
            let msg = match sizes {
                Some(sz) => {
                    let mut buf = vec![0u8; sz[i + 1]];
                    read_message_into(s, &mut buf).map(|_| buf)
                }
                None => read_message(s),
            };
            out.push(msg.map_err(|e| link_error(rank, i + 1, op, e, timeout))?);
        }
        Ok(out)
    }

    /// Rank 0: sends `msg(r)` to every other rank `r`.
    fn scatter_bytes<'a>(&mut self, op: &'static str, msg: impl Fn(usize) -> &'a [u8]) -> Result<()> {
        let (rank, timeout) = (self.rank, self.timeout);
        let Links::Root(peers) = &mut self.links else {
            return Err(DistError::Protocol { rank, reason: "scatter on a non-root rank".into() });
        };
        for (i, s) in peers.iter_mut().enumerate() {
            write_message(s, msg(i + 1)).map_err(|e| link_error(rank, i + 1, op, e, timeout))?;
        }
        Ok(())
    }

    fn leaf(&mut self) -> Result<&mut TcpStream> {
        match &mut self.links {
            Links::Leaf(s) => Ok(s),
            _ => Err(DistError::Protocol { rank: self.rank, reason: "leaf operation on rank 0".into() }),
        }
    }

    fn leaf_send(&mut self, op: &'static str, bytes: &[u8]) -> Result<()> {
        let (rank, timeout) = (self.rank, self.timeout);
        let s = self.leaf()?;
        write_message(s, bytes).map_err(|e| link_error(rank, 0, op, e, timeout))
    }

    fn leaf_recv(&mut self, op: &'static str, into: Option<&mut [u8]>) -> Result<Vec<u8>> {
        let (rank, timeout) = (self.rank, self.timeout);
        let s = self.leaf()?;
        match into {
            Some(buf) => read_message_into(s, buf).map(|_| Vec::new()),
            None => read_message(s),
        }
        .map_err(|e| link_error(rank, 0, op, e, timeout))
    }

    /// The sum over ranks of `buf` (rank order), left on rank 0 in `buf`; other ranks send.
    fn reduce_to_root<T: Elem>(&mut self, op: &'static str, buf: &mut [T]) -> Result<()> {
        let bytes = std::mem::size_of_val(buf);
        if self.rank == 0 {
            let sizes = vec![bytes; self.world];
            let parts = self.gather_bytes(op, Some(&sizes))?;
            for p in parts {
                for (x, c) in buf.iter_mut().zip(p.chunks_exact(T::SIZE)) {
                    *x = x.add(T::from_le(c));
                }
            }
            Ok(())
        } else {
            self.leaf_send(op, &to_bytes(buf))
        }
    }

    fn all_reduce<T: Elem>(&mut self, op: &'static str, buf: &mut [T]) -> Result<()> {
        if self.world == 1 {
            return Ok(());
        }
        self.check_usable()?;
        let r = self.all_reduce_inner(op, buf);
        r.map_err(|e| self.fail(e))
    }

    fn all_reduce_inner<T: Elem>(&mut self, op: &'static str, buf: &mut [T]) -> Result<()> {
        self.reduce_to_root(op, buf)?;
        if self.rank == 0 {
            let out = to_bytes(buf);
            self.scatter_bytes(op, |_| &out)
        } else {
            let mut raw = vec![0u8; std::mem::size_of_val(buf)];
            self.leaf_recv(op, Some(&mut raw))?;
            from_bytes(&raw, buf);
            Ok(())
        }
    }

    fn broadcast_bytes_inner(&mut self, bytes: &mut Vec<u8>, root: usize) -> Result<()> {
        const OP: &str = "broadcast";
        if root >= self.world {
            return Err(DistError::Usage(format!("broadcast from rank {root} of {}", self.world)));
        }
        // A non-zero root first sends its bytes to rank 0.
        if root != 0 {
            if self.rank == root {
                self.leaf_send(OP, bytes)?;
            } else if self.rank == 0 {
                let rank = self.rank;
                let timeout = self.timeout;
                let Links::Root(peers) = &mut self.links else {
                    return Err(DistError::Protocol { rank, reason: "broadcast bookkeeping".into() });
                };
                *bytes =
                    read_message(&mut peers[root - 1]).map_err(|e| link_error(rank, root, OP, e, timeout))?;
            }
        }
        if self.rank == 0 {
            let out = bytes.clone();
            self.scatter_bytes(OP, |_| &out)
        } else {
            *bytes = self.leaf_recv(OP, None)?;
            Ok(())
        }
    }

    fn reduce_scatter_inner(&mut self, input: &[f32], counts: &[usize]) -> Result<Vec<f32>> {
        const OP: &str = "reduce_scatter";
        let mut sum = input.to_vec();
        self.reduce_to_root(OP, &mut sum)?;
        let starts = offsets(counts);
        if self.rank == 0 {
            let parts: Vec<Vec<u8>> =
                (0..self.world).map(|r| to_bytes(&sum[starts[r]..starts[r] + counts[r]])).collect();
            self.scatter_bytes(OP, |r| &parts[r])?;
            sum.truncate(counts[0]);
            Ok(sum)
        } else {
            let mut raw = vec![0u8; counts[self.rank] * 4];
            self.leaf_recv(OP, Some(&mut raw))?;
            let mut out = vec![0f32; counts[self.rank]];
            from_bytes(&raw, &mut out);
            Ok(out)
        }
    }

    fn all_gather_inner(&mut self, own: &[f32], counts: &[usize]) -> Result<Vec<f32>> {
        const OP: &str = "all_gather";
        let total: usize = counts.iter().sum();
        let mut all = vec![0f32; total];
        if self.rank == 0 {
            let sizes: Vec<usize> = counts.iter().map(|c| c * 4).collect();
            let parts = self.gather_bytes(OP, Some(&sizes))?;
            all[..counts[0]].copy_from_slice(own);
            let starts = offsets(counts);
            for (i, p) in parts.iter().enumerate() {
                let r = i + 1;
                from_bytes(p, &mut all[starts[r]..starts[r] + counts[r]]);
            }
            let out = to_bytes(&all);
            self.scatter_bytes(OP, |_| &out)?;
        } else {
            self.leaf_send(OP, &to_bytes(own))?;
            let mut raw = vec![0u8; total * 4];
            self.leaf_recv(OP, Some(&mut raw))?;
            from_bytes(&raw, &mut all);
        }
        Ok(all)
    }
}

impl Drop for TcpCollective {
    fn drop(&mut self) {
        rendezvous::shutdown(&self.links);
    }
}

impl Collective for TcpCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn backend(&self) -> &'static str {
        "tcp"
    }

    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<()> {
        self.all_reduce("all_reduce", buf)
    }

    fn all_reduce_sum_f64(&mut self, buf: &mut [f64]) -> Result<()> {
        self.all_reduce("all_reduce", buf)
    }

    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<()> {
        let mut bytes = to_bytes(buf);
        self.broadcast_bytes(&mut bytes, root)?;
        if bytes.len() != buf.len() * 4 {
            return Err(self.fail(DistError::Protocol {
                rank: self.rank,
                reason: format!("broadcast of {} bytes into {} f32 values", bytes.len(), buf.len()),
            }));
        }
        from_bytes(&bytes, buf);
        Ok(())
    }

    fn broadcast_bytes(&mut self, bytes: &mut Vec<u8>, root: usize) -> Result<()> {
        if self.world == 1 {
            return Ok(());
        }
        self.check_usable()?;
        let r = self.broadcast_bytes_inner(bytes, root);
        r.map_err(|e| self.fail(e))
    }

    fn barrier(&mut self) -> Result<()> {
        self.all_reduce::<f32>("barrier", &mut [])
    }

    fn reduce_scatter_sum(&mut self, input: &[f32], counts: &[usize]) -> Result<Vec<f32>> {
        check_counts(self.rank, self.world, counts, input.len(), "reduce_scatter")?;
        if self.world == 1 {
            return Ok(input.to_vec());
        }
        self.check_usable()?;
        let r = self.reduce_scatter_inner(input, counts);
        r.map_err(|e| self.fail(e))
    }

    fn all_gather(&mut self, own: &[f32], counts: &[usize]) -> Result<Vec<f32>> {
        check_gather(self.rank, self.world, counts, own.len())?;
        if self.world == 1 {
            return Ok(own.to_vec());
        }
        self.check_usable()?;
        let r = self.all_gather_inner(own, counts);
        r.map_err(|e| self.fail(e))
    }
}

/// Start of each rank's slice.
fn offsets(counts: &[usize]) -> Vec<usize> {
    counts
        .iter()
        .scan(0usize, |acc, &c| {
            let start = *acc;
            *acc += c;
            Some(start)
        })
        .collect()
}

/// The element types reduced on the wire.
trait Elem: Copy {
    const SIZE: usize;
    fn add(self, other: Self) -> Self;
    fn from_le(bytes: &[u8]) -> Self;
    fn put_le(self, out: &mut Vec<u8>);
}

impl Elem for f32 {
    const SIZE: usize = 4;
    fn add(self, other: f32) -> f32 {
        self + other
    }
    fn from_le(b: &[u8]) -> f32 {
        f32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
    fn put_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl Elem for f64 {
    const SIZE: usize = 8;
    fn add(self, other: f64) -> f64 {
        self + other
    }
    fn from_le(b: &[u8]) -> f64 {
        f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    }
    fn put_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

fn to_bytes<T: Elem>(v: &[T]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * T::SIZE);
    for &x in v {
        x.put_le(&mut out);
    }
    out
}

fn from_bytes<T: Elem>(bytes: &[u8], out: &mut [T]) {
    for (x, c) in out.iter_mut().zip(bytes.chunks_exact(T::SIZE)) {
        *x = T::from_le(c);
    }
}
