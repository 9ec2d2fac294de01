//! nflow: normalizing flows in Rust, for exact density estimation and sampling.
//!
//! A flow maps data `x` to noise `z = f(x)` through an invertible map; the change-of-variables formula
//! gives the exact density `log p(x) = log p_Z(f(x)) + log|det df/dx|`. Training maximises it.
//!
//! Layers (each depends only on the ones below it):
//! [`engine`] (tensors, kernels, RNG) < [`nn`] (conditioner networks) / [`dist`] (base distributions) <
//! [`transforms`] < [`flows`] < [`data`], [`io`] (files, model folders) < [`train`] < the `nflow` CLI.
//!
//! ```no_run
//! use nflow::{data, flows::{FlowKind, FlowSpec}, train::{TrainConfig, Trainer}};
//! let table = data::toy("moons", 20_000, 0).unwrap();
//! let spec = FlowSpec::preset(FlowKind::Realnvp, 2);
//! let cfg = TrainConfig { steps: Some(2000), ..TrainConfig::default() };
//! let model = Trainer::new(cfg).fit(spec, &table, None, |_| {}).unwrap().model;
//! let test = data::toy("moons", 5_000, 1).unwrap();
//! let lp = model.log_prob_table(&test).unwrap();        // nats, in the data's own units
//! let samples = model.sample(1000, 7, None).unwrap();   // a Table of 1000 draws
//! model.save(std::path::Path::new("moons-model")).unwrap();
//! # let _ = (lp, samples);
//! ```

// Numeric kernels index several parallel buffers by the same loop variable on purpose.
#![allow(clippy::needless_range_loop)]

pub mod data;
pub mod dist;
pub mod engine;
pub mod flows;
pub mod io;
pub mod nn;
pub mod optim;
pub mod plot;
pub mod train;
pub mod transforms;

pub use engine::{Float, Mat};
pub use flows::{Flow, FlowKind, FlowSpec};
pub use io::Model;

/// Errors of the library. Messages name the file, line, column, field or layer concerned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Data(#[from] data::DataError),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("shape mismatch: {0}")]
    Shape(String),
    #[error("non-finite value (NaN/Inf) in {layer}")]
    NonFinite { layer: String },
    #[error("training diverged at step {step}: non-finite value (NaN/Inf) in {layer}")]
    Diverged { step: usize, layer: String },
    #[error("model folder {path}: {msg}")]
    Model { path: String, msg: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// A JSON error's message without the contents of the file it was read from: string values it quotes
/// (`invalid type: string "..."`) are left out, and quoted names (an unknown field or variant) kept only
/// while short and name-like. The field, the expectation and the line and column still say what is wrong;
/// a file given by mistake (a link to someone's secrets) is not printed.
pub fn json_error(e: &serde_json::Error) -> String {
    redact_quoted(&e.to_string())
}

fn redact_quoted(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    loop {
        let s = rest.find("string \"");
        let b = rest.find('`');
        match (s, b) {
            (Some(i), _) if b.is_none_or(|b| i < b) => {
                out.push_str(&rest[..i]);
                out.push_str("a string");
                // the Debug-escaped string runs to the first unescaped quote
                let body = &rest[i + "string \"".len()..];
                let mut chars = body.char_indices();
                let mut end = body.len();
                while let Some((k, c)) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' => {
                            end = k + 1;
                            break;
                        }
                        _ => {}
                    }
                }
                rest = &body[end..];
            }
            (_, Some(i)) => {
                let Some(len) = rest[i + 1..].find('`') else {
                    out.push_str(rest);
                    break;
                };
                let name = &rest[i + 1..i + 1 + len];
                out.push_str(&rest[..i]);
                let name_like = name.len() <= 24
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-.+:".contains(c));
                if name_like {
                    out.push('`');
                    out.push_str(name);
                    out.push('`');
                } else {
                    out.push_str("(a value not shown)");
                }
                rest = &rest[i + 1 + len + 1..];
            }
            _ => {
                out.push_str(rest);
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact_quoted;

    #[test]
    fn json_errors_do_not_print_the_files_strings() {
        assert_eq!(
            redact_quoted(
                r#"invalid type: string "SECRET \"x\" key", expected struct FlowConfig at line 1 column 70"#
            ),
            "invalid type: a string, expected struct FlowConfig at line 1 column 70"
        );
        assert_eq!(
            redact_quoted(
                "unknown variant `afine`, expected one of `affine`, `additive` at line 3 column 9"
            ),
            "unknown variant `afine`, expected one of `affine`, `additive` at line 3 column 9"
        );
        assert_eq!(
            redact_quoted("unknown field `sk-proj-9f8a7b6c5d4e3f2a1b0c9d8e`, expected `type`"),
            "unknown field (a value not shown), expected `type`"
        );
        assert_eq!(
            redact_quoted("integer `-3`, unterminated `"),
            "integer `-3`, unterminated `"
        );
    }
}
