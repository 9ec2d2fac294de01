//! The pairwise scatter matrix with per-column histograms on the diagonal.

use super::*;

/// Column `c` of the row-major `n x dim` buffer.
pub(super) fn column(buf: &[f64], dim: usize, c: usize) -> impl Iterator<Item = f64> + '_ {
    buf.chunks_exact(dim).map(move |row| row[c])
}

/// Linear-interpolated quantile of sorted, finite `v` (non-empty), `q` in [0, 1].
pub(super) fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let i = pos.floor() as usize;
    let j = (i + 1).min(sorted.len() - 1);
    let f = pos - i as f64;
    sorted[i] + (sorted[j] - sorted[i]) * f
}

/// Display range of one column: 0.5%..99.5% quantiles of the finite values,
/// widened by 5% on each side; a degenerate or empty column gets a unit-ish
/// range around its value (or [-1, 1]).
pub(super) fn column_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let mut v: Vec<f64> = values.filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return (-1.0, 1.0);
    }
    v.sort_by(f64::total_cmp);
    let (lo, hi) = (quantile(&v, 0.005), quantile(&v, 0.995));
    padded(lo, hi)
}

/// `[lo, hi]` widened by 5% each side; a zero-width range is opened up.
pub(super) fn padded(lo: f64, hi: f64) -> (f64, f64) {
    let width = hi - lo;
    if width > 0.0 && width.is_finite() {
        (lo - 0.05 * width, hi + 0.05 * width)
    } else {
        let half = 0.5 * lo.abs().max(1.0) * 0.1 + 0.5;
        (lo - half, lo + half)
    }
}

/// Pairwise scatter matrix of the first `k = min(dim, max_dims)` dimensions.
///
/// `samples` is `n x dim` row-major, `data` (optional) `m x dim`. Panel
/// (i, j) off the diagonal plots dim j (x) against dim i (y): samples in
/// orange drawn over data in blue. Diagonal panels overlay 30-bin density
/// histograms of that dim (data blue, samples orange, each normalised to unit
/// area so different counts compare). Each dim's range is the 0.5%..99.5%
/// quantile range of the data (of the samples if there is no data or it is
/// empty) plus a 5% margin. Panels are about 220 px; `k = 1` gives just the
/// histogram. Non-finite values are skipped. `names` (one per column, or none) title the columns above the
/// matrix and the rows on its left; a line above says which colour is which.
///
/// Errors: [`PlotError::Input`] when `dim` or `max_dims` is 0, a buffer
/// length is not a multiple of `dim`, or the path does not end in `.png`.
pub fn pairs_png(
    path: &Path,
    samples: &[f64],
    data: Option<&[f64]>,
    dim: usize,
    max_dims: usize,
    names: &[String],
) -> Result<(), PlotError> {
    check_path(path)?;
    if dim == 0 || max_dims == 0 {
        return Err(PlotError::Input(format!(
            "pairs plot needs dim > 0 and max_dims > 0, got dim={dim}, max_dims={max_dims}"
        )));
    }
    for (name, buf) in std::iter::once(("samples", samples)).chain(data.map(|d| ("data", d))) {
        if buf.len() % dim != 0 {
            return Err(PlotError::Input(format!(
                "{name} has {} values, not a multiple of dim={dim}",
                buf.len()
            )));
        }
    }
    let k = dim.min(max_dims);
    let reference = match data {
        Some(d) if !d.is_empty() => d,
        _ => samples,
    };
    let column = |buf, c| column(buf, dim, c);
    let ranges: Vec<(f64, f64)> = (0..k).map(|c| column_range(column(reference, c))).collect();

    let side = k as u32 * PAIRS_PANEL;
    // a header for the key and the column names, a margin for the row names
    let (top, left) = (56u32, 30u32);
    let page = BitMapBackend::new(path, (side + left, side + top)).into_drawing_area();
    page.fill(&PAGE_BG).map_err(write_err(path))?;
    let key = if data.is_some() {
        "orange: model samples, blue: data (histograms: densities)"
    } else {
        "model samples (histograms: densities)"
    };
    draw_text(
        &page,
        path,
        ((left + side / 2) as i32, 6),
        key,
        14.0,
        Anchor::TopCentre,
    )?;
    for c in 0..k.min(names.len()) {
        let mid = (left + c as u32 * PAIRS_PANEL + PAIRS_PANEL / 2) as i32;
        draw_text(&page, path, (mid, 30), &names[c], 14.0, Anchor::TopCentre)?;
        let y = (top + c as u32 * PAIRS_PANEL + PAIRS_PANEL / 2) as i32;
        draw_text_up(&page, path, (14, y), &names[c], 14.0)?;
    }
    let root = page.margin(top, 0, left, 0);

    let n_samples = samples.len() / dim;
    let n_data = data.map_or(0, |d| d.len() / dim);
    for i in 0..k {
        for j in 0..k {
            let cell = |y| {
                Panel::in_cell(
                    (j as u32 * PAIRS_PANEL) as i32,
                    (i as u32 * PAIRS_PANEL) as i32,
                    (PAIRS_PANEL, PAIRS_PANEL),
                    6,
                    ranges[j],
                    y,
                )
            };
            if i == j {
                let hs = histogram(column(samples, i), ranges[i]);
                let hd = data.map(|d| histogram(column(d, i), ranges[i]));
                let top = hs
                    .iter()
                    .chain(hd.iter().flatten())
                    .fold(0.0_f64, |m, &v| m.max(v));
                let panel = cell((0.0, if top > 0.0 { top * 1.05 } else { 1.0 }));
                panel.fill(&root, path)?;
                if let Some(hd) = &hd {
                    draw_histogram(&root, path, &panel, hd, DATA_COLOUR)?;
                }
                draw_histogram(&root, path, &panel, &hs, SAMPLE_COLOUR)?;
                panel.frame(&root, path)?;
            } else {
                let panel = cell(ranges[i]);
                panel.fill(&root, path)?;
                panel.grid(&root, path)?;
                if let Some(d) = data {
                    panel.scatter(
                        &root,
                        path,
                        d.chunks_exact(dim).map(|r| (r[j], r[i])),
                        DATA_COLOUR,
                        dot_alpha(n_data),
                        1,
                    )?;
                }
                panel.scatter(
                    &root,
                    path,
                    samples.chunks_exact(dim).map(|r| (r[j], r[i])),
                    SAMPLE_COLOUR,
                    dot_alpha(n_samples),
                    1,
                )?;
                panel.frame(&root, path)?;
            }
        }
    }
    root.present().map_err(write_err(path))
}

/// Density histogram (unit area over the in-range values) with
/// [`HIST_BINS`] bins over `range`; values outside it are ignored.
pub(super) fn histogram(values: impl Iterator<Item = f64>, range: (f64, f64)) -> Vec<f64> {
    let mut counts = vec![0usize; HIST_BINS];
    let width = range.1 - range.0;
    for v in values {
        let f = (v - range.0) / width;
        if (0.0..=1.0).contains(&f) {
            counts[((f * HIST_BINS as f64) as usize).min(HIST_BINS - 1)] += 1;
        }
    }
    let total: usize = counts.iter().sum();
    let bin_width = width / HIST_BINS as f64;
    counts
        .into_iter()
        .map(|c| {
            if total == 0 {
                0.0
            } else {
                c as f64 / (total as f64 * bin_width)
            }
        })
        .collect()
}

/// Translucent bars plus an opaque step outline; `panel.y` is the height
/// range.
pub(super) fn draw_histogram(
    area: &Area,
    path: &Path,
    panel: &Panel,
    heights: &[f64],
    colour: RGBColor,
) -> Result<(), PlotError> {
    let n = heights.len() as f64;
    let top = panel.y.1;
    let mut outline = Vec::with_capacity(2 * heights.len() + 2);
    outline.push(panel.frac_px(0.0, 0.0));
    for (b, &h) in heights.iter().enumerate() {
        let (f0, f1) = (b as f64 / n, (b + 1) as f64 / n);
        let fh = (h / top).clamp(0.0, 1.0);
        let a = panel.frac_px(f0, fh);
        let z = panel.frac_px(f1, 0.0);
        if h > 0.0 {
            area.draw(&Rectangle::new([a, z], colour.mix(0.35).filled()))
                .map_err(write_err(path))?;
        }
        outline.push(a);
        outline.push(panel.frac_px(f1, fh));
    }
    outline.push(panel.frac_px(1.0, 0.0));
    area.draw(&PathElement::new(outline, colour.stroke_width(1)))
        .map_err(write_err(path))
}
