//! Any bytes given as a model (`Model::from_bytes`: what unpickling and worker processes read) give a model
//! or an error; a model that loads evaluates a row without a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = nflow::Model::from_bytes(data) {
        let t = nflow::data::Table::new(m.columns.clone(), 1, vec![0.5; m.columns.len()], "fuzz");
        let _ = m.log_prob_table(&t);
    }
});
