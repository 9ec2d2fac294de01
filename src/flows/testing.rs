//! Test helpers for whole flows (the transforms' generic checks are in `transforms::testing`).

use super::Flow;
use crate::engine::Mat;

/// Central difference of a whole flow's training loss (`nll_backward`) with respect to entry `k` of the parameter
/// named `name`, step `h`; the flow's parameters are restored afterwards.
pub fn flow_param_fd(
    flow: &mut Flow<f64>,
    x: &Mat<f64>,
    ctx: Option<&Mat<f64>>,
    name: &str,
    k: usize,
    h: f64,
) -> f64 {
    let shift = |flow: &mut Flow<f64>, d: f64| {
        for (n, p) in flow.named_params_mut() {
            if n == name {
                p.value_mut()[k] += d;
            }
        }
    };
    shift(flow, h);
    let lp = flow.nll_backward(x, ctx).expect("finite loss");
    shift(flow, -2.0 * h);
    let lm = flow.nll_backward(x, ctx).expect("finite loss");
    shift(flow, h);
    (lp - lm) / (2.0 * h)
}
