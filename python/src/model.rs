//! The `Model` class: a trained flow, immutable (no lock; the score `grad_log_prob`, whose backward pass keeps
//! caches in the layers, runs on a cached copy). Training (`fit`, `fit_vi`, driven by `runtime::drive`),
//! loading and saving, and the scoring methods (`log_prob`, `sample`, `grad_log_prob`, `transform_to_noise`),
//! which all take their rows through one helper, `Model::score`.

use crate::convert::{array2, table, table_ctx, Scored};
use crate::errors::{config_err, py_err};
use crate::flows::flow_def;
use crate::options::{opt, train_config, vi_config};
use crate::runtime::{compute, drive, Report, REPORT_EVERY};
use crate::vi::{diagnostics_json, PyTarget};
use nflow::data::{ColumnSupport, Preprocess, Table};
use nflow::train::{Progress, Target, Trainer, ViProgress};
use nflow::Mat;
use numpy::{PyArray1, PyArray2, PyReadonlyArray1, PyReadonlyArray2};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A trained flow with its columns and data normalisation (a model folder in memory). Immutable: any number
/// of threads use it at once (a fit makes a new one), with no lock to wait for or to leave held at a fork.
#[pyclass(module = "nflow._nflow", frozen)]
pub(crate) struct Model {
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
    fn scratch(&self) -> nflow::Result<nflow::Model> {
        if let Some(m) = self.scratch.try_lock().ok().and_then(|mut s| s.pop()) {
            return Ok(m);
        }
        let m = &self.inner;
        let mut flow: nflow::flows::Flow<f32> = m.arch.build()?;
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

    /// Give a score copy back for the next score (kept only while fewer than `MAX_SCRATCH` are).
    fn keep_scratch(&self, m: nflow::Model) {
        if let Ok(mut s) = self.scratch.try_lock() {
            if s.len() < MAX_SCRATCH {
                s.push(m);
            }
        }
    }

    /// The one path of every scoring method: the rows `x` (if the method takes any; source "X", columns
    /// named as the model's) and the `context` rows (source "context", named as the model's context columns)
    /// as tables, then `f(model, rows)` on a pool of its own with the GIL released, a library error raised as
    /// its Python exception (`py_err`).
    fn score<R: Send>(
        &self,
        py: Python<'_>,
        x: Option<&PyReadonlyArray2<'_, f64>>,
        context: Option<&PyReadonlyArray2<'_, f64>>,
        f: impl FnOnce(&nflow::Model, &Rows) -> nflow::Result<R> + Send,
    ) -> PyResult<R> {
        let m = self.read();
        let rows = Rows {
            x: x.map(|x| table(x, m.columns.clone(), "X")).transpose()?,
            context: context
                .map(|c| table_ctx(c, m.context_columns.clone(), "context"))
                .transpose()?,
        };
        compute(py, || f(m, &rows))?.map_err(py_err)
    }
}

/// The rows of a scoring call as the library takes them (see `Model::score`).
struct Rows {
    x: Option<Table>,
    context: Option<Table>,
}

impl Rows {
    /// The rows to score (a method that takes rows passes them to `Model::score`).
    fn x(&self) -> &Table {
        self.x
            .as_ref()
            .expect("a scoring method that takes rows gives them")
    }
    /// The context rows, if the call gave any.
    fn context(&self) -> Option<&Table> {
        self.context.as_ref()
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
        let lp = self.score(py, Some(&x), context.as_ref(), |m, r| {
            m.log_prob_ctx(r.x(), r.context())
        })?;
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
        let t = self.score(py, None, context.as_ref(), |m, r| {
            m.sample_with_temperature(n, seed, r.context(), temperature)
        })?;
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
        let (rows, cols) = x.as_array().dim();
        let (lp, g) = self.score(py, Some(&x), context.as_ref(), |_, r| {
            let mut m = self.scratch()?;
            let out = m.grad_log_prob(r.x(), r.context());
            self.keep_scratch(m);
            out
        })?;
        Ok((PyArray1::from_vec(py, lp), array2(py, rows, cols, g)))
    }

    /// The noise `z = f(x)` of every row (the base distribution's space).
    #[pyo3(signature = (x, context=None))]
    fn transform_to_noise<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArray2<'py, f64>,
        context: Option<PyReadonlyArray2<'py, f64>>,
    ) -> PyResult<Bound<'py, PyArray2<f64>>> {
        let (rows, cols) = x.as_array().dim();
        let z = self.score(py, Some(&x), context.as_ref(), |m, r| {
            m.to_noise(r.x(), r.context())
        })?;
        Ok(array2(py, rows, cols, z))
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
