//! The change of variables layer by layer, for 2-D flows: one column per stage from data to noise.

use super::*;

/// One stage of [`layers_png`]: the distribution after the first `k` layers.
#[derive(Clone, Debug)]
pub struct Stage {
    pub title: String,
    /// `[xmin, xmax, ymin, ymax]` of the panel.
    pub extent: [f64; 4],
    /// The log-density of this stage on an `n x n` grid over `extent` (row-major, row 0 at the bottom).
    pub log_density: Vec<f64>,
    pub n: usize,
    /// The points (data rows or samples) at this stage, and a shade in [0, 1] each (where they started).
    pub points: Vec<[f64; 2]>,
    pub shade: Vec<f64>,
    /// The lines of a regular grid drawn at stage 0, carried through the layers.
    pub lines: Vec<Vec<[f64; 2]>>,
    /// `log|det J|` of the layer that leads here, on an `n x n` grid over the previous stage's extent.
    pub log_det: Option<(Vec<f64>, [f64; 4])>,
}

/// Where a point started: orange-red on the left of the data, blue on the right.
fn ramp(t: f64) -> RGBColor {
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.5
    };
    let mix = |a: f64, b: f64| (a + (b - a) * t) as u8;
    RGBColor(mix(240.0, 40.0), mix(90.0, 170.0), mix(30.0, 240.0))
}

/// Blue where a layer contracts (log|det J| < 0), white where it keeps volume, red where it expands;
/// `v` is scaled to [-1, 1].
fn diverging(v: f64) -> RGBColor {
    let v = if v.is_finite() {
        v.clamp(-1.0, 1.0)
    } else {
        0.0
    };
    let (r, g, b) = if v < 0.0 {
        (255.0 + v * 200.0, 255.0 + v * 150.0, 255.0)
    } else {
        (255.0, 255.0 - v * 170.0, 255.0 - v * 200.0)
    };
    RGBColor(r as u8, g as u8, b as u8)
}

/// The figure: per stage (columns, wrapped after five) a panel with the stage's density (viridis, scaled to its
/// maximum), the carried grid (white lines) and the points shaded by where they started; under it, for every
/// layer, its `log|det J|` over the previous stage (blue contracts, red expands; the range in the caption).
pub fn layers_png(path: &Path, stages: &[Stage], title: &str) -> Result<(), PlotError> {
    check_path(path)?;
    if stages.is_empty() {
        return Err(PlotError::Input("no stages to draw".into()));
    }
    let per_row = stages.len().min(5) as i32;
    let rows = stages.len().div_ceil(5) as i32;
    let (side, cell_w, head) = (220, 250, 50);
    let cell_h = 30 + side + 34 + side + 30;
    let size = (
        (per_row * cell_w + 20) as u32,
        (head + rows * cell_h) as u32,
    );
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&PAGE_BG).map_err(write_err(path))?;
    draw_text(
        &root,
        path,
        (size.0 as i32 / 2, 12),
        title,
        20.0,
        Anchor::TopCentre,
    )?;
    for (k, st) in stages.iter().enumerate() {
        let (col, row) = ((k as i32) % 5, (k as i32) / 5);
        let (cx, cy) = (20 + col * cell_w, head + row * cell_h);
        let (xr, yr) = check_extent(st.extent)?;
        let panel = Panel {
            left: cx,
            top: cy + 30,
            width: side,
            height: side,
            x: xr,
            y: yr,
        };
        draw_text(
            &root,
            path,
            (cx + side / 2, cy + 6),
            &st.title,
            15.0,
            Anchor::TopCentre,
        )?;
        heat(
            &root,
            path,
            &panel,
            &density_colours(&st.log_density, st.n, st.n)?,
            st.n,
            st.n,
        )?;
        for line in &st.lines {
            let px: Vec<(i32, i32)> = line
                .iter()
                .filter_map(|p| panel.pixel_of(p[0], p[1]))
                .collect();
            root.draw(&PathElement::new(px, WHITE.mix(0.55).stroke_width(1)))
                .map_err(write_err(path))?;
        }
        for (p, &s) in st.points.iter().zip(&st.shade) {
            if let Some(px) = panel.pixel_of(p[0], p[1]) {
                root.draw(&Circle::new(px, 1, ramp(s).mix(0.7).filled()))
                    .map_err(write_err(path))?;
            }
        }
        panel.frame(&root, path)?;
        if let Some((ld, ext)) = &st.log_det {
            let (xr, yr) = check_extent(*ext)?;
            let below = Panel {
                top: cy + 30 + side + 34,
                x: xr,
                y: yr,
                ..panel
            };
            let m = ld
                .iter()
                .filter(|v| v.is_finite())
                .fold(0.0f64, |a, v| a.max(v.abs()))
                .max(1e-12);
            let (lo, hi) = ld
                .iter()
                .filter(|v| v.is_finite())
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
                    (a.min(v), b.max(v))
                });
            let colours: Vec<(u8, u8, u8)> = ld
                .iter()
                .map(|&v| {
                    let c = diverging(v / m);
                    (c.0, c.1, c.2)
                })
                .collect();
            heat(&root, path, &below, &colours, st.n, st.n)?;
            below.frame(&root, path)?;
            draw_text(
                &root,
                path,
                (cx + side / 2, below.top - 24),
                &format!(
                    "log|det J| {} to {}",
                    tick_label(lo, hi - lo),
                    tick_label(hi, hi - lo)
                ),
                13.0,
                Anchor::TopCentre,
            )?;
        }
    }
    root.present().map_err(write_err(path))
}

/// A square-ish view of 2-D points: their 0.5%-99.5% quantiles on each axis with 15% margins.
pub fn extent_of(pts: &[[f64; 2]]) -> [f64; 4] {
    let q = |k: usize| {
        let mut v: Vec<f64> = pts.iter().map(|p| p[k]).filter(|v| v.is_finite()).collect();
        if v.is_empty() {
            return (-1.0, 1.0);
        }
        v.sort_by(f64::total_cmp);
        let lo = v[(v.len() as f64 * 0.005) as usize];
        let hi = v[((v.len() as f64 * 0.995) as usize).min(v.len() - 1)];
        let m = 0.15 * (hi - lo).max(1e-9);
        (lo - m, hi + m)
    };
    let (x0, x1) = q(0);
    let (y0, y1) = q(1);
    [x0, x1, y0, y1]
}

/// The cell centres of an `n x n` grid over `e` (row 0 at the bottom), row-major `(x, y)` pairs.
pub fn grid_points(e: [f64; 4], n: usize) -> Vec<f64> {
    let mut v = Vec::with_capacity(n * n * 2);
    for j in 0..n {
        for i in 0..n {
            v.push(e[0] + (i as f64 + 0.5) * (e[1] - e[0]) / n as f64);
            v.push(e[2] + (j as f64 + 0.5) * (e[3] - e[2]) / n as f64);
        }
    }
    v
}

fn pairs(m: &crate::engine::Mat<f32>) -> Vec<[f64; 2]> {
    (0..m.rows)
        .map(|r| [f64::from(m.at(r, 0)), f64::from(m.at(r, 1))])
        .collect()
}

/// The stages of a 2-D model's change of variables for [`layers_png`]: the data space (the rows of `points`
/// as given, the model's density) and the flow's coordinates after each layer (standardised, then each
/// transform), with a regular grid of the data space carried along and each layer's `log|det J|` on the
/// previous stage's grid of `n x n` cells.
pub fn flow_stages(
    model: &crate::Model,
    points: &crate::data::Table,
    n: usize,
) -> Result<Vec<Stage>, crate::Error> {
    use crate::engine::Mat;
    if model.dim() != 2 || model.arch.context_dim > 0 || model.preprocess.is_some() {
        return Err(crate::Error::Config(
            "the layer-by-layer figure draws unconditional 2-D models without preprocessing".into(),
        ));
    }
    let n = n.max(2);
    let raw: Vec<[f64; 2]> = (0..points.rows)
        .map(|r| [points.row(r)[0], points.row(r)[1]])
        .collect();
    let e0 = extent_of(&raw);
    // where each point started, left to right
    let shade: Vec<f64> = raw
        .iter()
        .map(|p| (p[0] - e0[0]) / (e0[1] - e0[0]))
        .collect();
    // a regular grid of the data space: 9 lines each way, 100 points a line
    let mut lines0 = Vec::new();
    for k in 0..9 {
        let f = (f64::from(k) + 1.0) / 10.0;
        let (x, y) = (e0[0] + f * (e0[1] - e0[0]), e0[2] + f * (e0[3] - e0[2]));
        lines0.push(
            (0..100)
                .map(|i| [x, e0[2] + f64::from(i) / 99.0 * (e0[3] - e0[2])])
                .collect::<Vec<_>>(),
        );
        lines0.push(
            (0..100)
                .map(|i| [e0[0] + f64::from(i) / 99.0 * (e0[1] - e0[0]), y])
                .collect::<Vec<_>>(),
        );
    }
    let std = |v: &[f64], rows: usize| {
        let mut v = v.to_vec();
        model.norm.apply(&mut v);
        Mat::<f32>::from_f64(rows, 2, &v)
    };
    let flat = |p: &[[f64; 2]]| p.iter().flat_map(|q| [q[0], q[1]]).collect::<Vec<f64>>();
    let line_pts: Vec<[f64; 2]> = lines0.iter().flatten().copied().collect();
    let g0 = grid_points(e0, n);
    let table =
        |v: Vec<f64>| crate::data::Table::new(model.columns.clone(), v.len() / 2, v, "grid");
    let mut stages = vec![Stage {
        title: "data".into(),
        extent: e0,
        log_density: model.log_prob_table(&table(g0.clone()))?,
        n,
        points: raw.clone(),
        shade: shade.clone(),
        lines: lines0.clone(),
        log_det: None,
    }];
    let flow = &model.flow;
    let (mut pts, mut lns) = (
        std(&flat(&raw), raw.len()),
        std(&flat(&line_pts), line_pts.len()),
    );
    // the previous stage's grid, in flow coordinates, and its extent as drawn
    let (mut prev_grid, mut prev_ext) = (std(&g0, n * n), e0);
    let last = flow.transforms.len();
    for (k, t) in flow.transforms.iter().enumerate() {
        let ld = t.forward(&prev_grid, None).1;
        pts = t.forward(&pts, None).0;
        lns = t.forward(&lns, None).0;
        let at = pairs(&pts);
        let ext = extent_of(&at);
        let g = Mat::<f32>::from_f64(n * n, 2, &grid_points(ext, n));
        let lp = flow.stage_log_prob(k + 1, &g, None);
        let lp: Vec<f64> = lp.iter().map(|&v| f64::from(v)).collect();
        let line_at = pairs(&lns);
        stages.push(Stage {
            title: if k + 1 == last {
                format!("{}: {} = noise", k + 1, t.kind())
            } else {
                format!("{}: {}", k + 1, t.kind())
            },
            extent: ext,
            log_density: lp,
            n,
            points: at,
            shade: shade.clone(),
            lines: line_at.chunks(100).map(<[[f64; 2]]>::to_vec).collect(),
            log_det: Some((ld.iter().map(|&v| f64::from(v)).collect(), prev_ext)),
        });
        prev_grid = g;
        prev_ext = ext;
    }
    Ok(stages)
}
