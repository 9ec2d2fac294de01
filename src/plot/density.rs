//! The 2-D density heat map with samples (and data) on top.

use super::*;

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
