//! The thread pools and the training driver (`drive`), and `set_num_threads` / `get_num_threads`.
//!
//! Every top-level operation (one `compute` call, or one whole fit) runs on a rayon pool of its own, checked
//! out of a small free list of idle pools and given back afterwards; a new pool is made when none is idle. Two
//! operations never share a pool, so none can wait for a pool thread that another holds: a fit keeps every
//! thread of its pool (`run_warm`) and its training thread waits for the Python callback, and a callback's own
//! `log_prob`, `sample` or nested `fit`, another thread's fit, or a concurrent reader of the same model simply
//! gets another pool. In a child made by `fork` the parent's pools have no threads: a pool list made in another
//! process is forgotten (leaked, never dropped or locked: a thread that no longer exists may have held its
//! lock at the fork) and the child starts a fresh one.

use crate::errors::config_err;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Idle pools kept for the next operations (more are dropped when given back).
const MAX_IDLE: usize = 4;

/// The pools of one process.
struct Pools {
    /// The process that made this list (a forked child makes its own).
    pid: u32,
    /// Threads per pool: the user's `set_num_threads`, or 0 for all cores.
    threads: AtomicUsize,
    idle: Mutex<Vec<rayon::ThreadPool>>,
}

/// The current process's pool list; replaced (the old one leaked) only in a forked child, so a reference to
/// it lives as long as the process.
static POOLS: AtomicPtr<Pools> = AtomicPtr::new(std::ptr::null_mut());

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn pools() -> &'static Pools {
    let pid = std::process::id();
    loop {
        let cur = POOLS.load(Ordering::Acquire);
        // SAFETY: a published list is never freed (see POOLS)
        let old = unsafe { cur.as_ref() };
        if let Some(p) = old.filter(|p| p.pid == pid) {
            return p;
        }
        if old.is_none() {
            // the count is ours to choose: training steps measure whether fewer threads run faster (other
            // work on the machine)
            nflow::engine::pool::set_auto(true);
        }
        // first use, or a forked child (which keeps the user's thread count)
        let fresh = Box::into_raw(Box::new(Pools {
            pid,
            threads: AtomicUsize::new(old.map_or(0, |p| p.threads.load(Ordering::Relaxed))),
            idle: Mutex::new(Vec::new()),
        }));
        match POOLS.compare_exchange(cur, fresh, Ordering::AcqRel, Ordering::Acquire) {
            // the parent's list (if any) is leaked on purpose: its pools' threads are not in this process
            // SAFETY: `fresh` is now the published list, which is never freed
            Ok(_) => return unsafe { &*fresh },
            // another thread of this process was first
            // SAFETY: `fresh` was made by `Box::into_raw` above and never published
            Err(_) => drop(unsafe { Box::from_raw(fresh) }),
        }
    }
}

impl Pools {
    fn size(&self) -> usize {
        match self.threads.load(Ordering::Relaxed) {
            0 => cores(),
            n => n,
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<rayon::ThreadPool>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An idle pool of the current size, or a new one: this caller's alone until the lease is dropped.
    fn lease(&'static self) -> PyResult<Lease> {
        let n = self.size();
        let idle = self.idle().pop();
        let pool = match idle {
            Some(p) if p.current_num_threads() == n => p,
            _ => rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .thread_name(|i| format!("nflow-{i}"))
                .build()
                .map_err(|e| PyRuntimeError::new_err(format!("cannot start a thread pool: {e}")))?,
        };
        Ok(Lease {
            pool: Some(pool),
            pools: self,
        })
    }
}

/// A pool checked out for one operation; given back to the idle list when dropped.
struct Lease {
    pool: Option<rayon::ThreadPool>,
    pools: &'static Pools,
}

impl std::ops::Deref for Lease {
    type Target = rayon::ThreadPool;
    fn deref(&self) -> &rayon::ThreadPool {
        self.pool
            .as_ref()
            .expect("a lease holds its pool until dropped")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(pool) = self.pool.take() else { return };
        if std::process::id() != self.pools.pid {
            // forked while this lease was out: the pool's threads are in the parent
            std::mem::forget(pool);
            return;
        }
        if pool.current_num_threads() == self.pools.size() {
            let mut idle = self.pools.idle();
            if idle.len() < MAX_IDLE {
                idle.push(pool);
            }
        }
        // (one not kept is dropped here, outside the lock: its threads end)
    }
}

/// Run `f` on a pool of its own with the GIL released.
pub(crate) fn compute<R: Send>(py: Python<'_>, f: impl FnOnce() -> R + Send) -> PyResult<R> {
    py.detach(|| {
        let pool = pools().lease()?;
        Ok(pool.install(f))
    })
}

/// Use `n` threads for training, scoring and sampling from now on (default: all cores). At most 4 x the
/// cores: more only wait on each other. Each operation running at once (a fit, a `log_prob` from another
/// thread or from a fit's callback) has a pool of `n` threads of its own.
#[pyfunction]
pub(crate) fn set_num_threads(n: usize) -> PyResult<()> {
    if n == 0 {
        return Err(config_err("set_num_threads: n must be at least 1"));
    }
    let most = 4 * cores();
    if n > most {
        return Err(config_err(format!(
            "set_num_threads: {n} threads is more than 4 x the {} cores",
            cores()
        )));
    }
    let p = pools();
    nflow::engine::pool::set_auto(false);
    p.threads.store(n, Ordering::Relaxed);
    // the idle pools have the old size (those in use are dropped when given back)
    let old = std::mem::take(&mut *p.idle());
    drop(old);
    Ok(())
}

/// Threads used for training, scoring and sampling.
#[pyfunction]
pub(crate) fn get_num_threads() -> usize {
    pools().size()
}

/// One report from the training thread to the Python thread: the loss (training NLL / reverse KL) and, at an
/// evaluation, the held-out figure (validation log-likelihood / ELBO).
pub(crate) struct Report {
    pub(crate) step: usize,
    pub(crate) total: usize,
    pub(crate) loss: f64,
    pub(crate) eval: Option<f64>,
    /// Set for an evaluation when there is a hook: the training thread waits until the hook has run, so a
    /// callback that stops training stops it at this evaluation.
    pub(crate) ack: Option<std::sync::mpsc::SyncSender<()>>,
}

/// Progress reports between evaluations come at most this often.
pub(crate) const REPORT_EVERY: Duration = Duration::from_millis(100);

/// Run `work` (a training run, given a way to report progress) on a pool of its own (in its warm scope), off
/// this thread; meanwhile this thread waits with the GIL released, calls `hook(step, total, loss, eval)` for each report
/// (True stops training through `stop`) and checks for signals (Ctrl-C stops it too). Returns what `work`
/// returned and the exception that stopped it (KeyboardInterrupt, or the hook's own), for the caller to raise
/// once it holds the model.
pub(crate) fn drive<R: Send>(
    py: Python<'_>,
    hook: Option<&Py<PyAny>>,
    stop: &AtomicBool,
    work: impl FnOnce(&dyn Fn(Report)) -> R + Send,
) -> PyResult<(R, Option<PyErr>)> {
    let (tx, rx) = std::sync::mpsc::channel::<Report>();
    let rx = Mutex::new(rx);
    // this fit's own pool: `run_warm` keeps all its threads, and the callback's calls get other pools
    let pool = py.detach(|| pools().lease())?;
    let mut raised: Option<PyErr> = None;
    let has_hook = hook.is_some();
    let result = std::thread::scope(|s| {
        let pool = &pool;
        let worker = s.spawn(move || {
            pool.install(move || {
                nflow::engine::pool::run_warm(move || {
                    let send = move |mut r: Report| {
                        if r.eval.is_some() && has_hook {
                            let (atx, arx) = std::sync::mpsc::sync_channel(1);
                            r.ack = Some(atx);
                            if tx.send(r).is_ok() {
                                let _ = arx.recv();
                            }
                        } else {
                            let _ = tx.send(r);
                        }
                    };
                    work(&send)
                })
            })
        });
        loop {
            let got = py.detach(|| {
                let rx = rx.lock().unwrap_or_else(|e| e.into_inner());
                rx.recv_timeout(Duration::from_millis(100))
            });
            match got {
                Ok(mut r) => {
                    let ack = r.ack.take();
                    if let (Some(h), false) = (hook, stop.load(Ordering::Relaxed)) {
                        match h.call1(py, (r.step, r.total, r.loss, r.eval)) {
                            Ok(v) => {
                                if v.is_truthy(py).unwrap_or(false) {
                                    stop.store(true, Ordering::Relaxed);
                                }
                            }
                            Err(e) => {
                                stop.store(true, Ordering::Relaxed);
                                raised.get_or_insert(e);
                            }
                        }
                    }
                    if let Some(a) = ack {
                        let _ = a.send(());
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if let Err(e) = py.check_signals() {
                stop.store(true, Ordering::Relaxed);
                raised.get_or_insert(e);
            }
        }
        worker.join()
    });
    match result {
        Ok(r) => Ok((r, raised)),
        Err(_) => Err(PyRuntimeError::new_err(
            "nflow: the training thread panicked",
        )),
    }
}
