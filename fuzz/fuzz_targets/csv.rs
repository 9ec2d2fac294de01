//! Any bytes given to the csv reader give a table or an error, never a panic, an abort or a hang.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    common::with_file(data, "csv", |p| {
        let _ = nflow::data::read_csv(p);
    });
});
