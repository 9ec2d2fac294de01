//! Running a whole command on the rayon pool with its other threads kept awake.
//!
//! Why: a training step calls many short parallel kernels, and between two of them the pool's other threads go to
//! sleep; waking a sleeping thread costs more than a small kernel takes, so a small flow's step waited on wake-ups
//! (docs/results/speed.md, "Warm pool"). OpenMP runtimes solve this by spinning for a while before sleeping; so do we:
//! while the command runs, every other thread of the pool runs pending pool jobs as soon as they appear and only naps
//! after a stretch with none.

use rayon::Yield;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
                    // a [`Tuner`] chose one thread: no jobs will come, and spinning would take a busy core
                    _ if CAP.load(Ordering::Relaxed) == 1 => std::thread::sleep(CAPPED_NAP),
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

/// A waiting thread's nap while the kernels run on one thread.
const CAPPED_NAP: Duration = Duration::from_millis(5);

/// The most threads kernels use (0: no limit), set by a [`Tuner`] between training steps. It changes only
/// how work is split, never the results: kernels chunk their work the same at any thread count, and a
/// batch's shards follow the pool's size ([`shard_threads`]), not this limit.
static CAP: AtomicUsize = AtomicUsize::new(0);
/// Whether [`Tuner`]s may lower the thread count (the user did not choose one).
static AUTO: AtomicBool = AtomicBool::new(false);
/// Training steps timed by tuners, and those of them run on fewer threads than the pool has.
static STEPS: AtomicUsize = AtomicUsize::new(0);
static STEPS_FEWER: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Threads a kernel called on this thread may use (0: the whole pool); set while it runs one of several
    /// shards of a batch ([`shards`]).
    static SHARE: Cell<usize> = const { Cell::new(0) };
}

/// How many threads a kernel called here should split its work over: the pool's, or this thread's share of
/// it while it runs one of several [`shards`] at once (the kernels' fixed chunking keeps the results the same).
pub fn threads() -> usize {
    match CAP.load(Ordering::Relaxed) {
        0 => shard_threads(),
        c => shard_threads().min(c),
    }
}

/// The fewest items a piece of a parallel iterator over a kernel's fixed chunks may hold: all of them where
/// this thread's share is one thread (inside one of several [`shards`], or with a [`Tuner`] holding one), so
/// that the kernel runs on its caller's thread, as the kernels that test `threads() > 1` do. Split anyway, its
/// pieces could be taken by the thread running the other shard, on this shard's data (rayon's splitting does
/// not know the shards).
pub fn min_len() -> usize {
    match threads() {
        1 => usize::MAX,
        _ => 1,
    }
}

/// [`threads`] without a [`Tuner`]'s limit: what a batch's shard count follows, so that the limit never
/// changes a result.
pub fn shard_threads() -> usize {
    match SHARE.with(Cell::get) {
        0 => rayon::current_num_threads(),
        t => t,
    }
}

/// Held by tests that set the limit, so that they do not change each other's.
#[cfg(test)]
pub(crate) static CAP_TESTS: Mutex<()> = Mutex::new(());

/// Set the kernels' thread limit directly (tests).
#[cfg(test)]
pub(crate) fn set_cap(n: usize) {
    CAP.store(n, Ordering::Relaxed);
}

/// Let training loops' [`Tuner`]s lower the number of threads their kernels use (`on` where the user did not
/// choose a thread count).
pub fn set_auto(on: bool) {
    AUTO.store(on, Ordering::Relaxed);
    if !on {
        CAP.store(0, Ordering::Relaxed);
    }
}

/// Training steps timed by tuners so far, and how many of them ran on fewer threads than the pool has.
pub fn tuned_steps() -> (usize, usize) {
    (
        STEPS.load(Ordering::Relaxed),
        STEPS_FEWER.load(Ordering::Relaxed),
    )
}

/// Picks, by measurement, how many of the pool's threads a training loop's steps use, and measures again from
/// time to time.
///
/// Why: a fork-join step waits at every kernel for its slowest thread; when other programs keep some cores
/// busy, the operating system deschedules one of ours for a whole time slice now and then, and each kernel
/// waits for it, so on a busy machine fewer threads can finish a step sooner than all of them
/// (docs/results/speed-splines.md, "A busier machine"). So the loop times a few steps at each candidate (all threads,
/// half, ..., one), keeps the fastest, and tries again after a stretch fifteen times as long as the trial, at most a
/// few seconds, in case the other work has come or gone. Results do not change (see [`CAP`]).
pub struct Tuner {
    /// Candidate thread counts, most first; empty when tuning is off.
    options: Vec<usize>,
    /// Steps still to skip before the first trial (the first steps allocate and warm caches).
    warm: usize,
    /// The candidate on trial and its step times, or none while holding a choice.
    trial: Option<(usize, Vec<f64>)>,
    /// Median step time of each candidate in the current round.
    medians: Vec<f64>,
    /// Time spent in the current round's trials, and the steps left of the current hold.
    trial_secs: f64,
    hold: usize,
    held_secs: f64,
    /// The last step times of the current hold (compared with the choice's trial in windows of [`RECENT`]).
    recent: Vec<f64>,
}

/// Shortest trial of one candidate (steps, seconds), and the longest hold between two rounds.
const TRIAL_STEPS: usize = 5;
const TRIAL_SECS: f64 = 0.05;
const MAX_HOLD_SECS: f64 = 5.0;
/// Steps per window in which a held choice's median is checked against its trial's.
const RECENT: usize = 16;

impl Default for Tuner {
    fn default() -> Self {
        Self::new()
    }
}

impl Tuner {
    /// A tuner for the current pool: off when the user chose the thread count or there is one thread.
    pub fn new() -> Self {
        let n = rayon::current_num_threads();
        let mut options = Vec::new();
        if AUTO.load(Ordering::Relaxed) && n > 1 {
            let mut t = n;
            while t > 1 {
                options.push(t);
                t /= 2;
            }
            options.push(1);
        }
        Tuner {
            options,
            warm: 3,
            trial: None,
            medians: Vec::new(),
            trial_secs: 0.0,
            hold: 0,
            held_secs: 0.0,
            recent: Vec::new(),
        }
    }

    /// Run one training step `f`, timed, on the thread count the tuner chose or is trying.
    pub fn step<R>(&mut self, f: impl FnOnce() -> R) -> R {
        if self.options.is_empty() {
            return f();
        }
        if self.warm > 0 {
            self.warm -= 1;
            return f();
        }
        if self.trial.is_none() && self.hold == 0 {
            // a new round: all threads first
            self.medians.clear();
            self.trial_secs = 0.0;
            self.held_secs = 0.0;
            self.recent.clear();
            self.trial = Some((0, Vec::new()));
        }
        let threads = match &self.trial {
            Some((i, _)) => self.options[*i],
            None => self.chosen(),
        };
        CAP.store(threads, Ordering::Relaxed);
        let t0 = Instant::now();
        let r = f();
        let dt = t0.elapsed().as_secs_f64();
        STEPS.fetch_add(1, Ordering::Relaxed);
        if threads < self.options[0] {
            STEPS_FEWER.fetch_add(1, Ordering::Relaxed);
        }
        match &mut self.trial {
            Some((i, times)) => {
                times.push(dt);
                self.trial_secs += dt;
                let spent: f64 = times.iter().sum();
                if times.len() >= TRIAL_STEPS && spent >= TRIAL_SECS
                    || times.len() >= 50 * TRIAL_STEPS
                {
                    times.sort_by(f64::total_cmp);
                    self.medians.push(times[times.len() / 2]);
                    let next = *i + 1;
                    if next < self.options.len() {
                        self.trial = Some((next, Vec::new()));
                    } else {
                        self.trial = None;
                        // hold the choice for ~15x the round's trials (at most MAX_HOLD_SECS), in steps
                        let per_step = self.medians[self.best()];
                        let secs = (15.0 * self.trial_secs).min(MAX_HOLD_SECS);
                        self.hold = (secs / per_step.max(1e-9)).ceil().max(1.0) as usize;
                    }
                }
            }
            None => {
                self.hold = self.hold.saturating_sub(1);
                self.held_secs += dt;
                if self.held_secs > 2.0 * MAX_HOLD_SECS {
                    self.hold = 0;
                }
                // the choice has turned slow (other work came, or its trial was lucky): measure again now
                self.recent.push(dt);
                if self.recent.len() == RECENT {
                    let mut w = std::mem::take(&mut self.recent);
                    w.sort_by(f64::total_cmp);
                    if w[RECENT / 2] > 1.5 * self.medians[self.best()] {
                        self.hold = 0;
                    }
                }
            }
        }
        r
    }

    /// The index of the candidate with the shortest median step of the last round (more threads on a near
    /// tie).
    fn best(&self) -> usize {
        let mut best = 0;
        for (i, &m) in self.medians.iter().enumerate() {
            if m < 0.97 * self.medians[best] {
                best = i;
            }
        }
        best
    }

    /// The thread count chosen in the last round.
    fn chosen(&self) -> usize {
        self.options.get(self.best()).copied().unwrap_or(1)
    }
}

impl Drop for Tuner {
    /// The last choice stays for what the process does next (the evaluation and sampling after training run
    /// on the same busy machine), until another tuner measures again or [`set_auto`] turns tuning off.
    fn drop(&mut self) {
        if !self.options.is_empty() && self.trial.is_some() {
            // stopped in the middle of a trial: the last full round's choice (all threads before any)
            let keep = if self.medians.is_empty() {
                0
            } else {
                self.chosen()
            };
            CAP.store(keep, Ordering::Relaxed);
        }
    }
}

/// Run `f(i)` for each shard `i < n` at once on the pool (or one after the other on one thread), each with
/// an equal share of the threads for its own kernels; the results in shard order.
///
/// Why: a small flow's step is hundreds of kernels of tens of microseconds; split inside each kernel, the
/// threads meet at every one of them, while whole shards of the batch run a step's kernels with no meeting
/// (data parallelism, as a multi-process trainer does across devices).
pub fn shards<R: Send>(n: usize, f: impl Fn(usize) -> R + Sync) -> Vec<R> {
    let threads = threads();
    let share = (threads / n.max(1)).max(1);
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
    if threads == 1 || n < 2 {
        return (0..n).map(run).collect();
    }
    // Each thread that joins takes the next shard not yet taken; the calling thread then waits for the shards
    // others took by spinning, not in rayon's join (which puts a thread that waits long to sleep: waking it
    // again can cost more than a small flow gains from the second thread; docs/results/speed-splines.md, "Small
    // flows on a slower or busier machine"). A thread that never comes leaves its shards to the caller.
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let slots: Vec<Mutex<Option<R>>> = (0..n).map(|_| Mutex::new(None)).collect();
    let work = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= n {
            break;
        }
        /// Counts the shard as finished however it ends (a panic then reaches the caller through the scope,
        /// instead of leaving it waiting).
        struct Done<'a>(&'a AtomicUsize);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::Release);
            }
        }
        let _done = Done(&done);
        let r = run(i);
        if let Ok(mut slot) = slots[i].lock() {
            *slot = Some(r);
        }
    };
    rayon::scope(|s| {
        for _ in 1..threads.min(n) {
            s.spawn(|_| work());
        }
        work();
        let (t0, mut looks) = (Instant::now(), 0u32);
        while done.load(Ordering::Acquire) < n {
            looks = looks.wrapping_add(1);
            // (the clock read every 64 looks; past SPIN, a shard much longer than ours: the core given away
            // between looks)
            match looks % 64 == 0 && t0.elapsed() > SPIN {
                true => std::thread::yield_now(),
                false => std::hint::spin_loop(),
            }
        }
    });
    slots
        .into_iter()
        .map(|m| {
            m.into_inner()
                .ok()
                .flatten()
                .expect("shards: every shard ran")
        })
        .collect()
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

    /// Shards come back in shard order, each with its share of the threads, both threads take shards (under
    /// [`run_warm`], and from a plain pool thread too), a caller whose helper never comes runs them all, and a
    /// panicking shard reaches the caller instead of leaving it waiting.
    #[test]
    fn shards_come_back_in_order_and_pass_panics_on() {
        let _one = CAP_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let run = |warm: bool| {
            let go = || {
                shards(6, |i| {
                    std::thread::sleep(Duration::from_millis(2));
                    // a kernel's pieces inside a one-thread share stay on this thread
                    let pieces: std::collections::HashSet<_> = (0..64)
                        .into_par_iter()
                        .with_min_len(min_len())
                        .map(|_| {
                            std::thread::sleep(Duration::from_micros(50));
                            rayon::current_thread_index()
                        })
                        .collect();
                    assert_eq!(pieces.len(), 1, "a shard's kernel ran on another thread");
                    (i, threads(), rayon::current_thread_index())
                })
            };
            match warm {
                true => pool.install(|| run_warm(go)),
                false => pool.install(go),
            }
        };
        for warm in [true, false] {
            let out = run(warm);
            assert_eq!(
                out.iter().map(|r| r.0).collect::<Vec<_>>(),
                (0..6).collect::<Vec<_>>()
            );
            assert!(
                out.iter().all(|r| r.1 == 1),
                "a shard's kernels split over more than its share"
            );
            let who: std::collections::HashSet<_> = out.iter().map(|r| r.2).collect();
            assert_eq!(who.len(), 2, "warm {warm}: one thread ran every shard");
        }
        // the other thread perhaps busy for the whole call (if it took the blocking job first): every shard
        // still comes back, the caller taking those nobody else takes
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let out = pool.install(|| {
            rayon::join(
                move || {
                    let r = shards(4, |i| (i, rayon::current_thread_index()));
                    drop(tx);
                    r
                },
                move || {
                    let _ = rx.recv();
                },
            )
            .0
        });
        assert_eq!(
            out.iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![0, 1, 2, 3]
        );
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.install(|| {
                run_warm(|| {
                    shards(4, |i| {
                        std::thread::sleep(Duration::from_millis(1));
                        assert!(i != 3, "shard 3 fails");
                        i
                    })
                })
            })
        }));
        assert!(r.is_err());
        assert_eq!(pool.install(|| run_warm(|| shards(2, |i| i))), vec![0, 1]);
    }

    /// A tuner tries every candidate (2 threads, then 1) and then holds one; the limit is lifted when it is
    /// dropped; without `set_auto` it does nothing.
    #[test]
    fn tuner_tries_each_thread_count_then_lifts_its_limit() {
        let _one = CAP_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        pool.install(|| {
            let seen = |t: &mut Tuner, steps: usize| {
                let mut s = std::collections::BTreeSet::new();
                for _ in 0..steps {
                    t.step(|| {
                        s.insert(threads());
                        std::thread::sleep(Duration::from_millis(2));
                    });
                }
                s
            };
            set_auto(false);
            let mut off = Tuner::new();
            assert_eq!(seen(&mut off, 60), [2].into());
            set_auto(true);
            let mut on = Tuner::new();
            assert_eq!(seen(&mut on, 3 + 2 * 25 + 5), [1, 2].into());
            let kept = on.chosen();
            drop(on);
            assert_eq!(threads(), kept, "the choice stays after the loop");
            set_auto(false);
            assert_eq!(threads(), 2);
        });
    }
}
