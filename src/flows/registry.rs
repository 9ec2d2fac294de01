//! Layer types defined outside the crate. A type that implements [`CustomLayer`] and is registered with
//! [`register_layer`] can appear in a flow's layer list (in Rust through [`Layer::custom`], in JSON by its
//! [`CustomLayer::TYPE`] name); such a flow trains, saves and loads like any other. Register before loading
//! a model that uses it: an unregistered type is an error naming it.
//!
//! ```
//! use nflow::engine::{Float, Rng};
//! use nflow::flows::{register_layer, BuildCtx, CustomLayer};
//! use nflow::transforms::{Scaling, Transform};
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct MyScale {}
//! impl CustomLayer for MyScale {
//!     const TYPE: &'static str = "my-scale";
//!     fn build<F: Float>(&self, c: &BuildCtx, _r: &mut Rng) -> nflow::Result<Box<dyn Transform<F>>> {
//!         Ok(Box::new(Scaling::new(c.dim)))
//!     }
//! }
//! register_layer::<MyScale>();
//! ```

use super::layers::{BuildCtx, Layer};
use crate::engine::{Float, Rng};
use crate::transforms::Transform;
use crate::Error;
use serde::{de::DeserializeOwned, Serialize};
use std::any::Any;
use std::collections::BTreeMap;
use std::sync::{OnceLock, RwLock};

/// A layer type of one's own: its options (serialised with the flow) and how they build the transform.
pub trait CustomLayer: Serialize + DeserializeOwned + 'static {
    /// The `"type"` name in configs; must not be one of the built-in names.
    const TYPE: &'static str;
    /// Build the transform with fresh weights, drawing anything random from `r`.
    fn build<F: Float>(&self, c: &BuildCtx, r: &mut Rng) -> crate::Result<Box<dyn Transform<F>>>;
}

type BuildFn<F> =
    fn(&serde_json::Value, &BuildCtx, &mut Rng) -> crate::Result<Box<dyn Transform<F>>>;

/// The type's builders for `f32` and `f64` flows, each a [`BuildFn`] behind `Any`.
struct Entry {
    builders: [Box<dyn Any + Send + Sync>; 2],
}

fn table() -> &'static RwLock<BTreeMap<String, Entry>> {
    static T: OnceLock<RwLock<BTreeMap<String, Entry>>> = OnceLock::new();
    T.get_or_init(|| RwLock::new(BTreeMap::new()))
}

fn build_as<L: CustomLayer, F: Float>(
    v: &serde_json::Value,
    c: &BuildCtx,
    r: &mut Rng,
) -> crate::Result<Box<dyn Transform<F>>> {
    let l: L = serde_json::from_value(v.clone())
        .map_err(|e| Error::Config(format!("layer type '{}': {e}", L::TYPE)))?;
    l.build::<F>(c, r)
}

/// Make `L` known by its [`CustomLayer::TYPE`] name (again: no change). Panics if the name is a built-in
/// layer's: a programming error, found the first time the program runs.
pub fn register_layer<L: CustomLayer>() {
    assert!(
        !super::layers::BUILT_IN.contains(&L::TYPE),
        "'{}' is a built-in layer type",
        L::TYPE
    );
    let e = Entry {
        builders: [
            Box::new(build_as::<L, f32> as BuildFn<f32>),
            Box::new(build_as::<L, f64> as BuildFn<f64>),
        ],
    };
    table()
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(L::TYPE.to_string(), e);
}

pub fn is_registered(name: &str) -> bool {
    table()
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .contains_key(name)
}

/// Names of the registered types.
pub fn names() -> Vec<String> {
    table()
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .keys()
        .cloned()
        .collect()
}

pub(super) fn build<F: Float>(
    name: &str,
    options: &serde_json::Value,
    c: &BuildCtx,
    r: &mut Rng,
) -> crate::Result<Box<dyn Transform<F>>> {
    // the builder is copied out so the table is not locked while it runs (it may register types itself)
    let f: BuildFn<F> = {
        let t = table().read().unwrap_or_else(|e| e.into_inner());
        let e = t.get(name).ok_or_else(|| {
            Error::Config(format!(
                "unknown layer type '{name}' (not registered: call register_layer first)"
            ))
        })?;
        *e.builders
            .iter()
            .find_map(|b| b.downcast_ref::<BuildFn<F>>())
            .ok_or_else(|| Error::Config(format!("layer type '{name}': no {} build", F::DTYPE)))?
    };
    f(options, c, r)
}

impl Layer {
    /// A layer of a registered type (registers it if need be).
    pub fn custom<L: CustomLayer>(l: &L) -> Layer {
        if !is_registered(L::TYPE) {
            register_layer::<L>();
        }
        Layer::Custom(super::layers::CustomLayerConfig {
            kind: L::TYPE.to_string(),
            options: serde_json::to_value(l).expect("custom layer options serialise"),
        })
    }
}
