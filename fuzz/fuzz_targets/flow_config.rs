//! Any text given as an architecture (`config.json`'s "flow", `train --arch`) gives a flow or an error: no
//! panic, and no allocation beyond what the size checks allow.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(cfg) = serde_json::from_str::<nflow::flows::FlowConfig>(text) else { return };
    // keep each run small: the size check refuses what cannot fit, the fuzzer's memory limit is lower still
    if cfg.approx_params().0 > 5_000_000 || cfg.dim > 4096 {
        return;
    }
    if let Ok(flow) = cfg.build::<f32>() {
        let x = nflow::Mat::zeros(2, cfg.dim);
        let c = (cfg.context_dim > 0).then(|| nflow::Mat::zeros(2, cfg.context_dim));
        let _ = flow.log_prob(&x, c.as_ref());
    }
});
