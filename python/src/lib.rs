//! `nflow._nflow`: the Python binding, a thin shell over the library (the pure-Python layer in
//! `python/nflow/` gives it its API). Arrays cross as contiguous float64 numpy arrays (the Python layer
//! converts); every library error becomes a Python exception of the usual type carrying the Rust message;
//! the GIL is released while Rust computes, and all work runs on this module's own thread pool
//! (`set_num_threads`).

use nflow::data::Table;
use nflow::flows::{FlowConfig, FlowDef, FlowKind, FlowSpec};
use nflow::optim::{OptimConfig, OptimKind, Schedule};
use nflow::train::{Progress, TrainConfig, Trainer};
use nflow::Error;
use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray1, PyArray2, PyReadonlyArray2};
use pyo3::exceptions::{
    PyFileNotFoundError, PyFloatingPointError, PyOSError, PyRuntimeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
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
// The thread pool

static POOL: RwLock<Option<Arc<rayon::ThreadPool>>> = RwLock::new(None);

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn pool() -> PyResult<Arc<rayon::ThreadPool>> {
    if let Some(p) = POOL.read().ok().and_then(|p| p.clone()) {
        return Ok(p);
    }
    set_pool(cores())
}

fn set_pool(n: usize) -> PyResult<Arc<rayon::ThreadPool>> {
    let p = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .thread_name(|i| format!("nflow-{i}"))
            .build()
            .map_err(|e| PyRuntimeError::new_err(format!("cannot start the thread pool: {e}")))?,
    );
    if let Ok(mut g) = POOL.write() {
        *g = Some(p.clone());
    }
    Ok(p)
}

/// Run `f` on the pool with the GIL released.
fn compute<R: Send>(py: Python<'_>, f: impl FnOnce() -> R + Send) -> PyResult<R> {
    let p = pool()?;
    Ok(py.detach(|| p.install(f)))
}

/// Use `n` threads for training, scoring and sampling from now on (default: all cores). At most 4 x the
/// cores: more only wait on each other.
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
    set_pool(n).map(|_| ())
}

/// Threads used for training, scoring and sampling.
#[pyfunction]
fn get_num_threads() -> PyResult<usize> {
    Ok(pool()?.current_num_threads())
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
    let kind: FlowKind = name.parse().map_err(|e: Error| config_err(e.to_string()))?;
    let mut base = serde_json::to_value(FlowSpec::preset(kind, dim)).expect("a preset serialises");
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
    let arch = match kind {
        "preset" => preset_spec(json, dim, context_dim, seed)?
            .architecture()
            .map_err(py_err)?,
        _ => composed(json, dim, context_dim, seed)?,
    };
    Ok(serde_json::to_string(&arch).expect("architecture serialises"))
}

/// Names of the presets.
#[pyfunction]
fn presets() -> Vec<&'static str> {
    vec![
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

fn train_config(o: &Bound<'_, PyDict>) -> PyResult<TrainConfig> {
    let get = |k: &str| -> PyResult<Option<Bound<'_, PyAny>>> {
        o.get_item(k).map(|v| v.filter(|v| !v.is_none()))
    };
    macro_rules! ex {
        ($v:expr, $k:expr) => {
            $v.map(|v| {
                v.extract()
                    .map_err(|e: PyErr| config_err(format!("{}: {e}", $k)))
            })
            .transpose()
        };
    }
    let d = TrainConfig::default();
    let optimizer: String = ex!(get("optimizer")?, "optimizer")?.unwrap_or_else(|| "adam".into());
    let kind = match optimizer.as_str() {
        "adam" => OptimKind::Adam,
        "adamw" => OptimKind::Adamw,
        o => {
            return Err(config_err(format!(
                "unknown optimizer '{o}' (known: adam, adamw)"
            )))
        }
    };
    let schedule: String = ex!(get("schedule")?, "schedule")?.unwrap_or_else(|| "constant".into());
    let warmup: usize = ex!(get("warmup")?, "warmup")?.unwrap_or(0);
    let schedule = Schedule::parse(&schedule, warmup).ok_or_else(|| {
        config_err(format!(
            "unknown schedule '{schedule}' (known: constant, warmup, cosine)"
        ))
    })?;
    let patience: usize = ex!(get("patience")?, "patience")?.unwrap_or(10);
    let cfg = TrainConfig {
        epochs: ex!(get("epochs")?, "epochs")?.unwrap_or(d.epochs),
        steps: ex!(get("steps")?, "steps")?,
        batch_size: ex!(get("batch_size")?, "batch_size")?.unwrap_or(d.batch_size),
        optim: OptimConfig {
            kind,
            lr: ex!(get("lr")?, "lr")?.unwrap_or(d.optim.lr),
            weight_decay: ex!(get("weight_decay")?, "weight_decay")?.unwrap_or(0.0),
            ..OptimConfig::default()
        },
        schedule,
        clip: ex!(get("clip")?, "clip")?,
        val_fraction: ex!(get("validation")?, "validation")?.unwrap_or(d.val_fraction),
        patience: (patience > 0).then_some(patience),
        eval_every: ex!(get("eval_every")?, "eval_every")?,
        max_seconds: ex!(get("max_seconds")?, "max_seconds")?,
        seed: ex!(get("seed")?, "seed")?.unwrap_or(0),
    };
    cfg.validate().map_err(py_err)?;
    Ok(cfg)
}

// ---------------------------------------------------------------------------------------------------------
// The model

/// A trained flow with its columns and data normalisation (a model folder in memory).
#[pyclass(module = "nflow._nflow", frozen)]
struct Model {
    // write access only for the score (its backward pass keeps caches in the layers)
    inner: RwLock<nflow::Model>,
}

impl Model {
    fn new(m: nflow::Model) -> Self {
        Model {
            inner: RwLock::new(m),
        }
    }
    fn read(&self) -> std::sync::RwLockReadGuard<'_, nflow::Model> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// One report from the training thread to the Python thread.
struct Report {
    step: usize,
    total: usize,
    train_nll: f64,
    val_log_prob: Option<f64>,
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
        let cfg = train_config(options)?;
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
        let def: FlowDef = match kind {
            "preset" => preset_spec(flow_json, table.cols, context_dim, cfg.seed)?.into(),
            "composed" => composed(flow_json, table.cols, context_dim, cfg.seed)?.into(),
            k => return Err(config_err(format!("unknown flow definition kind '{k}'"))),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let trainer = Trainer::new(cfg)
            .with_context_classes(classes)
            .with_stop(stop.clone());
        let (tx, rx) = std::sync::mpsc::channel::<Report>();
        let rx = Mutex::new(rx);
        let pool = pool()?;
        let mut raised: Option<PyErr> = None;
        let result = std::thread::scope(|s| {
            let worker = s.spawn(|| {
                let tx = tx;
                let mut last = Instant::now();
                pool.install(|| {
                    nflow::engine::pool::run_warm(|| {
                        trainer.fit(def, &table, ctx.as_ref(), |p: &Progress| {
                            let now = Instant::now();
                            let due = now.duration_since(last) >= Duration::from_millis(100);
                            if p.val_log_prob.is_some() || due || p.step == p.total {
                                last = now;
                                let _ = tx.send(Report {
                                    step: p.step,
                                    total: p.total,
                                    train_nll: p.train_nll,
                                    val_log_prob: p.val_log_prob,
                                });
                            }
                        })
                    })
                })
            });
            // this (the calling) thread waits with the GIL released, runs the hook and watches for Ctrl-C
            loop {
                let got = py.detach(|| {
                    let rx = rx.lock().unwrap_or_else(|e| e.into_inner());
                    rx.recv_timeout(Duration::from_millis(100))
                });
                match got {
                    Ok(r) => {
                        if let Some(h) = &hook {
                            if !stop.load(Ordering::Relaxed) {
                                match h.call1(py, (r.step, r.total, r.train_nll, r.val_log_prob)) {
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
        let fitted = match result {
            Ok(r) => r.map_err(py_err)?,
            Err(_) => {
                return Err(PyRuntimeError::new_err(
                    "nflow: the training thread panicked",
                ))
            }
        };
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

    /// Load a model folder (as `nflow train` writes it).
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<Model> {
        let m = py.detach(|| nflow::Model::load(&path)).map_err(py_err)?;
        Ok(Model::new(m))
    }

    /// The model in the bytes of `to_bytes`.
    #[staticmethod]
    fn from_bytes(py: Python<'_>, data: &[u8]) -> PyResult<Model> {
        let data = data.to_vec();
        let m = py
            .detach(|| nflow::Model::from_bytes(&data))
            .map_err(py_err)?;
        Ok(Model::new(m))
    }

    /// Write the model folder (atomically: an interrupted save leaves any previous model in place).
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        py.detach(|| self.read().save(&path)).map_err(py_err)
    }

    /// The whole model as bytes (config, weights, log): what pickling uses.
    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let b = py.detach(|| self.read().to_bytes());
        PyBytes::new(py, &b)
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
        let (lp, g) = compute(py, || {
            let mut m = self.inner.write().unwrap_or_else(|e| e.into_inner());
            m.grad_log_prob(&t, c.as_ref())
        })?
        .map_err(py_err)?;
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

#[pymodule]
fn _nflow(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Model>()?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(architecture, m)?)?;
    m.add_function(wrap_pyfunction!(presets, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
