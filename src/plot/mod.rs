//! PNG plots for flows: 2-D density heat maps, pairwise scatter matrices and learning curves (with a title,
//! axis titles and a legend: [`Labels`]), drawn with plotters' shapes in pixel coordinates this module computes
//! itself and text in a font embedded in the binary (`text.rs`).
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
    /// The model could not compute what the plot shows.
    #[error(transparent)]
    Model(#[from] crate::Error),
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// The words of a plot: its title, the axis titles, and a legend entry per series (empty: none).
#[derive(Clone, Debug, Default)]
pub struct Labels {
    pub title: String,
    pub x: String,
    pub y: String,
    pub series: Vec<String>,
}
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

/// A heat map of `nx x ny` cell colours (row-major, row 0 at the bottom) filling `panel`, pixel by pixel: each
/// pixel takes the colour of the cell under its centre.
fn heat(
    root: &Area,
    path: &Path,
    panel: &Panel,
    colours: &[(u8, u8, u8)],
    nx: usize,
    ny: usize,
) -> Result<(), PlotError> {
    if nx == 0 || ny == 0 || colours.len() != nx * ny {
        return Err(PlotError::Input(format!(
            "a heat map of {} values for a {nx} x {ny} grid",
            colours.len()
        )));
    }
    for py in 0..panel.height {
        // fraction measured upwards from the bottom edge
        let fy = 1.0 - (f64::from(py) + 0.5) / f64::from(panel.height);
        let row = ((fy * ny as f64) as usize).min(ny - 1);
        for px in 0..panel.width {
            let fx = (f64::from(px) + 0.5) / f64::from(panel.width);
            let col = ((fx * nx as f64) as usize).min(nx - 1);
            let (r, g, b) = colours[row * nx + col];
            root.draw_pixel((panel.left + px, panel.top + py), &RGBColor(r, g, b))
                .map_err(write_err(path))?;
        }
    }
    Ok(())
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

mod anim;
mod density;
mod images;
mod layers;
mod lines;
mod pairs;
mod text;

pub use anim::{density_frame_png, gif_from_pngs};
pub use density::density_2d_png;
pub use images::{image_grid_png, latents_png, pixel_max, ImageRow};
pub use layers::{extent_of, flow_stages, grid_points, layers_png, SliceView, Stage};
pub use lines::lines_png;
pub use pairs::pairs_png;
use pairs::*;
use text::*;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels() {
        assert_eq!(tick_label(15.72, 62.9), "15.7");
        assert_eq!(tick_label(-0.01, 62.9), "0.0");
        assert_eq!(tick_label(1.2345, 0.8), "1.234");
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
        density_2d_png(
            &p3,
            &grid,
            n,
            n,
            extent,
            &samples,
            Some(&data),
            &Labels::default(),
        )
        .unwrap();
        assert_png(&p3);

        let p2 = temp_png("density2");
        density_2d_png(&p2, &grid, n, n, extent, &samples, None, &Labels::default()).unwrap();
        assert_png(&p2);

        // Non-square grid, empty samples, grid finer than the panel.
        let p4 = temp_png("density_fine");
        let fine = vec![0.0; 700 * 3];
        density_2d_png(&p4, &fine, 700, 3, extent, &[], None, &Labels::default()).unwrap();
        assert_png(&p4);
    }

    #[test]
    fn density_2d_input_errors() {
        let p = temp_png("density_bad");
        let e = [-1.0, 1.0, -1.0, 1.0];
        let err =
            density_2d_png(&p, &[0.0; 5], 2, 3, e, &[], None, &Labels::default()).unwrap_err();
        assert!(matches!(err, PlotError::Input(_)), "{err}");
        let err = density_2d_png(&p, &[], 0, 3, e, &[], None, &Labels::default()).unwrap_err();
        assert!(matches!(err, PlotError::Input(_)), "{err}");
        let err = density_2d_png(&p, &[], 3, 0, e, &[], None, &Labels::default()).unwrap_err();
        assert!(matches!(err, PlotError::Input(_)), "{err}");
        let bad = [1.0, -1.0, -1.0, 1.0];
        let err =
            density_2d_png(&p, &[0.0; 4], 2, 2, bad, &[], None, &Labels::default()).unwrap_err();
        assert!(matches!(err, PlotError::Input(_)), "{err}");
        let err = density_2d_png(
            &p.with_extension("jpg"),
            &[0.0; 4],
            2,
            2,
            e,
            &[],
            None,
            &Labels::default(),
        )
        .unwrap_err();
        assert!(matches!(err, PlotError::Input(_)), "{err}");
        assert!(!p.exists());
    }

    #[test]
    fn write_failure_is_write_error() {
        let p = std::env::temp_dir()
            .join(format!("nflow_plot_no_such_dir_{}", std::process::id()))
            .join("x.png");
        let err = lines_png(&p, &[vec![(0.0, 1.0), (1.0, 0.5)]], &Labels::default()).unwrap_err();
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
        pairs_png(&p, &samples, Some(&data), dim, 3, &[]).unwrap();
        assert_png(&p);

        let p1 = temp_png("pairs_k1");
        pairs_png(&p1, &samples, None, dim, 1, &[]).unwrap();
        assert_png(&p1);

        // Degenerate and empty inputs still produce a picture.
        let pc = temp_png("pairs_const");
        pairs_png(&pc, &[1.0; 20], Some(&[]), 2, 5, &["u".into(), "v".into()]).unwrap();
        assert_png(&pc);
        let pe = temp_png("pairs_empty");
        pairs_png(&pe, &[], None, 2, 2, &[]).unwrap();
        assert_png(&pe);
    }

    #[test]
    fn pairs_input_errors() {
        let p = temp_png("pairs_bad");
        let is_input = |r: Result<(), PlotError>| matches!(r, Err(PlotError::Input(_)));
        assert!(is_input(pairs_png(&p, &[0.0; 7], None, 2, 2, &[])));
        assert!(is_input(pairs_png(
            &p,
            &[0.0; 8],
            Some(&[0.0; 3]),
            2,
            2,
            &[]
        )));
        assert!(is_input(pairs_png(&p, &[0.0; 8], None, 0, 2, &[])));
        assert!(is_input(pairs_png(&p, &[0.0; 8], None, 2, 0, &[])));
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
        let labels = Labels {
            title: "Learning curve".into(),
            x: "minutes".into(),
            y: "NLL (nats)".into(),
            series: vec!["test".into(), "validation".into(), "train".into()],
        };
        lines_png(&p, &[train.clone(), valid, lone], &labels).unwrap();
        assert_png(&p);
        let pe = temp_png("lines_empty");
        lines_png(&pe, &[], &Labels::default()).unwrap();
        assert_png(&pe);

        // the words are drawn: dark pixels in the title band, the y-title strip and the legend's corner, none
        // there without labels
        let dark = |path: &Path, x0: u32, y0: u32, x1: u32, y1: u32| -> usize {
            let img = image::open(path).unwrap().to_rgb8();
            let mut n = 0;
            for y in y0..y1 {
                for x in x0..x1 {
                    let px = img.get_pixel(x, y);
                    n += usize::from(px[0] < 120 && px[1] < 120 && px[2] < 120);
                }
            }
            n
        };
        let bare = temp_png("lines_bare");
        let one = vec![(0.0, 1.0), (1.0, 2.0)];
        lines_png(&bare, std::slice::from_ref(&one), &Labels::default()).unwrap();
        let named = temp_png("lines_named");
        let words = Labels {
            series: vec!["train".into()],
            ..labels
        };
        lines_png(&named, std::slice::from_ref(&one), &words).unwrap();
        for (x0, y0, x1, y1, what) in [
            (200, 0, 600, 40, "title"),
            (0, 150, 30, 350, "y-axis title"),
            (300, 470, 600, 500, "x-axis title"),
            (600, 50, 780, 80, "legend"),
        ] {
            assert_eq!(dark(&bare, x0, y0, x1, y1), 0, "{what} without labels");
            assert!(dark(&named, x0, y0, x1, y1) > 20, "{what} not drawn");
        }
        for f in [&p, &pe, &bare, &named] {
            let _ = std::fs::remove_file(f);
        }
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
