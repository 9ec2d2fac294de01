//! `nflow report`: one self-contained HTML page about a model (images inline, no network): the model card,
//! the learning curve, the test log-likelihood, samples against data, and for 2-D models the change of
//! variables layer by layer.

use super::info::card;
use super::plot::{curve_rows, draw_curve, folder_name, plot_model};
use super::sample::context_caption;
use super::*;
use base64::Engine as _;

#[derive(Args, Debug)]
pub(super) struct ReportArgs {
    #[arg(long)]
    model: PathBuf,
    /// Test data (the model's columns): its log-likelihood, and the data drawn beside the samples.
    #[arg(long)]
    data: Option<String>,
    #[command(flatten)]
    sel: DataSel,
    /// Samples drawn for the figures.
    #[arg(long, default_value_t = 2000)]
    samples: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The HTML page to write.
    #[arg(long)]
    out: PathBuf,
}

/// `&`, `<`, `>`, `"` as entities.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A PNG file as an inline image.
fn img(png: &Path, alt: &str) -> Result<String> {
    let bytes = std::fs::read(png).with_context(|| format!("cannot read {}", png.display()))?;
    Ok(format!(
        "<img alt=\"{}\" src=\"data:image/png;base64,{}\">",
        escape(alt),
        base64::engine::general_purpose::STANDARD.encode(bytes)
    ))
}

pub(super) fn report(a: ReportArgs) -> Result<()> {
    if !a.out.to_string_lossy().to_lowercase().ends_with(".html") {
        bail!(
            "{}: the report is an HTML page: give a name ending in .html",
            a.out.display()
        );
    }
    let model = Model::load(&a.model)?;
    let name = folder_name(&a.model);
    let data = match &a.data {
        Some(src) => {
            let full = data::load_source(src, a.sel.toy_n, a.seed.wrapping_add(1))?;
            let c = model.select_context(&full)?;
            let t = model.select_columns(full.select(a.sel.columns.as_deref(), &a.sel.drop)?)?;
            let (t, c) = complete_rows(t, c, &a.sel)?;
            Some((t, c))
        }
        None => None,
    };
    // the figures go to a private folder, then inline
    // (unpredictable name, created exclusively, mode 0700: nothing another user planted is written through)
    let tmp = tempfile::Builder::new()
        .prefix("nflow-report-")
        .tempdir()
        .context("cannot create a temporary folder")?;
    let result = sections(&a, &model, data.as_ref(), tmp.path());
    drop(tmp);
    let sections = result?;
    let mut html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>nflow report: {t}</title>\n\
         <style>body{{font-family:sans-serif;max-width:1300px;margin:2em auto;color:#222;padding:0 1em}}\
         pre{{background:#f4f4f6;padding:1em;overflow-x:auto}}img{{max-width:100%;border:1px solid #ddd}}\
         table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3em .8em;text-align:left}}\
         nav a{{margin-right:1em}}</style></head><body>\n<h1>nflow report: {t}</h1>\n<nav>",
        t = escape(&name)
    );
    for (id, title, _) in &sections {
        html.push_str(&format!("<a href=\"#{id}\">{}</a>", escape(title)));
    }
    html.push_str("</nav>\n");
    for (id, title, body) in &sections {
        html.push_str(&format!(
            "<section id=\"{id}\"><h2>{}</h2>\n{body}\n</section>\n",
            escape(title)
        ));
    }
    html.push_str(&format!(
        "<footer><p>nflow {} &middot; model folder {}</p></footer></body></html>\n",
        env!("CARGO_PKG_VERSION"),
        escape(&a.model.display().to_string())
    ));
    // whole or not at all: a temporary file beside it (created exclusively under an unpredictable name, as
    // every output's), synced, then renamed into place
    let (part, mut f) = nflow::data::temp_file_beside(&a.out)
        .with_context(|| format!("cannot write {}", a.out.display()))?;
    std::io::Write::write_all(&mut f, html.as_bytes())
        .and_then(|_| f.sync_all())
        .and_then(|_| std::fs::rename(&part, &a.out))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&part);
        })
        .with_context(|| format!("cannot write {}", a.out.display()))?;
    eprintln!(
        "wrote {} ({} sections, {} KB)",
        a.out.display(),
        sections.len(),
        html.len() / 1024
    );
    Ok(())
}

/// The page's sections: (id, title, HTML body).
fn sections(
    a: &ReportArgs,
    model: &Model,
    data: Option<&(Table, Option<Table>)>,
    tmp: &Path,
) -> Result<Vec<(&'static str, String, String)>> {
    let mut out = Vec::new();
    out.push((
        "card",
        "Model card".to_string(),
        format!("<pre>{}</pre>", escape(&card(&a.model, model))),
    ));
    if !model.log.is_empty() {
        let (rows, bpd) = curve_rows(&a.model, model)?;
        let p = tmp.join("curve.png");
        draw_curve(&p, &a.model, &rows, bpd)?;
        out.push(("curve", "Learning curve".into(), img(&p, "learning curve")?));
    }
    if let Some((t, c)) = data {
        let (lp, _) = model.log_prob_parts(t, c.as_ref())?;
        let s = nflow::train::scores::summarize(&lp);
        let mut rows = format!(
            "<tr><th>data</th><td>{}</td></tr><tr><th>rows</th><td>{}</td></tr>\
             <tr><th>mean log-likelihood</th><td>{:.4} &plusmn; {:.4} nats</td></tr>\
             <tr><th>median</th><td>{:.4} nats</td></tr>",
            escape(&t.source),
            t.rows,
            s.mean,
            s.stderr,
            s.median
        );
        if model.arch.is_image() || model.preprocess.as_ref().is_some_and(|p| p.dequantize) {
            rows.push_str(&format!(
                "<tr><th>bits/dim</th><td>{:.4}</td></tr>",
                nflow::train::bits_per_dim(s.mean, t.cols)
            ));
        }
        out.push((
            "test",
            "Test log-likelihood".into(),
            format!("<table>{rows}</table>"),
        ));
    }
    let contexts = data.and_then(|(_, c)| c.as_ref().map(|c| spread_contexts(c, 10)));
    if model.arch.is_image() {
        out.extend(image_sections(a, model, data, contexts.as_ref(), tmp)?);
        return Ok(out);
    }
    // samples beside the data; a conditional model: at up to three contexts from the data
    let shown = data.map(|(t, _)| t.take_rows(&(0..t.rows.min(5000)).collect::<Vec<_>>()));
    let what = if model.dim() == 2 {
        "The model's density, its samples and the data."
    } else {
        "Pairs of the first columns: the model's samples against the data (histograms on the diagonal)."
    };
    if model.arch.context_dim == 0 {
        let p = tmp.join("samples.png");
        plot_model(model, None, shown.as_ref(), &p, a.samples, 150, 6, a.seed)?;
        out.push((
            "samples",
            "Samples and data".into(),
            format!("<p>{what}</p>{}", img(&p, "samples and data")?),
        ));
    } else if let Some(c) = &contexts {
        let picks = c.rows.min(3);
        let mut body = format!(
            "<p>{what} The model's samples given {picks} context rows from the data (all of the data drawn \
             beside them).</p>"
        );
        for k in 0..picks {
            let i = (k * (c.rows - 1)).checked_div(picks - 1).unwrap_or(0);
            let one = c.take_rows(&[i]);
            let p = tmp.join(format!("samples-{k}.png"));
            plot_model(
                model,
                Some(&one),
                shown.as_ref(),
                &p,
                a.samples,
                150,
                6,
                a.seed,
            )?;
            let cap = context_caption(&one, 0);
            body.push_str(&format!(
                "<figure><figcaption>given {}</figcaption>{}</figure>",
                escape(&cap),
                img(&p, &format!("samples given {cap}"))?
            ));
        }
        out.push(("samples", "Samples at several contexts".into(), body));
    }
    if model.arch.context_dim == 0 && model.preprocess.is_none() && !model.arch.is_image() {
        let pts = match data {
            Some((t, _)) => t.take_rows(&(0..t.rows.min(800)).collect::<Vec<_>>()),
            None => model.sample(800, a.seed, None)?,
        };
        let view = nflow::plot::SliceView::default();
        let stages = nflow::plot::flow_stages(model, &pts, 120, &view)?;
        let p = tmp.join("layers.png");
        nflow::plot::layers_png(
            &p,
            &stages,
            &format!(
                "{}: the change of variables layer by layer",
                folder_name(&a.model)
            ),
        )?;
        out.push((
            "layers",
            "Layer by layer".into(),
            format!(
                "<p>Per stage from data to noise: the density, a regular grid of the data space carried through \
                 the maps, and the points shaded by where they started; under each layer its log|det J| (blue \
                 contracts, red expands).{}</p>{}",
                if model.dim() > 2 {
                    format!(
                        " The plane of the first two columns ({}, {}) through the median row: the other \
                         columns held there, the points projected.",
                        escape(&model.columns[0]),
                        escape(&model.columns[1])
                    )
                } else {
                    String::new()
                },
                img(&p, "layer by layer")?
            ),
        ));
    }
    Ok(out)
}

/// Up to `k` context rows spread over the data's distinct ones (ordered by their values): every class for
/// a label with at most `k` classes.
fn spread_contexts(c: &Table, k: usize) -> Table {
    let mut seen = std::collections::HashSet::new();
    let mut firsts: Vec<usize> = (0..c.rows)
        .filter(|&i| seen.insert(c.row(i).iter().map(|v| v.to_bits()).collect::<Vec<_>>()))
        .collect();
    firsts.sort_by(|&i, &j| {
        c.row(i)
            .iter()
            .zip(c.row(j))
            .map(|(a, b)| a.total_cmp(b))
            .find(|o| o.is_ne())
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let n = firsts.len();
    let picks: Vec<usize> = if n <= k {
        firsts
    } else {
        (0..k)
            .map(|j| firsts[j * (n - 1) / (k - 1).max(1)])
            .collect()
    };
    c.take_rows(&picks)
}

/// An image model's samples (a line per temperature; a conditional one: a line per context from the data)
/// and a picture's latents per level with pictures rebuilt from them.
fn image_sections(
    a: &ReportArgs,
    model: &Model,
    data: Option<&(Table, Option<Table>)>,
    contexts: Option<&Table>,
    tmp: &Path,
) -> Result<Vec<(&'static str, String, String)>> {
    let mut out = Vec::new();
    let shape = model
        .arch
        .image
        .context("an image model without an image shape")?;
    let per = 10;
    let d = model.dim();
    let images = |t: &Table| t.data.chunks(d).map(<[f64]>::to_vec).collect::<Vec<_>>();
    let mut lines = Vec::new();
    let mut seen = Vec::new();
    let (title, note) = match contexts {
        None if model.arch.context_dim > 0 => (String::new(), String::new()),
        None => {
            for (k, t) in [0.5, 0.7, 0.85, 1.0].into_iter().enumerate() {
                let s = model.sample_with_temperature(per, a.seed + k as u64, None, t)?;
                seen.extend_from_slice(&s.data);
                lines.push(nflow::plot::ImageRow {
                    caption: format!("T = {t}"),
                    images: images(&s),
                });
            }
            (
                format!("{}: samples at four temperatures", folder_name(&a.model)),
                "A line per temperature T (the prior's standard deviation; lower: smoother, more typical)."
                    .to_string(),
            )
        }
        Some(c) => {
            let t = 0.7;
            for i in 0..c.rows {
                let one = c.take_rows(&vec![i; per]);
                let s = model.sample_with_temperature(per, a.seed, Some(&one), t)?;
                seen.extend_from_slice(&s.data);
                lines.push(nflow::plot::ImageRow {
                    caption: context_caption(c, i),
                    images: images(&s),
                });
            }
            (
                format!(
                    "{}: samples per context, temperature {t}",
                    folder_name(&a.model)
                ),
                format!(
                    "A line per context row of the data ({} of them), temperature {t}; the same noise down \
                     each column, so a column shows what the context changes.",
                    c.rows
                ),
            )
        }
    };
    if !lines.is_empty() {
        let p = tmp.join("samples.png");
        let max = nflow::plot::pixel_max(model, &seen);
        nflow::plot::image_grid_png(&p, &title, shape, max, &lines, per)?;
        out.push((
            "samples",
            "Samples".into(),
            format!("<p>{}</p>{}", escape(&note), img(&p, "samples")?),
        ));
    }
    let pick = data.map(|(t, c)| (t.take_rows(&[0]), c.as_ref().map(|c| c.take_rows(&[0]))));
    let (pic, ctx) = match pick {
        Some(p) => p,
        None if model.arch.context_dim == 0 => (model.sample(1, a.seed, None)?, None),
        None => return Ok(out),
    };
    if model
        .preset
        .as_ref()
        .and_then(nflow::flows::image::latent_scales)
        .is_some()
    {
        let p = tmp.join("latents.png");
        nflow::plot::latents_png(
            &p,
            model,
            &pic,
            ctx.as_ref(),
            &[0.0, 0.5, 0.7, 1.0],
            a.seed,
            &format!("{}: a picture's latents per level", folder_name(&a.model)),
        )?;
        out.push((
            "latents",
            "Latents per level".into(),
            format!(
                "<p>The first test picture, the picture rebuilt from its latents, and the latents each level \
                 factors out; below, pictures that keep the coarsest levels' latents and draw the finer ones at \
                 temperature T.</p>{}",
                img(&p, "latents")?
            ),
        ));
    }
    Ok(out)
}
