//! `nflow info`: a saved model's architecture, size and training summary.

use super::*;

#[derive(Args, Debug)]
pub(super) struct InfoArgs {
    #[arg(long)]
    model: PathBuf,
}

pub(super) fn info(a: InfoArgs) -> Result<()> {
    let m = Model::load(&a.model)?;
    print!("{}", card(&a.model, &m));
    Ok(())
}

/// What `info` prints: the model card (also the report's).
pub(super) fn card(dir: &Path, m: &Model) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    // writing to a String cannot fail
    macro_rules! println {
        ($($t:tt)*) => {{
            let _ = writeln!(out, $($t)*);
        }};
    }
    println!("model folder   {}", dir.display());
    let name = m
        .preset
        .as_ref()
        .map_or("composed".to_string(), |p| p.kind.to_string());
    println!(
        "flow           {name} ({} features: {})",
        m.dim(),
        m.columns.join(", ")
    );
    if let Some(p) = &m.preset {
        println!(
            "architecture   {} layers, conditioner {}x{} {:?}, mask {:?}, scale {:?}, batch norm {}, actnorm {}",
            p.layers, p.depth, p.hidden, p.activation, p.mask, p.scale, p.batch_norm, p.actnorm
        );
        println!(
            "map            {}, between layers {:?}",
            p.element_map().name(),
            p.permute
        );
        if p.residual {
            println!("conditioners   ResMADE ({} residual blocks)", p.depth);
        }
    }
    println!("base           {}", base_text(&m.arch.base));
    if !m.context_columns.is_empty() {
        println!("context        {}", m.context_columns.join(", "));
    }
    if let Some(p) = &m.preprocess {
        if p.columns.is_empty() {
            println!(
                "preprocessing  dequantize {}, logit {}, levels {}",
                p.dequantize,
                p.logit.map_or("none".into(), |l| l.to_string()),
                p.levels
            );
        }
        for c in &p.columns {
            println!("support        {}: {}", c.column, c.describe());
        }
    }
    println!("parameters     {}", m.flow.num_params());
    for l in m.flow.describe() {
        println!("  {l}");
    }
    if let Some(s) = &m.summary {
        println!(
            "training       {} ({} train / {} validation rows), {} steps in {:.1}s, best step {}{}",
            s.data,
            s.n_train,
            s.n_val,
            s.steps,
            s.seconds,
            s.best_step,
            match (s.stopped_early, s.lr_decays) {
                (true, 0) => ", stopped early".to_string(),
                (true, k) => format!(", stopped at a plateau after {k} learning-rate halvings"),
                (false, 0) => String::new(),
                (false, k) => format!(", {k} learning-rate halvings"),
            }
        );
        if let Some(v) = s.best_val_log_prob {
            let w = if s.weighted { "weighted " } else { "" };
            println!("validation     {w}mean log-likelihood {v:.4} nats");
        }
        let r = &s.reference_log_probs;
        if let (Some(lo), Some(hi)) = (r.first(), r.last()) {
            let med = nflow::train::scores::summarize(r).median;
            println!(
                "score ranking  {} held-out log-densities kept for `nflow score` (from {lo:.3} to {hi:.3}, \
                 median {med:.3})",
                r.len()
            );
        }
    }
    out
}

fn base_text(b: &nflow::flows::BaseConfig) -> String {
    use nflow::flows::BaseConfig;
    match b {
        BaseConfig::Mixture { components, .. } | BaseConfig::MadeMog { components, .. } => {
            format!("{:?} ({components} components)", b.kind())
        }
        _ => format!("{:?}", b.kind()),
    }
}
