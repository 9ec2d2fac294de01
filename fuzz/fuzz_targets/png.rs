//! Any bytes given as the one PNG of an image folder (`--data DIR`) give a table or an error, never a panic,
//! an abort or a hang.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    common::with_folder(data, "a.png", |d| {
        let _ = nflow::data::load_png_folder(d);
    });
});
