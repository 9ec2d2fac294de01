//! Learning curves: several series of (x, y) points.

use super::*;

/// A line chart (800x500 px): each series of `(x, y)` points is a polyline in its own colour (10-colour
/// palette, cycling), over a light background with a frame, faint quarter grid lines and the axis values at the
/// frame and the quarters; `labels` gives the title, the axis titles and a legend entry per named series. The x
/// and y ranges cover all finite points with a 5% margin. A non-finite point breaks its line; a lone point is
/// drawn as a dot. With no finite point at all just the empty frame is drawn.
///
/// Errors: [`PlotError::Input`] when the path does not end in `.png`;
/// [`PlotError::Write`] if drawing or writing fails.
pub fn lines_png(
    path: &Path,
    series: &[Vec<(f64, f64)>],
    labels: &Labels,
) -> Result<(), PlotError> {
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
    // room for the title above, the tick labels and axis titles on the left and below
    let (left, bottom, top) = (96, 62, 44);
    let panel = Panel {
        left,
        top,
        width: LINES_SIZE.0 as i32 - left - 20,
        height: LINES_SIZE.1 as i32 - top - bottom,
        x: xr,
        y: yr,
    };
    panel.fill(&root, path)?;
    panel.grid(&root, path)?;
    let tick = 14.0;
    for k in 0..=4 {
        let f = f64::from(k) / 4.0;
        let xv = tick_label(xr.0 + f * (xr.1 - xr.0), xr.1 - xr.0);
        let (px, py) = panel.frac_px(f, 0.0);
        draw_text(&root, path, (px, py + 6), &xv, tick, Anchor::TopCentre)?;
        let yv = tick_label(yr.0 + f * (yr.1 - yr.0), yr.1 - yr.0);
        let (px, py) = panel.frac_px(0.0, f);
        draw_text(&root, path, (px - 8, py), &yv, tick, Anchor::CentreRight)?;
    }
    let centre_x = panel.left + panel.width / 2;
    draw_text(
        &root,
        path,
        (centre_x, 10),
        &labels.title,
        20.0,
        Anchor::TopCentre,
    )?;
    draw_text(
        &root,
        path,
        (centre_x, panel.top + panel.height + 30),
        &labels.x,
        16.0,
        Anchor::TopCentre,
    )?;
    draw_text_up(
        &root,
        path,
        (18, panel.top + panel.height / 2),
        &labels.y,
        16.0,
    )?;
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
    // the legend: the named series that have a point, top right inside the panel
    let entries: Vec<(usize, &String)> = labels
        .series
        .iter()
        .enumerate()
        .filter(|(k, n)| !n.is_empty() && series.get(*k).is_some_and(|p| p.iter().any(finite)))
        .collect();
    if !entries.is_empty() {
        let size = 14.0;
        let wide = entries
            .iter()
            .map(|(_, n)| text_width(&root, n, size))
            .max()
            .unwrap_or(0);
        let (w, h) = (wide + 52, entries.len() as i32 * 22 + 10);
        let (x0, y0) = (panel.left + panel.width - w - 10, panel.top + 10);
        root.draw(&Rectangle::new(
            [(x0, y0), (x0 + w, y0 + h)],
            PANEL_BG.mix(0.9).filled(),
        ))
        .map_err(write_err(path))?;
        root.draw(&Rectangle::new([(x0, y0), (x0 + w, y0 + h)], FRAME))
            .map_err(write_err(path))?;
        for (row, (k, name)) in entries.iter().enumerate() {
            let y = y0 + 16 + row as i32 * 22;
            let colour = LINE_PALETTE[k % LINE_PALETTE.len()];
            root.draw(&PathElement::new(
                vec![(x0 + 8, y), (x0 + 36, y)],
                colour.stroke_width(3),
            ))
            .map_err(write_err(path))?;
            draw_text(&root, path, (x0 + 44, y), name, size, Anchor::CentreLeft)?;
        }
    }
    root.present().map_err(write_err(path))
}
