//! `nflow._nflow`: the Python binding, a thin shell over the library (the pure-Python layer in
//! `python/nflow/` gives it its API). Arrays cross as contiguous float64 numpy arrays (the Python layer
//! converts); every library error becomes a Python exception of the usual type carrying the Rust message;
//! the GIL is released while Rust computes, and all work runs on this module's own thread pools
//! (`set_num_threads` threads each): every operation in flight (a fit, a score from another thread or from a
//! fit's callback) on a pool of its own, so that any number of threads may use any models at once, callbacks
//! and nested fits included, and a forked child starts pools of its own. Models are immutable (no lock).

use nflow::data::{ColumnSupport, Preprocess, Table};
use nflow::flows::{FlowConfig, FlowDef, FlowSpec};
use nflow::optim::{OptimConfig, OptimKind, Schedule};
use nflow::train::diagnostics::Diagnostics;
use nflow::train::{Progress, StopFlag, Target, TrainConfig, Trainer, ViConfig, ViProgress};
use nflow::Error;
use nflow::Mat;
use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray1, PyArray2, PyReadonlyArray1, PyReadonlyArray2};
use pyo3::exceptions::{
    PyFileNotFoundError, PyFloatingPointError, PyOSError, PyRuntimeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// The module's Rust allocations (the layers' buffers, result arrays) go through mimalloc, as polars' wheel
// uses jemalloc: glibc's malloc with an explicit trim threshold (Dask's nanny sets MALLOC_TRIM_THRESHOLD_ for its
// workers) stops adapting its mmap threshold, so every buffer over 128 KiB was mapped, faulted in and unmapped.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A library error as the Python exception a Python user expects.
fn py_err(e: Error) -> PyErr {
    let msg = e.to_string();
    match &e {
        Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            PyFileNotFoundError::new_err(msg)
        }
        Error::Io { .. } => PyOSError::new_err(msg),
        Error::Model { msg: m, .. } if m == "no such folder" => PyFileNotFoundError::new_err(msg),
        Error::Diverged { .. } => PyRuntimeError::new_err(msg),
        Error::NonFinite { .. } => PyFloatingPointError::new_err(msg),
        _ => PyValueError::new_err(msg),
    }
}

fn config_err(msg: impl Into<String>) -> PyErr {
    PyValueError::new_err(msg.into())
}

// ---------------------------------------------------------------------------------------------------------
// Thread pools
//
// Every top-level operation (one `compute` call, or one whole fit) runs on a rayon pool of its own, checked
// out of a small free list of idle pools and given back afterwards; a new pool is made when none is idle. Two
// operations never share a pool, so none can wait for a pool thread that another holds: a fit keeps every
// thread of its pool (`run_warm`) and its training thread waits for the Python callback, and a callback's own
// `log_prob`, `sample` or nested `fit`, another thread's fit, or a concurrent reader of the same model simply
// gets another pool. In a child made by `fork` the parent's pools have no threads: a pool list made in another
// process is forgotten (leaked, never dropped or locked: a thread that no longer exists may have held its
// lock at the fork) and the child starts a fresh one.

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
            Ok(_) => return unsafe { &*fresh },
            // another thread of this process was first
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
fn compute<R: Send>(py: Python<'_>, f: impl FnOnce() -> R + Send) -> PyResult<R> {
    py.detach(|| {
        let pool = pools().lease()?;
        Ok(pool.install(f))
    })
}

/// Use `n` threads for training, scoring and sampling from now on (default: all cores). At most 4 x the
/// cores: more only wait on each other. Each operation running at once (a fit, a `log_prob` from another
/// thread or from a fit's callback) has a pool of `n` threads of its own.
#[pyfunction]
fn set_num_threads(n: usize) -> PyResult<()> {
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
fn get_num_threads() -> usize {
    pools().size()
}

// ---------------------------------------------------------------------------------------------------------
// Arrays and tables

fn table(x: &PyReadonlyArray2<'_, f64>, columns: Vec<String>, source: &str) -> PyResult<Table> {
    let v = x.as_array();
    let (rows, cols) = v.dim();
    let columns = if columns.is_empty() {
        (0..cols).map(|j| format!("x{j}")).collect()
    } else {
        columns
    };
    if columns.len() != cols {
        return Err(config_err(format!(
            "{source}: {cols} columns but {} column names",
            columns.len()
        )));
    }
    let data: Vec<f64> = match v.as_slice() {
        Some(s) => s.to_vec(),
        None => v.iter().copied().collect(),
    };
    Ok(Table::new(columns, rows, data, source))
}

fn array2<'py>(
    py: Python<'py>,
    rows: usize,
    cols: usize,
    v: Vec<f64>,
) -> Bound<'py, PyArray2<f64>> {
    Array2::from_shape_vec((rows, cols), v)
        .expect("rows x cols values")
        .into_pyarray(py)
}

// ---------------------------------------------------------------------------------------------------------
// Flow definitions from the Python layer's JSON

/// A preset's options: `{"flow": NAME, OPTION: VALUE, ...}` over the preset's defaults for `dim`.
fn preset_spec(json: &str, dim: usize, context_dim: usize, seed: u64) -> PyResult<FlowSpec> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| config_err(format!("flow options: {e}")))?;
    let serde_json::Value::Object(mut opts) = v else {
        return Err(config_err("flow options must be a mapping"));
    };
    let name = opts
        .remove("flow")
        .and_then(|n| n.as_str().map(String::from))
        .ok_or_else(|| config_err("flow options: no preset name"))?;
    // "auto": the flow `nflow train` chooses for tabular data when no --flow is given
    let preset = if name == "auto" {
        nflow::train::auto::tabular_flow(dim, context_dim)
    } else {
        FlowSpec::preset(
            name.parse().map_err(|e: Error| config_err(e.to_string()))?,
            dim,
        )
    };
    let mut base = serde_json::to_value(preset).expect("a preset serialises");
    let known: Vec<String> = base
        .as_object()
        .expect("an object")
        .keys()
        .filter(|k| !["kind", "dim", "context_dim", "seed"].contains(&k.as_str()))
        .cloned()
        .chain(["map".to_string(), "image".to_string()])
        .collect::<std::collections::BTreeSet<String>>()
        .into_iter()
        .collect();
    let b = base.as_object_mut().expect("an object");
    for (k, v) in opts {
        if !known.contains(&k) {
            return Err(config_err(format!(
                "unknown option '{k}' for the {name} preset (options: {})",
                known.join(", ")
            )));
        }
        if !v.is_null() {
            b.insert(k, v);
        }
    }
    b.insert("context_dim".into(), context_dim.into());
    b.insert("seed".into(), seed.into());
    let spec: FlowSpec = serde_json::from_value(base)
        .map_err(|e| config_err(format!("{name} preset options: {e}")))?;
    spec.validate().map_err(py_err)?;
    Ok(spec)
}

/// A hand-composed architecture: a `FlowConfig` whose `dim` / `context_dim` / `seed` may be left out.
fn composed(json: &str, dim: usize, context_dim: usize, seed: u64) -> PyResult<FlowConfig> {
    let mut v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| config_err(format!("flow: {e}")))?;
    let o = v
        .as_object_mut()
        .ok_or_else(|| config_err("flow: expected a mapping with a 'layers' list"))?;
    o.entry("dim").or_insert(dim.into());
    o.entry("context_dim").or_insert(context_dim.into());
    o.entry("seed").or_insert(seed.into());
    let arch: FlowConfig =
        serde_json::from_value(v).map_err(|e| config_err(format!("flow: {e}")))?;
    if arch.dim != dim || arch.context_dim != context_dim {
        return Err(config_err(format!(
            "flow: the architecture has dim {} and context_dim {}, the data {dim} and {context_dim}",
            arch.dim, arch.context_dim
        )));
    }
    arch.validate().map_err(py_err)?;
    Ok(arch)
}

/// A flow definition from the Python layer: `kind` "preset" (a preset's name and options) or "composed" (a
/// layer list), for data of `dim` features and `context_dim` context columns.
fn flow_def(
    kind: &str,
    json: &str,
    dim: usize,
    context_dim: usize,
    seed: u64,
) -> PyResult<FlowDef> {
    Ok(match kind {
        "preset" => preset_spec(json, dim, context_dim, seed)?.into(),
        "composed" => composed(json, dim, context_dim, seed)?.into(),
        k => return Err(config_err(format!("unknown flow definition kind '{k}'"))),
    })
}

/// The architecture (as `config.json` stores it under "flow") a definition gives for data of this size.
#[pyfunction]
#[pyo3(signature = (kind, json, dim, context_dim=0, seed=0))]
fn architecture(
    kind: &str,
    json: &str,
    dim: usize,
    context_dim: usize,
    seed: u64,
) -> PyResult<String> {
    let (arch, _) = flow_def(kind, json, dim, context_dim, seed)?
        .resolve()
        .map_err(py_err)?;
    Ok(serde_json::to_string(&arch).expect("architecture serialises"))
}

/// Names of the presets.
#[pyfunction]
fn presets() -> Vec<&'static str> {
    vec![
        "auto",
        "nice",
        "realnvp",
        "maf",
        "iaf",
        "maf-mog",
        "nsf-c",
        "nsf-ar",
        "glow",
        "realnvp-multiscale",
    ]
}

// ---------------------------------------------------------------------------------------------------------
// Training options (the CLI's `nflow train` defaults live in the Python layer's signature)

/// The option `$k` of a Python dict of options: absent or None gives None; a value of the wrong type is a
/// ValueError naming the option.
macro_rules! opt {
    ($o:expr, $k:expr) => {
        $o.get_item($k)?
            .filter(|v| !v.is_none())
            .map(|v| {
                v.extract()
                    .map_err(|e: PyErr| config_err(format!("{}: {e}", $k)))
            })
            .transpose()
    };
}

/// The training options of a fit on `rows` rows; without `steps` and `epochs`, tabular flows get the budget
/// `nflow train` chooses ([`nflow::train::auto::train_config`]), image flows 50 epochs.
fn train_config(o: &Bound<'_, PyDict>, rows: usize, image: bool) -> PyResult<TrainConfig> {
    let d = TrainConfig::default();
    let epochs: Option<usize> = opt!(o, "epochs")?;
    let batch_size: usize = opt!(o, "batch_size")?.unwrap_or(d.batch_size);
    let val_fraction: f64 = opt!(o, "validation")?.unwrap_or(d.val_fraction);
    let patience: usize = opt!(o, "patience")?.unwrap_or(10);
    let (steps, eval_every, default_schedule) = nflow::train::auto::budget(
        opt!(o, "steps")?,
        epochs,
        image,
        rows,
        batch_size,
        val_fraction,
        patience,
    );
    let optimizer: String = opt!(o, "optimizer")?.unwrap_or_else(|| "adam".into());
    let kind = match optimizer.as_str() {
        "adam" => OptimKind::Adam,
        "adamw" => OptimKind::Adamw,
        o => {
            return Err(config_err(format!(
                "unknown optimizer '{o}' (known: adam, adamw)"
            )))
        }
    };
    let schedule: String = opt!(o, "schedule")?.unwrap_or_else(|| default_schedule.into());
    let warmup: usize = opt!(o, "warmup")?.unwrap_or(0);
    let mut schedule = Schedule::parse(&schedule, warmup).ok_or_else(|| {
        config_err(format!(
            "unknown schedule '{schedule}' (known: constant, warmup, cosine, plateau)"
        ))
    })?;
    if let (Schedule::Plateau { decays, .. }, Some(k)) = (&mut schedule, opt!(o, "decays")?) {
        *decays = k;
    }
    let cfg = TrainConfig {
        epochs: epochs.unwrap_or(d.epochs),
        steps,
        batch_size,
        optim: OptimConfig {
            kind,
            lr: opt!(o, "lr")?.unwrap_or(d.optim.lr),
            weight_decay: opt!(o, "weight_decay")?.unwrap_or(0.0),
            ..OptimConfig::default()
        },
        schedule,
        clip: opt!(o, "clip")?,
        val_fraction,
        patience: (patience > 0).then_some(patience),
        eval_every: opt!(o, "eval_every")?.or(eval_every),
        max_seconds: opt!(o, "max_seconds")?,
        seed: opt!(o, "seed")?.unwrap_or(0),
    };
    cfg.validate().map_err(py_err)?;
    Ok(cfg)
}

// ---------------------------------------------------------------------------------------------------------
// The model

/// A trained flow with its columns and data normalisation (a model folder in memory). Immutable: any number
/// of threads use it at once (a fit makes a new one), with no lock to wait for or to leave held at a fork.
#[pyclass(module = "nflow._nflow", frozen)]
struct Model {
    inner: nflow::Model,
    /// Copies for the score, whose backward pass keeps caches in the layers (so needs a model of its own):
    /// taken and given back without ever waiting for the lock (a busy or stuck lock: a fresh copy).
    scratch: Mutex<Vec<nflow::Model>>,
}

/// Score copies kept per model.
const MAX_SCRATCH: usize = 2;

impl Model {
    fn new(m: nflow::Model) -> Self {
        Model {
            inner: m,
            scratch: Mutex::new(Vec::new()),
        }
    }
    fn read(&self) -> &nflow::Model {
        &self.inner
    }

    /// A copy of the model for one score computation: the same architecture, parameters and buffers (as
    /// `Model::load` rebuilds one), in evaluation mode.
    fn scratch(&self) -> PyResult<nflow::Model> {
        if let Some(m) = self.scratch.try_lock().ok().and_then(|mut s| s.pop()) {
            return Ok(m);
        }
        let m = &self.inner;
        let mut flow: nflow::flows::Flow<f32> = m.arch.build().map_err(py_err)?;
        for ((_, to), (_, from)) in flow
            .named_params_mut()
            .into_iter()
            .zip(m.flow.named_params())
        {
            to.value_mut().copy_from_slice(from.value());
        }
        flow.reload();
        flow.set_training(false);
        Ok(nflow::Model {
            arch: m.arch.clone(),
            preset: m.preset.clone(),
            flow,
            columns: m.columns.clone(),
            norm: m.norm.clone(),
            context_columns: m.context_columns.clone(),
            context_norm: m.context_norm.clone(),
            context_classes: m.context_classes.clone(),
            preprocess: m.preprocess.clone(),
            summary: None,
            log: Vec::new(),
        })
    }

    fn keep_scratch(&self, m: nflow::Model) {
        if let Ok(mut s) = self.scratch.try_lock() {
            if s.len() < MAX_SCRATCH {
                s.push(m);
            }
        }
    }
}

/// One report from the training thread to the Python thread: the loss (training NLL / reverse KL) and, at an
/// evaluation, the held-out figure (validation log-likelihood / ELBO).
struct Report {
    step: usize,
    total: usize,
    loss: f64,
    eval: Option<f64>,
    /// Set for an evaluation when there is a hook: the training thread waits until the hook has run, so a
    /// callback that stops training stops it at this evaluation.
    ack: Option<std::sync::mpsc::SyncSender<()>>,
}

/// Progress reports between evaluations come at most this often.
const REPORT_EVERY: Duration = Duration::from_millis(100);

/// Run `work` (a training run, given a way to report progress) on a pool of its own (in its warm scope), off
/// this thread;
/// meanwhile this thread waits with the GIL released, calls `hook(step, total, loss, eval)` for each report
/// (True stops training through `stop`) and checks for signals (Ctrl-C stops it too). Returns what `work`
/// returned and the exception that stopped it (KeyboardInterrupt, or the hook's own), for the caller to raise
/// once it holds the model.
fn drive<R: Send>(
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

#[pymethods]
impl Model {
    /// Train a flow. `kind` is "preset" (then `flow_json` holds the preset's name and options) or "composed"
    /// (a layer list). `hook(step, total, train_nll, val_log_prob)` is called on this thread at every
    /// evaluation and at most ten times a second in between; it returns True to stop (the best weights are
    /// kept). Ctrl-C stops the same way. Returns the model and the exception that stopped training (a
    /// KeyboardInterrupt, or one the hook raised), for the caller to raise once it holds the model.
    #[staticmethod]
    #[pyo3(signature = (kind, flow_json, x, columns, context, context_columns, one_hot, options, hook, source))]
    #[allow(clippy::too_many_arguments)]
    fn fit(
        py: Python<'_>,
        kind: &str,
        flow_json: &str,
        x: PyReadonlyArray2<'_, f64>,
        columns: Vec<String>,
        context: Option<PyReadonlyArray2<'_, f64>>,
        context_columns: Vec<String>,
        one_hot: bool,
        options: &Bound<'_, PyDict>,
        hook: Option<Py<PyAny>>,
        source: String,
    ) -> PyResult<(Model, Option<Py<PyAny>>)> {
        let table = table(&x, columns, &source)?;
        let ctx = match &context {
            Some(c) => Some(table_ctx(c, context_columns, &source)?),
            None => None,
        };
        let classes = match (&ctx, one_hot) {
            (Some(c), true) => nflow::data::count_classes(c).map_err(|e| py_err(e.into()))?,
            _ => Vec::new(),
        };
        let context_dim = if classes.is_empty() {
            ctx.as_ref().map_or(0, |c| c.cols)
        } else {
            classes.iter().sum()
        };
        let seed: u64 = opt!(options, "seed")?.unwrap_or(0);
        let def = flow_def(kind, flow_json, table.cols, context_dim, seed)?;
        let cfg = train_config(options, table.rows, def.is_image())?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut trainer = Trainer::new(cfg)
            .with_context_classes(classes)
            .with_stop(stop.clone());
        // per-column supports (bounds, positive, integer), as JSON from the Python layer
        if let Some(js) = opt!(options, "support")? {
            let js: String = js;
            let columns: Vec<ColumnSupport> =
                serde_json::from_str(&js).map_err(|e| config_err(format!("support: {e}")))?;
            let pre = Preprocess {
                columns,
                ..Preprocess::default()
            };
            pre.validate().map_err(|e| py_err(e.into()))?;
            trainer = trainer.with_preprocess(Some(pre));
        }
        // a weight per row (the weighted likelihood)
        if let Some(w) = options.get_item("sample_weight")?.filter(|w| !w.is_none()) {
            let w: PyReadonlyArray1<'_, f64> = w.extract()?;
            trainer = trainer.with_weights(w.as_slice()?.to_vec());
        }
        let (result, raised) = drive(py, hook.as_ref(), &stop, |send| {
            let mut last = Instant::now();
            trainer.fit(def, &table, ctx.as_ref(), |p: &Progress| {
                let now = Instant::now();
                if p.val_log_prob.is_some() || p.step == p.total || now - last >= REPORT_EVERY {
                    last = now;
                    send(Report {
                        step: p.step,
                        total: p.total,
                        loss: p.train_nll,
                        eval: p.val_log_prob,
                        ack: None,
                    });
                }
            })
        })?;
        let fitted = result.map_err(py_err)?;
        if let Some(e) = fitted.diverged {
            let s = fitted.model.summary.clone().unwrap_or_default();
            return Err(PyRuntimeError::new_err(format!(
                "{e} (the last good weights were from step {})",
                s.best_step
            )));
        }
        Ok((
            Model::new(fitted.model),
            raised.map(|e| e.into_value(py).into_any()),
        ))
    }

    /// Fit a flow by reverse KL to `target`: a built-in name (`u1`..`u4`, `gauss:D[:RHO[:SCALE]]`) or a
    /// Python function (then `dim` is needed). `contexts`: amortised inference over these rows. Returns the
    /// model, its diagnostics on fresh samples (JSON) and the exception that stopped training, if any.
    #[staticmethod]
    #[pyo3(signature = (kind, flow_json, target, dim, contexts, options, hook))]
    #[allow(clippy::too_many_arguments)]
    fn fit_vi(
        py: Python<'_>,
        kind: &str,
        flow_json: &str,
        target: &Bound<'_, PyAny>,
        dim: Option<usize>,
        contexts: Option<PyReadonlyArray2<'_, f64>>,
        options: &Bound<'_, PyDict>,
        hook: Option<Py<PyAny>>,
    ) -> PyResult<(Model, String, Option<Py<PyAny>>)> {
        let stop = Arc::new(AtomicBool::new(false));
        let cfg = vi_config(options, stop.clone())?;
        let error_slot: Arc<Mutex<Option<PyErr>>> = Arc::new(Mutex::new(None));
        let (target, name): (Box<dyn Target<f32>>, String) = match target.extract::<String>() {
            Ok(name) => (
                nflow::train::targets::by_name::<f32>(&name).map_err(py_err)?,
                name,
            ),
            Err(_) => {
                let dim = dim.ok_or_else(|| {
                    config_err("a target given as a function needs dim (its number of dimensions)")
                })?;
                let label = target
                    .getattr("__name__")
                    .and_then(|n| n.extract::<String>())
                    .unwrap_or_else(|_| "python-function".into());
                let t = PyTarget {
                    f: target.clone().unbind(),
                    dim,
                    error: error_slot.clone(),
                    stop: stop.clone(),
                };
                (Box::new(t), label)
            }
        };
        if let Some(d) = dim {
            if d != target.dim() {
                return Err(config_err(format!(
                    "dim = {d}, but the target {name} has {} dimensions",
                    target.dim()
                )));
            }
        }
        let ctx = contexts.map(|c| {
            let v = c.as_array();
            let (r, k) = v.dim();
            Mat::<f32>::from_vec(r, k, v.iter().map(|&x| x as f32).collect())
        });
        let context_dim = ctx.as_ref().map_or(0, |c| c.cols);
        let def = flow_def(kind, flow_json, target.dim(), context_dim, cfg.seed)?;
        let t = target.as_ref();
        let (result, raised) = drive(py, hook.as_ref(), &stop, |send| {
            let mut last = Instant::now();
            cfg.fit_amortised(def, t, &name, ctx.as_ref(), |p: &ViProgress| {
                let now = Instant::now();
                if p.elbo.is_some() || p.step == p.total || now - last >= REPORT_EVERY {
                    last = now;
                    send(Report {
                        step: p.step,
                        total: p.total,
                        loss: p.loss,
                        eval: p.elbo,
                        ack: None,
                    });
                }
            })
        })?;
        // an exception in the target function comes first: it is why training stopped
        let target_error = error_slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        let fitted = match (result, target_error) {
            (_, Some(e)) => return Err(e),
            (r, None) => r.map_err(py_err)?,
        };
        if let Some(e) = fitted.diverged {
            let s = fitted.model.summary.clone().unwrap_or_default();
            return Err(PyRuntimeError::new_err(format!(
                "{e} (the best weights were from step {})",
                s.best_step
            )));
        }
        let diag = diagnostics_json(&fitted.diagnostics, target.log_z());
        Ok((
            Model::new(fitted.model),
            diag,
            raised.map(|e| e.into_value(py).into_any()),
        ))
    }

    /// Load a model folder (as `nflow train` writes it).
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<Model> {
        let m = compute(py, || nflow::Model::load(&path))?.map_err(py_err)?;
        Ok(Model::new(m))
    }

    /// The model in the bytes of `to_bytes`.
    #[staticmethod]
    fn from_bytes(py: Python<'_>, data: &[u8]) -> PyResult<Model> {
        let data = data.to_vec();
        let m = compute(py, || nflow::Model::from_bytes(&data))?.map_err(py_err)?;
        Ok(Model::new(m))
    }

    /// Write the model folder (atomically: an interrupted save leaves any previous model in place).
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        compute(py, || self.read().save(&path))?.map_err(py_err)
    }

    /// The whole model as bytes (config, weights, log): what pickling uses.
    fn to_bytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let b = compute(py, || self.read().to_bytes())?;
        Ok(PyBytes::new(py, &b))
    }

    /// `log p(x)` of every row, nats, in the data's own units.
    #[pyo3(signature = (x, context=None))]
    fn log_prob<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArray2<'py, f64>,
        context: Option<PyReadonlyArray2<'py, f64>>,
    ) -> PyResult<Bound<'py, PyArray1<f64>>> {
        let m = self.read();
        let t = table(&x, m.columns.clone(), "X")?;
        let c = match &context {
            Some(c) => Some(table_ctx(c, m.context_columns.clone(), "context")?),
            None => None,
        };
        let lp = compute(py, || m.log_prob_ctx(&t, c.as_ref()))?.map_err(py_err)?;
        Ok(PyArray1::from_vec(py, lp))
    }

    /// Each log-density's percentile (0-100) among the held-out rows kept with the model at training time
    /// (`nflow score`); an error for a model that keeps none.
    fn percentiles<'py>(
        &self,
        py: Python<'py>,
        log_probs: PyReadonlyArray1<'py, f64>,
    ) -> PyResult<Bound<'py, PyArray1<f64>>> {
        let p = nflow::train::scores::percentiles(self.read(), log_probs.as_slice()?)
            .map_err(py_err)?;
        Ok(PyArray1::from_vec(py, p))
    }

    /// `n` samples (a conditional model: one per context row), float64, in the data's units.
    #[pyo3(signature = (n, seed=0, context=None, temperature=1.0))]
    fn sample<'py>(
        &self,
        py: Python<'py>,
        n: usize,
        seed: u64,
        context: Option<PyReadonlyArray2<'py, f64>>,
        temperature: f64,
    ) -> PyResult<Bound<'py, PyArray2<f64>>> {
        let m = self.read();
        let c = match &context {
            Some(c) => Some(table_ctx(c, m.context_columns.clone(), "context")?),
            None => None,
        };
        let t = compute(py, || {
            m.sample_with_temperature(n, seed, c.as_ref(), temperature)
        })?
        .map_err(py_err)?;
        Ok(array2(py, t.rows, t.cols, t.data))
    }

    /// `(log p(x), d log p(x) / dx)` of every row, in the data's units.
    #[pyo3(signature = (x, context=None))]
    fn grad_log_prob<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArray2<'py, f64>,
        context: Option<PyReadonlyArray2<'py, f64>>,
    ) -> PyResult<Scored<'py>> {
        let (cols, ccols) = {
            let m = self.read();
            (m.columns.clone(), m.context_columns.clone())
        };
        let t = table(&x, cols, "X")?;
        let c = match &context {
            Some(c) => Some(table_ctx(c, ccols, "context")?),
            None => None,
        };
        let (lp, g) = compute(py, || -> PyResult<_> {
            let mut m = self.scratch()?;
            let r = m.grad_log_prob(&t, c.as_ref());
            self.keep_scratch(m);
            r.map_err(py_err)
        })??;
        Ok((PyArray1::from_vec(py, lp), array2(py, t.rows, t.cols, g)))
    }

    /// The noise `z = f(x)` of every row (the base distribution's space).
    #[pyo3(signature = (x, context=None))]
    fn transform_to_noise<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArray2<'py, f64>,
        context: Option<PyReadonlyArray2<'py, f64>>,
    ) -> PyResult<Bound<'py, PyArray2<f64>>> {
        let m = self.read();
        let t = table(&x, m.columns.clone(), "X")?;
        let c = match &context {
            Some(c) => Some(table_ctx(c, m.context_columns.clone(), "context")?),
            None => None,
        };
        let z = compute(py, || m.to_noise(&t, c.as_ref()))?.map_err(py_err)?;
        Ok(array2(py, t.rows, t.cols, z))
    }

    #[getter]
    fn dim(&self) -> usize {
        self.read().dim()
    }
    #[getter]
    fn columns(&self) -> Vec<String> {
        self.read().columns.clone()
    }
    #[getter]
    fn context_columns(&self) -> Vec<String> {
        self.read().context_columns.clone()
    }
    /// The architecture as JSON (a layer list, as `config.json` stores it under "flow").
    #[getter]
    fn architecture(&self) -> String {
        serde_json::to_string(&self.read().arch).expect("architecture serialises")
    }
    /// The preset's options as JSON, or None for a composed flow.
    #[getter]
    fn preset(&self) -> Option<String> {
        self.read()
            .preset
            .as_ref()
            .map(|p| serde_json::to_string(p).expect("preset serialises"))
    }
    /// The training summary as JSON (None for a model loaded without one).
    #[getter]
    fn summary(&self) -> Option<String> {
        self.read()
            .summary
            .as_ref()
            .map(|s| serde_json::to_string(s).expect("summary serialises"))
    }
    /// The training log: one JSON object per evaluation.
    #[getter]
    fn log(&self) -> Vec<String> {
        self.read().log.clone()
    }
    #[getter]
    fn num_params(&self) -> usize {
        self.read().flow.num_params()
    }
    /// One line per layer.
    fn describe(&self) -> Vec<String> {
        self.read().flow.describe()
    }
}

/// `(log p(x), d log p / dx)` as numpy arrays.
type Scored<'py> = (Bound<'py, PyArray1<f64>>, Bound<'py, PyArray2<f64>>);

fn table_ctx(c: &PyReadonlyArray2<'_, f64>, columns: Vec<String>, source: &str) -> PyResult<Table> {
    let cols = c.as_array().dim().1;
    let columns = if columns.len() == cols {
        columns
    } else {
        (0..cols).map(|j| format!("c{j}")).collect()
    };
    table(c, columns, source)
}

// ---------------------------------------------------------------------------------------------------------
// Reverse KL (variational inference) against a target given by name or as a Python function

/// A target density from Python: `f(x) -> (log p~(x), d log p~ / dx)` as float64 arrays `(n,)`, `(n, dim)`
/// (`f(x, c)` for an amortised target; the Python layer checks shapes and dtypes). The first exception it
/// raises is kept and stops training; the trainer then sees NaN and stops at once.
struct PyTarget {
    f: Py<PyAny>,
    dim: usize,
    error: Arc<Mutex<Option<PyErr>>>,
    stop: Arc<AtomicBool>,
}

impl PyTarget {
    fn call(&self, x: &Mat<f32>, ctx: Option<&Mat<f32>>) -> PyResult<(Vec<f32>, Mat<f32>)> {
        Python::attach(|py| {
            let xa = array2(py, x.rows, x.cols, x.to_f64());
            let out = match ctx {
                Some(c) => self
                    .f
                    .call1(py, (xa, array2(py, c.rows, c.cols, c.to_f64())))?,
                None => self.f.call1(py, (xa,))?,
            };
            let (lp, g): (PyReadonlyArray1<'_, f64>, PyReadonlyArray2<'_, f64>) =
                out.extract(py)?;
            let (lp, g) = (lp.as_array(), g.as_array());
            if lp.len() != x.rows || g.dim() != (x.rows, x.cols) {
                return Err(config_err(format!(
                    "the target returned log p of {} rows and a gradient of {:?} for {} rows of {} columns",
                    lp.len(),
                    g.dim(),
                    x.rows,
                    x.cols
                )));
            }
            let lp: Vec<f32> = lp.iter().map(|&v| v as f32).collect();
            let g: Vec<f32> = g.iter().map(|&v| v as f32).collect();
            Ok((lp, Mat::from_vec(x.rows, x.cols, g)))
        })
    }
}

impl Target<f32> for PyTarget {
    fn dim(&self) -> usize {
        self.dim
    }
    fn log_prob_and_grad(&self, x: &Mat<f32>, ctx: Option<&Mat<f32>>) -> (Vec<f32>, Mat<f32>) {
        let failed = || (vec![f32::NAN; x.rows], Mat::zeros(x.rows, x.cols));
        let mut err = self.error.lock().unwrap_or_else(|e| e.into_inner());
        if err.is_some() {
            return failed();
        }
        match self.call(x, ctx) {
            Ok(v) => v,
            Err(e) => {
                *err = Some(e);
                self.stop.store(true, Ordering::Relaxed);
                failed()
            }
        }
    }
}

fn vi_config(o: &Bound<'_, PyDict>, stop: Arc<AtomicBool>) -> PyResult<ViConfig> {
    let d = ViConfig::default();
    let schedule: String = opt!(o, "schedule")?.unwrap_or_else(|| "constant".into());
    let warmup: usize = opt!(o, "warmup")?.unwrap_or(0);
    let cfg = ViConfig {
        steps: opt!(o, "steps")?.unwrap_or(d.steps),
        batch_size: opt!(o, "batch_size")?.unwrap_or(d.batch_size),
        optim: OptimConfig {
            lr: opt!(o, "lr")?.unwrap_or(d.optim.lr),
            ..OptimConfig::default()
        },
        schedule: Schedule::parse(&schedule, warmup).ok_or_else(|| {
            config_err(format!(
                "unknown schedule '{schedule}' (known: constant, warmup, cosine)"
            ))
        })?,
        clip: opt!(o, "clip")?,
        eval_every: opt!(o, "eval_every")?,
        eval_samples: opt!(o, "eval_samples")?.unwrap_or(d.eval_samples),
        seed: opt!(o, "seed")?.unwrap_or(0),
        stop: StopFlag::new(stop),
        checkpoint: None,
    };
    cfg.validate().map_err(py_err)?;
    Ok(cfg)
}

fn diagnostics_json(d: &Diagnostics, log_z: Option<f64>) -> String {
    let mut o = serde_json::to_value(d).expect("diagnostics serialise");
    o["true_log_z"] = serde_json::json!(log_z);
    o["kl"] = serde_json::json!(log_z.map(|z| z - d.elbo));
    o.to_string()
}

/// The diagnostics (ELBO ± SE, importance-sampling log Z ± SE, ESS) of log-weights `log_target - log_q`.
#[pyfunction]
fn diagnostics(log_target: Vec<f64>, log_q: Vec<f64>) -> PyResult<String> {
    if log_target.len() != log_q.len() || log_q.len() < 2 {
        return Err(config_err(format!(
            "diagnostics need one log q per log p~ and at least 2 samples (got {} and {})",
            log_target.len(),
            log_q.len()
        )));
    }
    Ok(diagnostics_json(
        &nflow::train::diagnostics::diagnostics(&log_target, &log_q),
        None,
    ))
}

/// A built-in target's `(log p~(x), d log p~ / dx)` in float64, and its `log Z` where known.
#[pyfunction]
fn target_log_prob<'py>(
    py: Python<'py>,
    name: &str,
    x: PyReadonlyArray2<'py, f64>,
) -> PyResult<(Scored<'py>, Option<f64>)> {
    let t = nflow::train::targets::by_name::<f64>(name).map_err(py_err)?;
    let v = x.as_array();
    let (rows, cols) = v.dim();
    if cols != t.dim() {
        return Err(config_err(format!(
            "target {name} has {} dimensions, x has {cols} columns",
            t.dim()
        )));
    }
    let m = Mat::from_vec(rows, cols, v.iter().copied().collect());
    let (lp, g) = compute(py, || t.log_prob_and_grad(&m, None))?;
    Ok((
        (PyArray1::from_vec(py, lp), array2(py, rows, cols, g.data)),
        t.log_z(),
    ))
}

/// A built-in target's dimensions and its `log Z` where known.
#[pyfunction]
fn target_info(name: &str) -> PyResult<(usize, Option<f64>)> {
    let t = nflow::train::targets::by_name::<f64>(name).map_err(py_err)?;
    Ok((t.dim(), t.log_z()))
}

#[pymodule]
fn _nflow(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Model>()?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(architecture, m)?)?;
    m.add_function(wrap_pyfunction!(presets, m)?)?;
    m.add_function(wrap_pyfunction!(diagnostics, m)?)?;
    m.add_function(wrap_pyfunction!(target_log_prob, m)?)?;
    m.add_function(wrap_pyfunction!(target_info, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
