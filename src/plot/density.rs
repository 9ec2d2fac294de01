//! The 2-D density heat map with samples (and data) on top.

use super::*;

/// Side-by-side square panels on a light background, each with a title, tick values and axis titles:
///
/// 1. the density heat map of `log_density` (`ny` rows of `nx`, row-major;
///    row 0 is the bottom, `y = extent[2]`), coloured by `exp(log_density)`
///    normalised to its maximum through a viridis-like map (see
///    [`density_colours`]), with a colour bar; the grid is drawn as `nx x ny` equal cells
///    covering `extent`;
/// 2. `samples` as small semi-transparent dots;
/// 3. only when `data` is `Some`: the data as dots.
///
/// `labels`: the heat map's title and the axis titles (the column names); empty ones are left out.
/// `extent` is `[xmin, xmax, ymin, ymax]`; points outside it are skipped.
/// Errors: [`PlotError::Input`] on a size mismatch, `nx == 0` or `ny == 0`, a
/// bad extent or a path not ending in `.png`; [`PlotError::Write`] if drawing
/// or writing fails.
#[allow(clippy::too_many_arguments)]
pub fn density_2d_png(
    path: &Path,
    log_density: &[f64],
    nx: usize,
    ny: usize,
    extent: [f64; 4],
    samples: &[[f64; 2]],
    data: Option<&[[f64; 2]]>,
    labels: &Labels,
) -> Result<(), PlotError> {
    check_path(path)?;
    let colours = density_colours(log_density, nx, ny)?;
    let (xr, yr) = check_extent(extent)?;

    let n_panels: i32 = if data.is_some() { 3 } else { 2 };
    // each cell: 66 px left for tick values and the y title, the panel, 14 px right; a header for the title
    // and a footer for tick values and the x title; a colour bar after the cells
    let (cell, side, header, footer, bar) = (DENSITY_PANEL as i32, 420, 44, 66, 120);
    let size = (
        (n_panels * cell + bar) as u32,
        (header + side + footer) as u32,
    );
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&PAGE_BG).map_err(write_err(path))?;
    let panels: Vec<Panel> = (0..n_panels)
        .map(|k| Panel {
            left: k * cell + 66,
            top: header,
            width: side,
            height: side,
            x: xr,
            y: yr,
        })
        .collect();
    let titles = [
        if labels.title.is_empty() {
            "model density".to_string()
        } else {
            labels.title.clone()
        },
        format!("model samples ({})", samples.len()),
        format!("data ({})", data.map_or(0, |d| d.len())),
    ];
    for (k, panel) in panels.iter().enumerate() {
        let centre = panel.left + panel.width / 2;
        draw_text(
            &root,
            path,
            (centre, 12),
            &titles[k],
            18.0,
            Anchor::TopCentre,
        )?;
        for q in 0..=2 {
            let f = f64::from(q) / 2.0;
            let xv = tick_label(xr.0 + f * (xr.1 - xr.0), xr.1 - xr.0);
            let (px, py) = panel.frac_px(f, 0.0);
            draw_text(&root, path, (px, py + 6), &xv, 13.0, Anchor::TopCentre)?;
            let yv = tick_label(yr.0 + f * (yr.1 - yr.0), yr.1 - yr.0);
            let (px, py) = panel.frac_px(0.0, f);
            draw_text(&root, path, (px - 6, py), &yv, 13.0, Anchor::CentreRight)?;
        }
        draw_text(
            &root,
            path,
            (centre, panel.top + panel.height + 28),
            &labels.x,
            15.0,
            Anchor::TopCentre,
        )?;
        draw_text_up(
            &root,
            path,
            (panel.left - 56, panel.top + panel.height / 2),
            &labels.y,
            15.0,
        )?;
    }

    let heat = &panels[0];
    super::heat(&root, path, heat, &colours, nx, ny)?;
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
    // the colour bar: density relative to its maximum, 0 at the bottom
    let (bx, by, bw) = (n_panels * cell + 10, header, 22);
    for py in 0..side {
        let (r, g, b) = colormap(1.0 - (f64::from(py) + 0.5) / f64::from(side));
        root.draw(&Rectangle::new(
            [(bx, by + py), (bx + bw, by + py + 1)],
            RGBColor(r, g, b).filled(),
        ))
        .map_err(write_err(path))?;
    }
    root.draw(&Rectangle::new([(bx, by), (bx + bw, by + side)], FRAME))
        .map_err(write_err(path))?;
    for (f, v) in [(0.0, "0"), (0.5, "0.5"), (1.0, "1")] {
        let y = by + side - (f * f64::from(side)) as i32;
        draw_text(&root, path, (bx + bw + 5, y), v, 13.0, Anchor::CentreLeft)?;
    }
    draw_text_up(
        &root,
        path,
        (bx + bw + 50, by + side / 2),
        "density / its maximum",
        14.0,
    )?;
    root.present().map_err(write_err(path))
}
