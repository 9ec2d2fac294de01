//! Error mapping: a library error as the Python exception a Python user expects, and the ValueError of a bad
//! argument or option.

use nflow::Error;
use pyo3::exceptions::{
    PyFileNotFoundError, PyFloatingPointError, PyOSError, PyRuntimeError, PyValueError,
};
use pyo3::PyErr;

/// A library error as the Python exception a Python user expects.
pub(crate) fn py_err(e: Error) -> PyErr {
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

/// A bad argument or option: a ValueError with this message.
pub(crate) fn config_err(msg: impl Into<String>) -> PyErr {
    PyValueError::new_err(msg.into())
}
