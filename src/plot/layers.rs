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
pub(super) fn diverging(v: f64) -> RGBColor {
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
            &density_colours(&clip_top(&st.log_density), st.n, st.n)?,
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

/// The log-densities with the top 0.5% of cells lowered to the 99.5th percentile: a slice through a
/// skewed density can peak in a few cells, which would leave the rest of the panel black.
fn clip_top(ld: &[f64]) -> Vec<f64> {
    let mut v: Vec<f64> = ld.iter().copied().filter(|v| v.is_finite()).collect();
    if v.is_empty() {
        return ld.to_vec();
    }
    v.sort_by(f64::total_cmp);
    let q = v[((v.len() as f64 * 0.995) as usize).min(v.len() - 1)];
    ld.iter().map(|&x| if x > q { q } else { x }).collect()
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

/// Which plane of a D-dimensional model the layer figure shows: two columns varied, every other column held at
/// a reference row (for D = 2, the whole space).
#[derive(Clone, Debug)]
pub struct SliceView {
    /// The two columns on the panels' x and y axes.
    pub axes: [usize; 2],
    /// A data-space row (all D columns): the values the other columns are held at. `None`: each column's
    /// median over the points.
    pub reference: Option<Vec<f64>>,
}

impl Default for SliceView {
    fn default() -> Self {
        Self {
            axes: [0, 1],
            reference: None,
        }
    }
}

/// The stages of a model's change of variables for [`layers_png`]: the data space (the rows of `points`, the
/// model's density) and the flow's coordinates after each layer (standardised, then each transform), with a
/// regular grid of the data space carried along and each layer's `log|det J|` on the previous stage's grid of
/// `n x n` cells.
///
/// For D > 2 every panel is the plane of `view.axes` through the reference row as it stands at that stage
/// (`f_k ∘ … ∘ f_1` of it): the stage's log-density on that slice (the conditional density up to a constant),
/// the points projected onto the two axes, and the grid of the data-space plane carried along and projected.
pub fn flow_stages(
    model: &crate::Model,
    points: &crate::data::Table,
    n: usize,
    view: &SliceView,
) -> Result<Vec<Stage>, crate::Error> {
    use crate::engine::Mat;
    let d = model.dim();
    let bad = |m: String| Err(crate::Error::Config(m));
    if d < 2 || model.arch.context_dim > 0 || model.preprocess.is_some() {
        return bad(
            "the layer-by-layer figure draws unconditional models of 2 or more columns without \
             preprocessing"
                .into(),
        );
    }
    let [a, b] = view.axes;
    if a >= d || b >= d || a == b {
        return bad(format!(
            "the figure's axes must be two different columns of the model's {d}, got {a} and {b}"
        ));
    }
    if points.rows == 0 || points.cols != d {
        return bad(format!(
            "the figure needs points with the model's {d} columns, got {} rows of {}",
            points.rows, points.cols
        ));
    }
    let reference = match &view.reference {
        Some(r) if r.len() != d => {
            return bad(format!(
                "the reference row has {} values, the model has {d} columns",
                r.len()
            ))
        }
        Some(r) if r.iter().any(|v| !v.is_finite()) => {
            return bad("the reference row must be finite".into())
        }
        Some(r) => r.clone(),
        None => (0..d)
            .map(|c| {
                let mut v: Vec<f64> = (0..points.rows)
                    .map(|r| points.row(r)[c])
                    .filter(|v| v.is_finite())
                    .collect();
                v.sort_by(f64::total_cmp);
                v.get(v.len() / 2).copied().unwrap_or(0.0)
            })
            .collect(),
    };
    let n = n.max(2);
    // the plane's points: the reference row with the two axes set
    let lift = |xy: &[f64]| -> Vec<f64> {
        let mut v = Vec::with_capacity(xy.len() / 2 * d);
        for p in xy.chunks(2) {
            let at = v.len();
            v.extend_from_slice(&reference);
            v[at + a] = p[0];
            v[at + b] = p[1];
        }
        v
    };
    let project = |m: &Mat<f32>| -> Vec<[f64; 2]> {
        (0..m.rows)
            .map(|r| [f64::from(m.at(r, a)), f64::from(m.at(r, b))])
            .collect()
    };
    let raw: Vec<[f64; 2]> = (0..points.rows)
        .map(|r| [points.row(r)[a], points.row(r)[b]])
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
    let std = |mut v: Vec<f64>| {
        model.norm.apply(&mut v);
        Mat::<f32>::from_f64(v.len() / d, d, &v)
    };
    let flat = |p: &[[f64; 2]]| p.iter().flat_map(|q| [q[0], q[1]]).collect::<Vec<f64>>();
    let line_pts: Vec<[f64; 2]> = lines0.iter().flatten().copied().collect();
    let g0 = lift(&grid_points(e0, n));
    let table =
        |v: Vec<f64>| crate::data::Table::new(model.columns.clone(), v.len() / d, v, "grid");
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
    let (mut pts, mut lns, mut refr) = (
        std(points.data.clone()),
        std(lift(&flat(&line_pts))),
        std(reference.clone()),
    );
    // the previous stage's grid, in flow coordinates, and its extent as drawn
    let (mut prev_grid, mut prev_ext) = (std(g0), e0);
    let last = flow.transforms.len();
    for (k, t) in flow.transforms.iter().enumerate() {
        let ld = t.forward(&prev_grid, None).1;
        pts = t.forward(&pts, None).0;
        lns = t.forward(&lns, None).0;
        refr = t.forward(&refr, None).0;
        let at = project(&pts);
        let ext = extent_of(&at);
        // this stage's slice: the reference row as it stands now, the two axes over the panel
        let mut g = Vec::with_capacity(n * n * d);
        let here = refr.to_f64();
        for p in grid_points(ext, n).chunks(2) {
            let i = g.len();
            g.extend_from_slice(&here);
            g[i + a] = p[0];
            g[i + b] = p[1];
        }
        let g = Mat::<f32>::from_f64(n * n, d, &g);
        let lp = flow.stage_log_prob(k + 1, &g, None);
        let lp: Vec<f64> = lp.iter().map(|&v| f64::from(v)).collect();
        let line_at = project(&lns);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Standardizer, Table};
    use crate::engine::{randn, rng, Mat};
    use crate::flows::{FlowKind, FlowSpec};

    /// A 3-D MAF with random weights and a non-trivial standardisation.
    fn model3() -> crate::Model {
        use rand::Rng;
        let spec = FlowSpec {
            layers: 2,
            hidden: 8,
            ..FlowSpec::preset(FlowKind::Maf, 3)
        };
        let arch = spec.architecture().unwrap();
        let mut flow = arch.build::<f32>().unwrap();
        let mut r = rng(5);
        for (_, p) in flow.named_params_mut() {
            for k in 0..p.value().len() {
                if p.trainable && p.is_free(k) {
                    p.value_mut()[k] += r.gen_range(-0.3..0.3);
                }
            }
        }
        crate::Model {
            arch,
            preset: Some(spec),
            flow,
            columns: vec!["a".into(), "b".into(), "c".into()],
            norm: Standardizer {
                mean: vec![1.0, -2.0, 0.5],
                std: vec![2.0, 0.5, 1.5],
            },
            context_columns: Vec::new(),
            context_norm: None,
            context_classes: Vec::new(),
            preprocess: None,
            summary: None,
            log: Vec::new(),
        }
    }

    #[test]
    fn slices_of_a_3d_model_follow_the_reference_row() {
        let m = model3();
        let x: Mat<f64> = randn(&mut rng(1), 50, 3);
        let pts = Table::new(m.columns.clone(), 50, x.data.clone(), "pts");
        let reference = vec![0.3, -1.7, 1.1];
        let view = SliceView {
            axes: [2, 0],
            reference: Some(reference.clone()),
        };
        let n = 6;
        let st = flow_stages(&m, &pts, n, &view).unwrap();
        assert_eq!(st.len(), m.flow.transforms.len() + 1);
        // stage 0: the model's density on the plane (c, a) through the reference row
        let g = grid_points(st[0].extent, n);
        let mut rows = Vec::new();
        for p in g.chunks(2) {
            rows.extend_from_slice(&[p[1], reference[1], p[0]]);
        }
        let want = m
            .log_prob_table(&Table::new(m.columns.clone(), n * n, rows, "g"))
            .unwrap();
        assert_eq!(st[0].log_density, want);
        // the points are projected onto (c, a)
        assert_eq!(st[0].points[3], [x.data[3 * 3 + 2], x.data[3 * 3]]);
        // the noise stage: the standard normal on the plane through the reference row's noise
        let z = m
            .to_noise(&Table::new(m.columns.clone(), 1, reference, "r"), None)
            .unwrap();
        let last = st.last().unwrap();
        let g = grid_points(last.extent, n);
        let half_log_2pi = 0.5 * (2.0 * std::f64::consts::PI).ln();
        for (i, p) in g.chunks(2).enumerate() {
            let want: f64 = [p[1], z[1], p[0]]
                .iter()
                .map(|v| -0.5 * v * v - half_log_2pi)
                .sum();
            assert!(
                (last.log_density[i] - want).abs() < 1e-3,
                "cell {i}: {} vs {want}",
                last.log_density[i]
            );
        }
        // bad views are refused with the reason
        for (axes, r) in [([0, 0], None), ([0, 3], None), ([0, 1], Some(vec![0.0; 2]))] {
            let e = flow_stages(&m, &pts, n, &SliceView { axes, reference: r }).unwrap_err();
            assert!(e.to_string().contains("axes") || e.to_string().contains("reference"));
        }
    }
}
