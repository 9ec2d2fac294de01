//! Flow definitions from the Python layer's JSON: a preset's name and options, or a hand-composed layer
//! list, as the library's flow definition for data of a given size; and the module functions
//! `architecture` (what a definition resolves to) and `presets` (the presets' names).

use crate::errors::{config_err, py_err};
use nflow::flows::{FlowConfig, FlowDef, FlowSpec};
use nflow::Error;
use pyo3::prelude::*;

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
pub(crate) fn flow_def(
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
pub(crate) fn architecture(
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
pub(crate) fn presets() -> Vec<&'static str> {
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
