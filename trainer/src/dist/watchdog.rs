//! A watchdog for collectives that complete asynchronously (NCCL on a GPU stream).
//!
//! An NCCL collective waiting for a peer that hangs or died blocks the GPU stream, and any host
//! call that waits on that stream, forever: no socket timeout applies. So each collective is
//! registered here with a probe of its completion (an event recorded after it on the stream);
//! a thread checks the oldest pending ones, and when one is still incomplete `timeout` after it
//! was enqueued it reports which collective, on which rank, waited how long, and runs the
//! expiry action. For a training run that action ends the process with that message and a
//! failure status: the launcher then stops the other ranks, and the last checkpoint, written
//! atomically, stays intact.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Whether a watched operation has completed (`Err`: it failed, with the reason).
pub type Probe = Box<dyn FnMut() -> Result<bool, String> + Send>;

/// What the watchdog does with the message of an expired or failed operation.
pub type Expiry = Box<dyn Fn(&str) + Send>;

struct Pending {
    what: String,
    since: Instant,
    done: Probe,
}

#[derive(Default)]
struct State {
    pending: VecDeque<Pending>,
    stop: bool,
}

/// Watches asynchronous operations; see the module documentation. Dropping it stops the thread
/// (pending operations are no longer watched).
pub struct Watchdog {
    shared: Arc<(Mutex<State>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Watchdog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watchdog").field("pending", &lock(&self.shared.0).pending.len()).finish()
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Watchdog {
    /// A watchdog of rank `rank` that runs `expire` with a message when an operation is still
    /// incomplete `timeout` after it was registered, or when its probe reports a failure. It
    /// checks every `timeout / 20` (between 10 ms and 1 s).
    pub fn new(rank: usize, timeout: Duration, expire: Expiry) -> Watchdog {
        let shared = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let poll = (timeout / 20).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let inner = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("collective-watchdog-{rank}"))
            .spawn(move || watch(&inner, rank, timeout, poll, &expire))
            .ok();
        Watchdog { shared, thread }
    }

    /// The watchdog of a training rank: on expiry it prints the message and ends the process
    /// with status 1.
    pub fn exiting(rank: usize, timeout: Duration) -> Watchdog {
        Watchdog::new(
            rank,
            timeout,
            Box::new(|message| {
                eprintln!("error: {message}");
                std::process::exit(1);
            }),
        )
    }

    /// Watches the operation `what` (for the message), complete when `done` says so.
    pub fn watch(&self, what: impl Into<String>, done: Probe) {
        let (state, wake) = &*self.shared;
        lock(state).pending.push_back(Pending { what: what.into(), since: Instant::now(), done });
        wake.notify_one();
    }

    /// Operations registered and not yet seen complete.
    pub fn pending(&self) -> usize {
        lock(&self.shared.0).pending.len()
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let (state, wake) = &*self.shared;
        lock(state).stop = true;
        wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The watchdog thread: retires completed operations in order and expires the oldest one that
/// is overdue or failed.
fn watch(shared: &(Mutex<State>, Condvar), rank: usize, timeout: Duration, poll: Duration, expire: &Expiry) {
    let (state, wake) = shared;
    let mut s = lock(state);
    loop {
        // Operations on one stream complete in order: retire from the front.
        while let Some(front) = s.pending.front_mut() {
            match (front.done)() {
                Ok(true) => {
                    s.pending.pop_front();
                }
                Ok(false) if front.since.elapsed() < timeout => break,
                outcome => {
                    let waited = front.since.elapsed().as_secs_f64();
                    let message = match outcome {
                        Err(reason) => format!("rank {rank}: collective {} failed: {reason}", front.what),
                        _ => format!(
                            "rank {rank}: collective {} did not complete within {:.0} s (waited {waited:.1} s): \
                             a peer is hung or dead, or far behind (raise [dist] timeout_s if a save or \
                             validation takes longer)",
                            front.what,
                            timeout.as_secs_f64()
                        ),
                    };
                    s.pending.clear();
                    drop(s);
                    expire(&message);
                    s = lock(state);
                }
            }
        }
        // Checked under the lock right before waiting (the expiry action runs unlocked), so a
        // stop request is never missed.
        if s.stop {
            return;
        }
        s = if s.pending.is_empty() {
            wake.wait(s).unwrap_or_else(|e| e.into_inner())
        } else {
            wake.wait_timeout(s, poll).unwrap_or_else(|e| e.into_inner()).0
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;

    fn recorder() -> (Expiry, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        (Box::new(move |m: &str| drop(lock_tx(&tx).send(m.to_string()))), rx)
    }

    fn lock_tx(m: &Mutex<mpsc::Sender<String>>) -> MutexGuard<'_, mpsc::Sender<String>> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[test]
    fn completed_operations_are_retired_and_never_expire() {
        let (expire, rx) = recorder();
        let dog = Watchdog::new(3, Duration::from_millis(200), expire);
        let flag = Arc::new(AtomicBool::new(false));
        let f = Arc::clone(&flag);
        dog.watch("all_reduce #1", Box::new(move || Ok(f.load(Ordering::SeqCst))));
        dog.watch("all_reduce #2", Box::new(|| Ok(true)));
        std::thread::sleep(Duration::from_millis(50));
        flag.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(5);
        while dog.pending() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(dog.pending(), 0);
        assert!(rx.recv_timeout(Duration::from_millis(400)).is_err(), "a completed operation expired");
    }

    #[test]
    fn a_hung_operation_expires_with_its_name_rank_and_timeout() {
        let (expire, rx) = recorder();
        let start = Instant::now();
        let dog = Watchdog::new(2, Duration::from_millis(300), expire);
        dog.watch("ncclAllReduce of 1024 values (bucket 7)", Box::new(|| Ok(false)));
        let message = rx.recv_timeout(Duration::from_secs(10)).expect("the watchdog fired");
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(300), "fired after {waited:?}, before the timeout");
        assert!(waited < Duration::from_secs(5), "fired only after {waited:?}");
        assert!(
            message.contains("rank 2") && message.contains("bucket 7") && message.contains("hung"),
            "{message}"
        );
        assert_eq!(dog.pending(), 0);
    }

    #[test]
    fn a_failed_probe_is_reported_at_once() {
        let (expire, rx) = recorder();
        let dog = Watchdog::new(0, Duration::from_secs(600), expire);
        dog.watch("ncclReduce", Box::new(|| Err("unspecified launch failure".into())));
        let message = rx.recv_timeout(Duration::from_secs(10)).expect("the watchdog fired");
        assert!(message.contains("failed: unspecified launch failure"), "{message}");
    }
}
