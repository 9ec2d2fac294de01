//! Running a whole command on the rayon pool with its other threads kept awake.
//!
//! Why: a training step calls a parallel kernel every few hundred microseconds, and between two of them the
//! pool's other threads go to sleep; waking one costs ~35 µs on this kind of virtual machine (measured: two
//! 20 µs halves took 57 µs after a 100 µs serial gap, 21 µs after none), which was a third of a small flow's
//! step. OpenMP runtimes solve this by spinning for a while before sleeping; so do we: while the command runs,
//! every other thread of the pool runs pending pool jobs as soon as they appear and only naps after a
//! stretch with none.

use rayon::Yield;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Idle time after which a waiting thread starts napping between looks for work.
const SPIN: Duration = Duration::from_millis(2);
/// A nap's length once idle.
const NAP: Duration = Duration::from_micros(200);

/// Run `f` on a thread of the current rayon pool (so its parallel kernels split from inside the pool) while
/// the pool's other threads wait for its jobs awake. A panic in `f` is passed on.
pub fn run_warm<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_num_threads() == 1 {
        return rayon::scope(|_| f());
    }
    let done = AtomicBool::new(false);
    let job = Mutex::new(Some(f));
    let out = Mutex::new(None);
    /// Tells the waiting threads to stop, however `f` ends.
    struct Finish<'a>(&'a AtomicBool);
    impl Drop for Finish<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    rayon::broadcast(|ctx| {
        if ctx.index() == 0 {
            let _finish = Finish(&done);
            let f = job.lock().ok().and_then(|mut j| j.take());
            if let Some(f) = f {
                let r = f();
                if let Ok(mut o) = out.lock() {
                    *o = Some(r);
                }
            }
        } else {
            let mut last = Instant::now();
            while !done.load(Ordering::Acquire) {
                match rayon::yield_now() {
                    Some(Yield::Executed) => last = Instant::now(),
                    _ if last.elapsed() > SPIN => std::thread::sleep(NAP),
                    _ => std::hint::spin_loop(),
                }
            }
        }
    });
    out.into_inner()
        .ok()
        .flatten()
        .expect("run_warm: the command ran on thread 0")
}

thread_local! {
    /// Threads a kernel called on this thread may use (0: the whole pool); set while it runs one of several
    /// shards of a batch ([`shards`]).
    static SHARE: Cell<usize> = const { Cell::new(0) };
}

/// How many threads a kernel called here should split its work over: the pool's, or this thread's share of
/// it while it runs one of several [`shards`] at once (the kernels' fixed chunking keeps the results the same).
pub fn threads() -> usize {
    match SHARE.with(Cell::get) {
        0 => rayon::current_num_threads(),
        t => t,
    }
}

/// Run `f(i)` for each shard `i < n` at once on the pool (or one after the other on one thread), each with
/// an equal share of the threads for its own kernels; the results in shard order.
///
/// Why: a small flow's step is hundreds of kernels of tens of microseconds; split inside each kernel, the
/// threads meet at every one of them, while whole shards of the batch run a step's kernels with no meeting
/// (data parallelism, as a multi-process trainer does across devices).
pub fn shards<R: Send>(n: usize, f: impl Fn(usize) -> R + Sync) -> Vec<R> {
    use rayon::prelude::*;
    let share = (threads() / n.max(1)).max(1);
    let run = |i: usize| {
        /// Puts the thread's share back however `f` ends.
        struct Restore(usize);
        impl Drop for Restore {
            fn drop(&mut self) {
                SHARE.with(|s| s.set(self.0));
            }
        }
        let _restore = Restore(SHARE.with(|s| s.replace(share)));
        f(i)
    };
    match threads() {
        1 => (0..n).map(run).collect(),
        _ => (0..n).into_par_iter().with_max_len(1).map(run).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    /// The command's result comes back, its parallel work runs (on both threads), and a panic in it reaches
    /// the caller instead of leaving the waiting threads spinning.
    #[test]
    fn runs_the_command_and_passes_panics_on() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let sum = pool.install(|| run_warm(|| (0..10_000u64).into_par_iter().sum::<u64>()));
        assert_eq!(sum, 10_000 * 9_999 / 2);
        let threads = pool.install(|| {
            run_warm(|| {
                let seen = Mutex::new(std::collections::HashSet::new());
                (0..64).into_par_iter().for_each(|_| {
                    std::thread::sleep(Duration::from_millis(1));
                    seen.lock().unwrap().insert(rayon::current_thread_index());
                });
                seen.into_inner().unwrap().len()
            })
        });
        assert_eq!(threads, 2, "the waiting thread took no work");
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.install(|| run_warm(|| panic!("boom")))
        }));
        assert!(r.is_err());
        // the pool still works afterwards
        assert_eq!(pool.install(|| run_warm(|| 7)), 7);
    }
}
