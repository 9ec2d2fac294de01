//! Training as an animation: one density panel per frame, the frames in a looping GIF.

use super::*;
use std::path::PathBuf;

/// One frame: the density heat map of `log_density` (`n x n`, row 0 at the bottom) over `extent`, scaled to
/// its maximum, with `title` above (the step).
pub fn density_frame_png(
    path: &Path,
    log_density: &[f64],
    n: usize,
    extent: [f64; 4],
    title: &str,
) -> Result<(), PlotError> {
    check_path(path)?;
    let (xr, yr) = check_extent(extent)?;
    let root = BitMapBackend::new(path, (360, 390)).into_drawing_area();
    root.fill(&PAGE_BG).map_err(write_err(path))?;
    draw_text(&root, path, (180, 8), title, 17.0, Anchor::TopCentre)?;
    let panel = Panel {
        left: 20,
        top: 40,
        width: 320,
        height: 320,
        x: xr,
        y: yr,
    };
    heat(
        &root,
        path,
        &panel,
        &density_colours(log_density, n, n)?,
        n,
        n,
    )?;
    panel.frame(&root, path)?;
    root.present().map_err(write_err(path))
}

/// The PNG `frames` (all the same size) as a looping animated GIF, `delay_ms` per frame.
pub fn gif_from_pngs(frames: &[PathBuf], out: &Path, delay_ms: u32) -> Result<(), PlotError> {
    use image::codecs::gif::{GifEncoder, Repeat};
    let err = |e: &dyn std::fmt::Display| PlotError::Write {
        path: out.display().to_string(),
        msg: e.to_string(),
    };
    if frames.is_empty() {
        return Err(PlotError::Input(
            "an animation needs at least one frame".into(),
        ));
    }
    let file = std::fs::File::create(out).map_err(|e| err(&e))?;
    let mut enc = GifEncoder::new_with_speed(std::io::BufWriter::new(file), 10);
    enc.set_repeat(Repeat::Infinite).map_err(|e| err(&e))?;
    for f in frames {
        let rgba = image::open(f).map_err(|e| err(&e))?.to_rgba8();
        let frame =
            image::Frame::from_parts(rgba, 0, 0, image::Delay::from_numer_denom_ms(delay_ms, 1));
        enc.encode_frame(frame).map_err(|e| err(&e))?;
    }
    Ok(())
}
