//! Text in plots: DejaVu Sans, embedded in the binary at build time (`assets/fonts`, the Bitstream Vera
//! licence) and drawn by plotters' ab_glyph backend, so no font on the machine is needed.

use super::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{FontStyle, FontTransform};

/// The font's name among plotters' registered fonts.
const FAMILY: &str = "nflow-sans";
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
pub(super) const TEXT: RGBColor = RGBColor(40, 40, 40);

/// The text style of `size` pixels (the font registered on first use).
pub(super) fn font(size: f64) -> TextStyle<'static> {
    static REGISTER: std::sync::Once = std::sync::Once::new();
    REGISTER.call_once(|| {
        // the bytes are a font this crate ships: parsing cannot fail short of a corrupt build
        let _ = plotters::style::register_font(FAMILY, FontStyle::Normal, FONT);
    });
    (FAMILY, size).into_font().color(&TEXT)
}

/// Pixel width of `s` at `size`.
pub(super) fn text_width(area: &Area, s: &str, size: f64) -> i32 {
    area.estimate_text_size(s, &font(size))
        .map_or(0, |(w, _)| w as i32)
}

/// Which point of a text sits at the given position.
#[derive(Clone, Copy)]
pub(super) enum Anchor {
    TopCentre,
    CentreLeft,
    CentreRight,
}

/// Draw `s` at `(x, y)` (the anchor point), `size` pixels high.
pub(super) fn draw_text(
    area: &Area,
    path: &Path,
    (x, y): (i32, i32),
    s: &str,
    size: f64,
    anchor: Anchor,
) -> Result<(), PlotError> {
    let pos = match anchor {
        Anchor::TopCentre => Pos::new(HPos::Center, VPos::Top),
        Anchor::CentreLeft => Pos::new(HPos::Left, VPos::Center),
        Anchor::CentreRight => Pos::new(HPos::Right, VPos::Center),
    };
    area.draw(&Text::new(s.to_string(), (x, y), font(size).pos(pos)))
        .map_err(write_err(path))
}

/// Draw `s` turned a quarter left (a y-axis title), centred on `(x, y)`.
pub(super) fn draw_text_up(
    area: &Area,
    path: &Path,
    (x, y): (i32, i32),
    s: &str,
    size: f64,
) -> Result<(), PlotError> {
    let style = font(size)
        .transform(FontTransform::Rotate270)
        .pos(Pos::new(HPos::Center, VPos::Center));
    area.draw(&Text::new(s.to_string(), (x, y), style))
        .map_err(write_err(path))
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
