//! Learning curves: several series of (x, y) points.

use super::*;

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
