//! Tick labels in a 3x5 bitmap font (plotters is built without a font backend).

use super::*;

/// 3x5 bitmap glyphs for tick labels (no font files needed): rows top to bottom, 3 bits each.
pub(super) fn glyph(c: char) -> Option<[u8; 5]> {
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
pub(super) fn text_width(s: &str, scale: i32) -> i32 {
    s.chars().count() as i32 * 4 * scale - scale
}

/// Draw `s` (digits, '.', '-', 'e', '+') with its top-left corner at `(x, y)`.
pub(super) fn draw_text(
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
pub(super) fn tick_label(v: f64, span: f64) -> String {
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
