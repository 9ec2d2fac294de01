//! Text-free PNG plots for flows: 2-D density heat maps, pairwise scatter
//! matrices and learning curves.
//!
//! `plotters` is built without any font backend, so nothing here draws text:
//! every picture is made of rectangles, circles and paths placed in pixel
//! coordinates that this module computes itself.
//!
//! Every output path must end in `.png` (the bitmap encoder picks the format
//! from the extension); any other extension is an [`PlotError::Input`].

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

/// Errors from the plotting functions.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// Drawing or encoding/writing the file failed.
    #[error("cannot write plot {path}: {msg}")]
    Write { path: String, msg: String },
    /// The arguments are inconsistent (sizes, extents, dimensions, path).
    #[error("plot: {0}")]
    Input(String),
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
/// A closed data interval `(lo, hi)`.
type Interval = (f64, f64);

/// Side length of one density panel, in pixels.
const DENSITY_PANEL: u32 = 500;
/// Side length of one panel of the pairs matrix, in pixels.
const PAIRS_PANEL: u32 = 220;
/// Size of the line chart, in pixels.
const LINES_SIZE: (u32, u32) = (800, 500);
/// Number of histogram bins on the diagonal of the pairs matrix.
const HIST_BINS: usize = 30;

const PAGE_BG: RGBColor = RGBColor(244, 244, 246);
const PANEL_BG: RGBColor = RGBColor(255, 255, 255);
const FRAME: RGBColor = RGBColor(90, 90, 90);
const GRID: RGBColor = RGBColor(228, 228, 232);
/// Model samples.
const SAMPLE_COLOUR: RGBColor = RGBColor(240, 130, 20);
/// Training / reference data.
const DATA_COLOUR: RGBColor = RGBColor(31, 100, 190);
/// Distinct line colours (tab10-like).
const LINE_PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Viridis, sampled at 9 evenly spaced stops and linearly interpolated.
const VIRIDIS: [(u8, u8, u8); 9] = [
    (68, 1, 84),
    (71, 44, 122),
    (59, 81, 139),
    (44, 113, 142),
    (33, 144, 141),
    (39, 173, 129),
    (92, 200, 99),
    (170, 220, 50),
    (253, 231, 37),
];

/// Maps `t` in [0, 1] to a viridis-like colour (dark purple at 0, yellow at
/// 1). Values outside [0, 1] are clamped; NaN maps to the minimum.
pub fn colormap(t: f64) -> (u8, u8, u8) {
    let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) };
    let segments = (VIRIDIS.len() - 1) as f64;
    let pos = t * segments;
    let i = (pos.floor() as usize).min(VIRIDIS.len() - 2);
    let f = pos - i as f64;
    let (a, b) = (VIRIDIS[i], VIRIDIS[i + 1]);
    let lerp = |x: u8, y: u8| (f64::from(x) + (f64::from(y) - f64::from(x)) * f).round() as u8;
    (lerp(a.0, b.0), lerp(a.1, b.1), lerp(a.2, b.2))
}

/// Colours of a log-density grid, same layout as the input (row-major,
/// `ny` rows of `nx`). Each value becomes `exp(log_density)` divided by the
/// largest one, then goes through [`colormap`]. Non-finite values (and all
/// values when none is finite) get the colormap minimum.
pub fn density_colours(
    log_density: &[f64],
    nx: usize,
    ny: usize,
) -> Result<Vec<(u8, u8, u8)>, PlotError> {
    check_grid(log_density.len(), nx, ny)?;
    let max = log_density
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(f64::NEG_INFINITY, f64::max);
    Ok(log_density
        .iter()
        .map(|&v| {
            if v.is_finite() && max.is_finite() {
                // exp(v) / exp(max), computed without overflow.
                colormap((v - max).exp())
            } else {
                colormap(0.0)
            }
        })
        .collect())
}

fn check_grid(len: usize, nx: usize, ny: usize) -> Result<(), PlotError> {
    if nx == 0 || ny == 0 {
        return Err(PlotError::Input(format!(
            "density grid must be non-empty, got nx={nx}, ny={ny}"
        )));
    }
    match nx.checked_mul(ny) {
        Some(n) if n == len => Ok(()),
        _ => Err(PlotError::Input(format!(
            "log_density has {len} values, expected nx*ny = {nx}*{ny}"
        ))),
    }
}

fn check_path(path: &Path) -> Result<(), PlotError> {
    let is_png = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if is_png {
        Ok(())
    } else {
        Err(PlotError::Input(format!(
            "plot path {} must end in .png",
            path.display()
        )))
    }
}

/// Turns any plotters error into [`PlotError::Write`] for `path`.
fn write_err<E: std::fmt::Display>(path: &Path) -> impl Fn(E) -> PlotError + '_ {
    move |e| PlotError::Write {
        path: path.display().to_string(),
        msg: e.to_string(),
    }
}

/// A rectangle on the image (pixels, y down) showing the data rectangle
/// `[x0, x1] x [y0, y1]` (y up).
#[derive(Clone, Copy, Debug)]
struct Panel {
    left: i32,
    top: i32,
    width: i32,
    height: i32,
    x: (f64, f64),
    y: (f64, f64),
}

impl Panel {
    /// A square-ish panel in the cell at (`left`, `top`) of side `size`,
    /// inset by `pad` pixels on each side.
    fn in_cell(
        left: i32,
        top: i32,
        size: (u32, u32),
        pad: i32,
        x: (f64, f64),
        y: (f64, f64),
    ) -> Self {
        Panel {
            left: left + pad,
            top: top + pad,
            width: (size.0 as i32 - 2 * pad).max(1),
            height: (size.1 as i32 - 2 * pad).max(1),
            x,
            y,
        }
    }

    /// Pixel of the data point, or `None` if it is outside the range or not
    /// finite.
    fn pixel_of(&self, x: f64, y: f64) -> Option<(i32, i32)> {
        let fx = (x - self.x.0) / (self.x.1 - self.x.0);
        let fy = (y - self.y.0) / (self.y.1 - self.y.0);
        if !(0.0..=1.0).contains(&fx) || !(0.0..=1.0).contains(&fy) {
            return None;
        }
        Some(self.frac_px(fx, fy))
    }

    /// Pixel at fraction (`fx`, `fy`) of the panel, y measured upwards.
    /// Not clipped.
    fn frac_px(&self, fx: f64, fy: f64) -> (i32, i32) {
        let w = f64::from(self.width - 1);
        let h = f64::from(self.height - 1);
        (
            self.left + (fx * w).round() as i32,
            self.top + ((1.0 - fy) * h).round() as i32,
        )
    }

    fn bottom_right(&self) -> (i32, i32) {
        (self.left + self.width - 1, self.top + self.height - 1)
    }

    fn fill(&self, area: &Area, path: &Path) -> Result<(), PlotError> {
        area.draw(&Rectangle::new(
            [(self.left, self.top), self.bottom_right()],
            PANEL_BG.filled(),
        ))
        .map_err(write_err(path))
    }

    fn frame(&self, area: &Area, path: &Path) -> Result<(), PlotError> {
        area.draw(&Rectangle::new(
            [(self.left - 1, self.top - 1), {
                let (r, b) = self.bottom_right();
                (r + 1, b + 1)
            }],
            FRAME.stroke_width(1),
        ))
        .map_err(write_err(path))
    }

    /// Faint grid lines at quarters of the panel.
    fn grid(&self, area: &Area, path: &Path) -> Result<(), PlotError> {
        for k in 1..4 {
            let f = f64::from(k) / 4.0;
            let v = [self.frac_px(f, 0.0), self.frac_px(f, 1.0)];
            let h = [self.frac_px(0.0, f), self.frac_px(1.0, f)];
            for line in [v, h] {
                area.draw(&PathElement::new(line.to_vec(), GRID.stroke_width(1)))
                    .map_err(write_err(path))?;
            }
        }
        Ok(())
    }

    /// Small dots for every in-range point yielded by `points`.
    fn scatter(
        &self,
        area: &Area,
        path: &Path,
        points: impl Iterator<Item = (f64, f64)>,
        colour: RGBColor,
        alpha: f64,
        radius: i32,
    ) -> Result<(), PlotError> {
        let style = colour.mix(alpha).filled();
        for (x, y) in points {
            if let Some(p) = self.pixel_of(x, y) {
                if radius <= 1 {
                    // A radius-1 circle renders as a "+"; a small square reads
                    // better as a dot.
                    area.draw(&Rectangle::new(
                        [(p.0 - 1, p.1 - 1), (p.0 + 1, p.1 + 1)],
                        style,
                    ))
                } else {
                    area.draw(&Circle::new(p, radius, style))
                }
                .map_err(write_err(path))?;
            }
        }
        Ok(())
    }
}

/// Dot transparency that keeps dense clouds readable: opaque-ish for a few
/// hundred points, fainter for many.
fn dot_alpha(n: usize) -> f64 {
    (30.0 / (n.max(1) as f64).sqrt()).clamp(0.12, 0.7)
}

fn check_extent(extent: [f64; 4]) -> Result<(Interval, Interval), PlotError> {
    let [x0, x1, y0, y1] = extent;
    if extent.iter().all(|v| v.is_finite()) && x0 < x1 && y0 < y1 {
        Ok(((x0, x1), (y0, y1)))
    } else {
        Err(PlotError::Input(format!(
            "extent must be finite with xmin < xmax and ymin < ymax, got {extent:?}"
        )))
    }
}

/// Side-by-side square panels (about 500x500 px each) on a light background:
///
/// 1. the density heat map of `log_density` (`ny` rows of `nx`, row-major;
///    row 0 is the bottom, `y = extent[2]`), coloured by `exp(log_density)`
///    normalised to its maximum through a viridis-like map (see
///    [`density_colours`]); the grid is drawn as `nx x ny` equal cells
///    covering `extent`;
/// 2. `samples` as small semi-transparent dots;
/// 3. only when `data` is `Some`: the data as dots.
///
/// `extent` is `[xmin, xmax, ymin, ymax]`; points outside it are skipped.
/// Errors: [`PlotError::Input`] on a size mismatch, `nx == 0` or `ny == 0`, a
/// bad extent or a path not ending in `.png`; [`PlotError::Write`] if drawing
/// or writing fails.
pub fn density_2d_png(
    path: &Path,
    log_density: &[f64],
    nx: usize,
    ny: usize,
    extent: [f64; 4],
    samples: &[[f64; 2]],
    data: Option<&[[f64; 2]]>,
) -> Result<(), PlotError> {
    check_path(path)?;
    let colours = density_colours(log_density, nx, ny)?;
    let (xr, yr) = check_extent(extent)?;

    let n_panels: u32 = if data.is_some() { 3 } else { 2 };
    let root =
        BitMapBackend::new(path, (n_panels * DENSITY_PANEL, DENSITY_PANEL)).into_drawing_area();
    root.fill(&PAGE_BG).map_err(write_err(path))?;
    let panels: Vec<Panel> = (0..n_panels)
        .map(|k| {
            Panel::in_cell(
                (k * DENSITY_PANEL) as i32,
                0,
                (DENSITY_PANEL, DENSITY_PANEL),
                14,
                xr,
                yr,
            )
        })
        .collect();

    // Heat map, pixel by pixel: each pixel takes the colour of the cell under
    // its centre.
    let heat = &panels[0];
    for py in 0..heat.height {
        // Fraction measured upwards from the bottom edge.
        let fy = 1.0 - (f64::from(py) + 0.5) / f64::from(heat.height);
        let row = ((fy * ny as f64) as usize).min(ny - 1);
        for px in 0..heat.width {
            let fx = (f64::from(px) + 0.5) / f64::from(heat.width);
            let col = ((fx * nx as f64) as usize).min(nx - 1);
            let (r, g, b) = colours[row * nx + col];
            root.draw_pixel((heat.left + px, heat.top + py), &RGBColor(r, g, b))
                .map_err(write_err(path))?;
        }
    }
    heat.frame(&root, path)?;

    let clouds: Vec<(&[[f64; 2]], RGBColor)> = std::iter::once((samples, SAMPLE_COLOUR))
        .chain(data.map(|d| (d, DATA_COLOUR)))
        .collect();
    for (panel, (points, colour)) in panels[1..].iter().zip(clouds) {
        panel.fill(&root, path)?;
        panel.grid(&root, path)?;
        panel.scatter(
            &root,
            path,
            points.iter().map(|p| (p[0], p[1])),
            colour,
            dot_alpha(points.len()),
            2,
        )?;
        panel.frame(&root, path)?;
    }
    root.present().map_err(write_err(path))
}

/// Column `c` of the row-major `n x dim` buffer.
fn column(buf: &[f64], dim: usize, c: usize) -> impl Iterator<Item = f64> + '_ {
    buf.chunks_exact(dim).map(move |row| row[c])
}

/// Linear-interpolated quantile of sorted, finite `v` (non-empty), `q` in [0, 1].
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let i = pos.floor() as usize;
    let j = (i + 1).min(sorted.len() - 1);
    let f = pos - i as f64;
    sorted[i] + (sorted[j] - sorted[i]) * f
}

/// Display range of one column: 0.5%..99.5% quantiles of the finite values,
/// widened by 5% on each side; a degenerate or empty column gets a unit-ish
/// range around its value (or [-1, 1]).
fn column_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let mut v: Vec<f64> = values.filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return (-1.0, 1.0);
    }
    v.sort_by(f64::total_cmp);
    let (lo, hi) = (quantile(&v, 0.005), quantile(&v, 0.995));
    padded(lo, hi)
}

/// `[lo, hi]` widened by 5% each side; a zero-width range is opened up.
fn padded(lo: f64, hi: f64) -> (f64, f64) {
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
/// histogram. Non-finite values are skipped.
///
/// Errors: [`PlotError::Input`] when `dim` or `max_dims` is 0, a buffer
/// length is not a multiple of `dim`, or the path does not end in `.png`.
pub fn pairs_png(
    path: &Path,
    samples: &[f64],
    data: Option<&[f64]>,
    dim: usize,
    max_dims: usize,
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
    let root = BitMapBackend::new(path, (side, side)).into_drawing_area();
    root.fill(&PAGE_BG).map_err(write_err(path))?;

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
fn histogram(values: impl Iterator<Item = f64>, range: (f64, f64)) -> Vec<f64> {
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
fn draw_histogram(
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

/// 3x5 bitmap glyphs for tick labels (no font files needed): rows top to bottom, 3 bits each.
fn glyph(c: char) -> Option<[u8; 5]> {
    Some(match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        'e' => [0, 7, 7, 4, 7],
        '+' => [0, 2, 7, 2, 0],
        _ => return None,
    })
}

/// Pixel width of `s` drawn at `scale` (4 columns per glyph including the gap).
fn text_width(s: &str, scale: i32) -> i32 {
    s.chars().count() as i32 * 4 * scale - scale
}

/// Draw `s` (digits, '.', '-', 'e', '+') with its top-left corner at `(x, y)`.
fn draw_text(
    area: &Area,
    path: &Path,
    x: i32,
    y: i32,
    s: &str,
    scale: i32,
) -> Result<(), PlotError> {
    for (k, c) in s.chars().enumerate() {
        let Some(rows) = glyph(c) else { continue };
        let ox = x + k as i32 * 4 * scale;
        for (r, bits) in rows.iter().enumerate() {
            for b in 0..3 {
                if bits & (4 >> b) != 0 {
                    let (px, py) = (ox + b * scale, y + r as i32 * scale);
                    area.draw(&Rectangle::new(
                        [(px, py), (px + scale - 1, py + scale - 1)],
                        RGBColor(50, 50, 50).filled(),
                    ))
                    .map_err(write_err(path))?;
                }
            }
        }
    }
    Ok(())
}

/// A tick value with as many decimals as the axis span needs.
fn tick_label(v: f64, span: f64) -> String {
    let decimals = if span <= 0.0 {
        2
    } else {
        (2.0 - span.log10().floor()).clamp(0.0, 6.0) as usize
    };
    // no "-0.0"
    let v = if v.abs() < 0.5 * 10f64.powi(-(decimals as i32)) {
        0.0
    } else {
        v
    };
    let s = format!("{v:.decimals$}");
    if s.len() > 9 {
        format!("{v:.2e}")
    } else {
        s
    }
}

/// A line chart (800x500 px): each series of `(x, y)` points is a
/// polyline in its own colour (10-colour palette, cycling), over a light
/// background with a frame, faint quarter grid lines and the axis values at the frame and the quarters (small
/// bitmap digits; no other text). The x and y ranges
/// cover all finite points with a 5% margin. A non-finite point breaks its
/// line; a lone point is drawn as a dot. With no finite point at all just the
/// empty frame is drawn.
///
/// Errors: [`PlotError::Input`] when the path does not end in `.png`;
/// [`PlotError::Write`] if drawing or writing fails.
pub fn lines_png(path: &Path, series: &[Vec<(f64, f64)>]) -> Result<(), PlotError> {
    check_path(path)?;
    let finite = |&(x, y): &(f64, f64)| x.is_finite() && y.is_finite();
    let bounds = series.iter().flatten().filter(|p| finite(p)).fold(
        None,
        |acc: Option<(f64, f64, f64, f64)>, &(x, y)| {
            Some(match acc {
                None => (x, x, y, y),
                Some((a, b, c, d)) => (a.min(x), b.max(x), c.min(y), d.max(y)),
            })
        },
    );
    let (xr, yr) = match bounds {
        Some((x0, x1, y0, y1)) => (padded(x0, x1), padded(y0, y1)),
        None => ((0.0, 1.0), (0.0, 1.0)),
    };

    let root = BitMapBackend::new(path, LINES_SIZE).into_drawing_area();
    root.fill(&PAGE_BG).map_err(write_err(path))?;
    // room for the tick labels on the left and below
    let (left, bottom) = (70, 30);
    let panel = Panel {
        left,
        top: 16,
        width: LINES_SIZE.0 as i32 - left - 16,
        height: LINES_SIZE.1 as i32 - 16 - bottom,
        x: xr,
        y: yr,
    };
    panel.fill(&root, path)?;
    panel.grid(&root, path)?;
    let scale = 2;
    for k in 0..=4 {
        let f = f64::from(k) / 4.0;
        let xv = tick_label(xr.0 + f * (xr.1 - xr.0), xr.1 - xr.0);
        let (px, py) = panel.frac_px(f, 0.0);
        draw_text(
            &root,
            path,
            px - text_width(&xv, scale) / 2,
            py + 8,
            &xv,
            scale,
        )?;
        let yv = tick_label(yr.0 + f * (yr.1 - yr.0), yr.1 - yr.0);
        let (px, py) = panel.frac_px(0.0, f);
        draw_text(
            &root,
            path,
            px - 10 - text_width(&yv, scale),
            py - 5,
            &yv,
            scale,
        )?;
    }
    for (s, points) in series.iter().enumerate() {
        let colour = LINE_PALETTE[s % LINE_PALETTE.len()];
        for run in points.split(|p| !finite(p)).filter(|r| !r.is_empty()) {
            let pixels: Vec<(i32, i32)> = run
                .iter()
                .filter_map(|&(x, y)| panel.pixel_of(x, y))
                .collect();
            if pixels.len() == 1 {
                root.draw(&Circle::new(pixels[0], 3, colour.filled()))
                    .map_err(write_err(path))?;
            } else {
                root.draw(&PathElement::new(pixels, colour.stroke_width(2)))
                    .map_err(write_err(path))?;
            }
        }
    }
    panel.frame(&root, path)?;
    root.present().map_err(write_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels_and_glyphs() {
        assert_eq!(tick_label(15.72, 62.9), "15.7");
        assert_eq!(tick_label(-0.01, 62.9), "0.0");
        assert_eq!(tick_label(1.2345, 0.8), "1.234");
        assert!("0123456789.-e+".chars().all(|c| glyph(c).is_some()));
        assert_eq!(text_width("12", 2), 14);
    }
    use std::path::PathBuf;

    const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];

    fn temp_png(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "nflow_plot_test_{}_{}.png",
            std::process::id(),
            name
        ))
    }

    fn assert_png(path: &Path) {
        let bytes = std::fs::read(path).expect("plot file was written");
        assert!(bytes.len() > 8, "file too short");
        assert_eq!(bytes[..8], PNG_SIGNATURE, "not a PNG");
        // Keep the pictures for a look with NFLOW_KEEP_PLOTS=1.
        if std::env::var_os("NFLOW_KEEP_PLOTS").is_none() {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Deterministic pseudo-random standard normals (LCG + Box-Muller).
    fn normals(n: usize, seed: u64) -> Vec<f64> {
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        let mut uniform = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        (0..n)
            .map(|_| {
                let (u, v) = (uniform(), uniform());
                (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
            })
            .collect()
    }

    /// Standard 2-D Gaussian log-density on an `n x n` grid over [-3, 3]^2
    /// (cell centres).
    fn gaussian_grid(n: usize) -> Vec<f64> {
        let c = |i: usize| -3.0 + 6.0 * (i as f64 + 0.5) / n as f64;
        let mut v = Vec::with_capacity(n * n);
        for j in 0..n {
            for i in 0..n {
                let (x, y) = (c(i), c(j));
                v.push(-0.5 * (x * x + y * y) - (2.0 * std::f64::consts::PI).ln());
            }
        }
        v
    }

    fn brightness((r, g, b): (u8, u8, u8)) -> u32 {
        u32::from(r) + u32::from(g) + u32::from(b)
    }

    #[test]
    fn colormap_ends_and_monotone_brightness() {
        assert_eq!(colormap(0.0), VIRIDIS[0]);
        assert_eq!(colormap(1.0), VIRIDIS[8]);
        assert_eq!(colormap(-5.0), VIRIDIS[0]);
        assert_eq!(colormap(7.0), VIRIDIS[8]);
        assert_eq!(colormap(f64::NAN), VIRIDIS[0]);
        assert_eq!(colormap(0.5), VIRIDIS[4]);
        // Perceptual map: brightness rises with t.
        let mut last = 0;
        for k in 0..=100 {
            let b = brightness(colormap(f64::from(k) / 100.0));
            assert!(b + 2 >= last, "brightness drops at t={}", k);
            last = b;
        }
        // Top is yellow: red and green high, blue low.
        let (r, g, b) = colormap(1.0);
        assert!(r > 200 && g > 200 && b < 80);
    }

    #[test]
    fn gaussian_centre_is_top_of_colormap_corners_bottom() {
        let n = 41; // odd: the middle cell holds the peak
        let mut grid = gaussian_grid(n);
        let c = (n / 2) * n + n / 2;
        let colours = density_colours(&grid, n, n).unwrap();
        assert_eq!(colours[c], colormap(1.0));
        for corner in [0, n - 1, n * (n - 1), n * n - 1] {
            assert_eq!(colours[corner], colormap(0.0), "corner {corner}");
            assert!(brightness(colours[c]) > brightness(colours[corner]));
        }
        // Non-finite values become the minimum, and do not spoil the max.
        grid[1] = f64::NAN;
        grid[2] = f64::INFINITY;
        grid[3] = f64::NEG_INFINITY;
        let colours = density_colours(&grid, n, n).unwrap();
        assert_eq!(colours[1], colormap(0.0));
        assert_eq!(colours[2], colormap(0.0));
        assert_eq!(colours[3], colormap(0.0));
        assert_eq!(colours[c], colormap(1.0));
        // Huge log-densities do not overflow.
        let shifted: Vec<f64> = gaussian_grid(n).iter().map(|v| v + 5000.0).collect();
        assert_eq!(density_colours(&shifted, n, n).unwrap()[c], colormap(1.0));
        // All non-finite: everything at the minimum.
        let all_nan = density_colours(&[f64::NAN; 4], 2, 2).unwrap();
        assert!(all_nan.iter().all(|&col| col == colormap(0.0)));
    }

    #[test]
    fn density_rows_are_bottom_up() {
        // 1 column, 2 rows: row 0 (bottom) low, row 1 (top) high.
        let colours = density_colours(&[-10.0, 0.0], 1, 2).unwrap();
        assert_eq!(colours[1], colormap(1.0));
        assert!(brightness(colours[0]) < brightness(colours[1]));
    }

    #[test]
    fn density_2d_writes_png() {
        let n = 60;
        let grid = gaussian_grid(n);
        let z = normals(4000, 7);
        let samples: Vec<[f64; 2]> = z.chunks_exact(2).map(|p| [p[0], p[1]]).collect();
        let z2 = normals(4000, 11);
        let data: Vec<[f64; 2]> = z2
            .chunks_exact(2)
            .map(|p| [0.6 * p[0] + 0.5, 0.8 * p[1] + 0.4 * p[0]])
            .chain([[100.0, 0.0], [f64::NAN, 1.0]]) // out of range: skipped
            .collect();
        let extent = [-3.0, 3.0, -3.0, 3.0];

        let p3 = temp_png("density3");
        density_2d_png(&p3, &grid, n, n, extent, &samples, Some(&data)).unwrap();
        assert_png(&p3);

        let p2 = temp_png("density2");
        density_2d_png(&p2, &grid, n, n, extent, &samples, None).unwrap();
        assert_png(&p2);

        // Non-square grid, empty samples, grid finer than the panel.
        let p4 = temp_png("density_fine");
        let fine = vec![0.0; 700 * 3];
        density_2d_png(&p4, &fine, 700, 3, extent, &[], None).unwrap();
        assert_png(&p4);
    }

    #[test]
    fn density_2d_input_errors() {
        let p = temp_png("density_bad");
        let e = [-1.0, 1.0, -1.0, 1.0];
        let err = density_2d_png(&p, &[0.0; 5], 2, 3, e, &[], None).unwrap_err();
        assert!(matches!(err, PlotError::Input(_)), "{err}");
        let err = density_2d_png(&p, &[], 0, 3, e, &[], None).unwrap_err();
        assert!(matches!(err, PlotError::Input(_)), "{err}");
        let err = density_2d_png(&p, &[], 3, 0, e, &[], None).unwrap_err();
        assert!(matches!(err, PlotError::Input(_)), "{err}");
        let bad = [1.0, -1.0, -1.0, 1.0];
        let err = density_2d_png(&p, &[0.0; 4], 2, 2, bad, &[], None).unwrap_err();
        assert!(matches!(err, PlotError::Input(_)), "{err}");
        let err =
            density_2d_png(&p.with_extension("jpg"), &[0.0; 4], 2, 2, e, &[], None).unwrap_err();
        assert!(matches!(err, PlotError::Input(_)), "{err}");
        assert!(!p.exists());
    }

    #[test]
    fn write_failure_is_write_error() {
        let p = std::env::temp_dir()
            .join(format!("nflow_plot_no_such_dir_{}", std::process::id()))
            .join("x.png");
        let err = lines_png(&p, &[vec![(0.0, 1.0), (1.0, 0.5)]]).unwrap_err();
        match err {
            PlotError::Write { path, .. } => assert!(path.ends_with("x.png")),
            other => panic!("expected Write, got {other}"),
        }
    }

    #[test]
    fn pairs_writes_png() {
        let dim = 4;
        let n = 1500;
        let z = normals(n * dim, 3);
        let samples: Vec<f64> = z
            .chunks_exact(dim)
            .flat_map(|r| [r[0], r[1] + 0.5 * r[0], 2.0 * r[2], r[3] - 1.0])
            .collect();
        let data = normals(n * dim, 5);

        let p = temp_png("pairs");
        pairs_png(&p, &samples, Some(&data), dim, 3).unwrap();
        assert_png(&p);

        let p1 = temp_png("pairs_k1");
        pairs_png(&p1, &samples, None, dim, 1).unwrap();
        assert_png(&p1);

        // Degenerate and empty inputs still produce a picture.
        let pc = temp_png("pairs_const");
        pairs_png(&pc, &[1.0; 20], Some(&[]), 2, 5).unwrap();
        assert_png(&pc);
        let pe = temp_png("pairs_empty");
        pairs_png(&pe, &[], None, 2, 2).unwrap();
        assert_png(&pe);
    }

    #[test]
    fn pairs_input_errors() {
        let p = temp_png("pairs_bad");
        let is_input = |r: Result<(), PlotError>| matches!(r, Err(PlotError::Input(_)));
        assert!(is_input(pairs_png(&p, &[0.0; 7], None, 2, 2)));
        assert!(is_input(pairs_png(&p, &[0.0; 8], Some(&[0.0; 3]), 2, 2)));
        assert!(is_input(pairs_png(&p, &[0.0; 8], None, 0, 2)));
        assert!(is_input(pairs_png(&p, &[0.0; 8], None, 2, 0)));
        assert!(!p.exists());
    }

    #[test]
    fn lines_writes_png() {
        let train: Vec<(f64, f64)> = (0..200)
            .map(|i| (i as f64, 3.0 * (-(i as f64) / 40.0).exp() + 1.0))
            .collect();
        let mut valid: Vec<(f64, f64)> = (0..20)
            .map(|i| (10.0 * i as f64, 3.2 * (-(i as f64) / 3.5).exp() + 1.2))
            .collect();
        valid[7].1 = f64::NAN; // breaks the line
        let lone = vec![(100.0, 2.0)];
        let p = temp_png("lines");
        lines_png(&p, &[train, valid, lone]).unwrap();
        assert_png(&p);

        let pe = temp_png("lines_empty");
        lines_png(&pe, &[]).unwrap();
        assert_png(&pe);
    }

    #[test]
    fn quantile_and_ranges() {
        let v: Vec<f64> = (0..=200).map(f64::from).collect();
        assert!((quantile(&v, 0.5) - 100.0).abs() < 1e-12);
        assert!((quantile(&v, 0.005) - 1.0).abs() < 1e-12);
        let (lo, hi) = column_range(v.iter().copied());
        assert!((lo - (1.0 - 0.05 * 198.0)).abs() < 1e-9);
        assert!((hi - (199.0 + 0.05 * 198.0)).abs() < 1e-9);
        let (lo, hi) = column_range([2.0, 2.0, f64::NAN].into_iter());
        assert!(lo < 2.0 && hi > 2.0);
        assert_eq!(column_range(std::iter::empty()), (-1.0, 1.0));
        let h = histogram([0.1, 0.2, 0.9, 5.0].into_iter(), (0.0, 1.0));
        let area: f64 = h.iter().sum::<f64>() / HIST_BINS as f64;
        assert!((area - 1.0).abs() < 1e-12);
    }
}
