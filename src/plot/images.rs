//! Pictures of image models: captioned grids of images, and a picture's latents per scale with images rebuilt
//! from some of them at several temperatures (Glow, Kingma & Dhariwal 2018, sec. 5 and fig. 8).

use super::layers::diverging;
use super::*;
use crate::data::Table;
use crate::transforms::ImageShape;

/// One captioned row of a grid: its images (`C*H*W` values each, channel planes one after another).
#[derive(Clone, Debug, Default)]
pub struct ImageRow {
    /// Written left of the row (empty: no caption).
    pub caption: String,
    pub images: Vec<Vec<f64>>,
}

/// Side of a drawn image: about 56 pixels, each image pixel a whole square of screen pixels.
fn zoom(s: ImageShape) -> i32 {
    (56 / s.h.max(s.w).max(1)).clamp(1, 8) as i32
}

/// A `z x z` square of pixels with its top-left corner at `(x, y)`.
fn fill_square(
    root: &Area,
    path: &Path,
    (x, y): (i32, i32),
    z: i32,
    colour: &RGBColor,
) -> Result<(), PlotError> {
    for dy in 0..z {
        for dx in 0..z {
            root.draw_pixel((x + dx, y + dy), colour)
                .map_err(write_err(path))?;
        }
    }
    Ok(())
}

/// Draws one image with its top-left corner at `(x, y)`: grey for one channel, RGB for three (others: the
/// first channel), values scaled so `max` is white.
fn draw_image(
    root: &Area,
    path: &Path,
    (x, y): (i32, i32),
    v: &[f64],
    s: ImageShape,
    max: f64,
    z: i32,
) -> Result<(), PlotError> {
    let hw = s.hw();
    let px = |c: usize, i: usize| {
        let t = v[c * hw + i] / max * 255.0;
        if t.is_finite() {
            t.round().clamp(0.0, 255.0) as u8
        } else {
            0
        }
    };
    for r in 0..s.h {
        for c in 0..s.w {
            let i = r * s.w + c;
            let rgb = if s.c == 3 {
                RGBColor(px(0, i), px(1, i), px(2, i))
            } else {
                let g = px(0, i);
                RGBColor(g, g, g)
            };
            fill_square(root, path, (x + c as i32 * z, y + r as i32 * z), z, &rgb)?;
        }
    }
    Ok(())
}

/// Draws one latent channel (`h x w` values) at `(x, y)`: blue below 0, white at 0, red above, full colour at
/// |v| = 3 (three standard deviations of the prior).
fn draw_latent(
    root: &Area,
    path: &Path,
    (x, y): (i32, i32),
    v: &[f64],
    (h, w): (usize, usize),
    z: i32,
) -> Result<(), PlotError> {
    for r in 0..h {
        for c in 0..w {
            let colour = diverging(v[r * w + c] / 3.0);
            fill_square(root, path, (x + c as i32 * z, y + r as i32 * z), z, &colour)?;
        }
    }
    Ok(())
}

/// A grid of images under a title: each [`ImageRow`] starts a new line (wrapped after `cols` images) with its
/// caption on the left.
pub fn image_grid_png(
    path: &Path,
    title: &str,
    shape: ImageShape,
    max: f64,
    rows: &[ImageRow],
    cols: usize,
) -> Result<(), PlotError> {
    check_path(path)?;
    if rows.iter().all(|r| r.images.is_empty()) {
        return Err(PlotError::Input("no images to draw".into()));
    }
    if let Some(bad) = rows
        .iter()
        .flat_map(|r| &r.images)
        .find(|i| i.len() != shape.dim())
    {
        return Err(PlotError::Input(format!(
            "an image of {} values, the shape {shape} has {}",
            bad.len(),
            shape.dim()
        )));
    }
    if !(max.is_finite() && max > 0.0) {
        return Err(PlotError::Input(format!(
            "pixel range must be positive, got {max}"
        )));
    }
    let z = zoom(shape);
    let (tw, th) = (shape.w as i32 * z, shape.h as i32 * z);
    let cols = cols
        .max(1)
        .min(rows.iter().map(|r| r.images.len()).max().unwrap_or(1)) as i32;
    let left = if rows.iter().any(|r| !r.caption.is_empty()) {
        170
    } else {
        10
    };
    let lines: i32 = rows
        .iter()
        .map(|r| r.images.len().div_ceil(cols as usize).max(1) as i32)
        .sum();
    let head = 44;
    let width = (left + cols * (tw + 3) + 10).max(360);
    let height = head + lines * (th + 3) + 10;
    let cells = i64::from(width) * i64::from(height);
    if cells > 400_000_000 {
        return Err(PlotError::Input(format!(
            "a grid of {width} x {height} pixels is too large: draw fewer images"
        )));
    }
    let root = BitMapBackend::new(path, (width as u32, height as u32)).into_drawing_area();
    root.fill(&PAGE_BG).map_err(write_err(path))?;
    draw_text(&root, path, (width / 2, 12), title, 18.0, Anchor::TopCentre)?;
    let mut y = head;
    for row in rows {
        if !row.caption.is_empty() {
            draw_text(
                &root,
                path,
                (left - 12, y + th / 2),
                &row.caption,
                14.0,
                Anchor::CentreRight,
            )?;
        }
        for chunk in row.images.chunks(cols as usize) {
            for (k, im) in chunk.iter().enumerate() {
                draw_image(
                    &root,
                    path,
                    (left + k as i32 * (tw + 3), y),
                    im,
                    shape,
                    max,
                    z,
                )?;
            }
            y += th + 3;
        }
        if row.images.is_empty() {
            y += th + 3;
        }
    }
    root.present().map_err(write_err(path))
}

/// The value drawn white in a model's pictures: 255 for 8-bit data (also after an n-bit reduction), the
/// number of levels for dequantised data, else the largest value in `seen` (pictures drawn from `[0, max]`).
pub fn pixel_max(model: &crate::Model, seen: &[f64]) -> f64 {
    match &model.preprocess {
        Some(p) if p.bits.is_some() => 255.0,
        Some(p) if p.dequantize || p.logit.is_some() => p.levels,
        _ => seen
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .fold(f64::MIN, f64::max)
            .max(1e-12),
    }
}

/// A picture's latents per scale and images rebuilt from them, for `glow` and `realnvp-multiscale` models.
///
/// Top: the picture (`image`, one row in the data's units), the picture rebuilt from all its latents, and per
/// level its factored-out latents (up to four channels, in the prior's standard deviations). Below, a grid:
/// row `k` keeps the latents of the `k` coarsest levels and draws the finer ones from the prior at the
/// temperature of the column (`z ~ N(0, T^2 I)`, the same draw along a row); the last row keeps none, which
/// is a sample. `ctx`: the picture's context row for a conditional model.
pub fn latents_png(
    path: &Path,
    model: &crate::Model,
    image: &Table,
    ctx: Option<&Table>,
    temperatures: &[f64],
    seed: u64,
    title: &str,
) -> Result<(), PlotError> {
    let bad = |m: String| Err(PlotError::Input(m));
    let Some(scales) = model
        .preset
        .as_ref()
        .and_then(crate::flows::image::latent_scales)
    else {
        return bad(
            "the latents figure draws glow and realnvp-multiscale models (their levels factor out \
             latents)"
                .into(),
        );
    };
    let shape = model.preset.as_ref().and_then(|p| p.image).expect("image");
    if model.arch.base.kind() != crate::dist::BaseKind::Normal {
        return bad("the latents figure needs a standard normal base".into());
    }
    if image.rows != 1 || image.cols != model.dim() {
        return bad(format!(
            "the latents figure takes one picture of {} values, got {} rows of {}",
            model.dim(),
            image.rows,
            image.cols
        ));
    }
    if temperatures.is_empty() || temperatures.iter().any(|t| !(t.is_finite() && *t >= 0.0)) {
        return bad(format!(
            "temperatures must be finite and not negative, got {temperatures:?}"
        ));
    }
    check_path(path)?;
    let z = model.to_noise(image, ctx)?;
    let levels = scales.len();
    // row k: the k coarsest levels kept (the last entries of `scales`), the others drawn
    let mut noise = Vec::new();
    let mut r = crate::engine::rng(seed);
    for kept in (0..levels).rev() {
        let eps: Vec<f64> = (0..z.len())
            .map(|_| rand_distr::Distribution::sample(&rand_distr::StandardNormal, &mut r))
            .collect();
        for &t in temperatures {
            let mut zz = z.clone();
            for s in &scales[..levels - kept] {
                for i in s.range.clone() {
                    zz[i] = t * eps[i];
                }
            }
            noise.extend_from_slice(&zz);
        }
    }
    noise.extend_from_slice(&z);
    let rows = noise.len() / z.len();
    let c = ctx.map(|c| c.take_rows(&vec![0; rows]));
    let built = model.from_noise(&noise, c.as_ref())?;
    let max = pixel_max(model, &image.data);
    {
        let zm = zoom(shape);
        let (tw, th) = (shape.w as i32 * zm, shape.h as i32 * zm);
        let left = 230;
        let gap = 14;
        // latents drawn at the picture's size
        let latent_zoom = |s: ImageShape| (th / s.h.max(1) as i32).max(1);
        let shown = |s: ImageShape| s.c.min(4) as i32;
        let top_w = 20
            + 2 * (tw + gap)
            + scales
                .iter()
                .map(|s| shown(s.shape) * (s.shape.w as i32 * latent_zoom(s.shape) + 3) + gap)
                .sum::<i32>();
        let grid_w = left + temperatures.len() as i32 * (tw + gap);
        let width = top_w.max(grid_w).max(560) + 20;
        let head = 44;
        let top_h = 24 + th + 20;
        let height = head + top_h + 58 + 26 + levels as i32 * (th + gap) + 10;
        let root = BitMapBackend::new(path, (width as u32, height as u32)).into_drawing_area();
        root.fill(&PAGE_BG).map_err(write_err(path))?;
        draw_text(&root, path, (width / 2, 12), title, 18.0, Anchor::TopCentre)?;
        // the picture, its rebuild, and the latents of every level
        let y = head + 24;
        let mut x = 20;
        draw_text(
            &root,
            path,
            (x + tw / 2, head),
            "picture",
            13.0,
            Anchor::TopCentre,
        )?;
        draw_image(&root, path, (x, y), image.row(0), shape, max, zm)?;
        x += tw + gap;
        draw_text(
            &root,
            path,
            (x + tw / 2, head),
            "rebuilt",
            13.0,
            Anchor::TopCentre,
        )?;
        draw_image(&root, path, (x, y), built.row(rows - 1), shape, max, zm)?;
        x += tw + gap;
        for (l, s) in scales.iter().enumerate() {
            let lz = latent_zoom(s.shape);
            let n = shown(s.shape);
            let w = n * (s.shape.w as i32 * lz + 3);
            let what = if l + 1 == levels {
                "coarsest"
            } else if l == 0 {
                "finest"
            } else {
                "level"
            };
            draw_text(
                &root,
                path,
                (x + w / 2, head),
                &format!("{} {}: {}", what, l + 1, s.shape),
                13.0,
                Anchor::TopCentre,
            )?;
            let hw = s.shape.hw();
            for ch in 0..n as usize {
                let v = &z[s.range.start + ch * hw..s.range.start + (ch + 1) * hw];
                draw_latent(
                    &root,
                    path,
                    (x + ch as i32 * (s.shape.w as i32 * lz + 3), y),
                    v,
                    (s.shape.h, s.shape.w),
                    lz,
                )?;
            }
            x += w + gap;
        }
        let y = head + top_h;
        for (i, line) in [
            "latents: blue < 0 < red, full colour at 3 sd (up to 4 channels a level)",
            "below: the coarsest levels' latents kept, the finer ones drawn at temperature T",
        ]
        .iter()
        .enumerate()
        {
            draw_text(
                &root,
                path,
                (20, y + 6 + 18 * i as i32),
                line,
                13.0,
                Anchor::CentreLeft,
            )?;
        }
        let y = y + 48;
        for (j, t) in temperatures.iter().enumerate() {
            draw_text(
                &root,
                path,
                (left + j as i32 * (tw + gap) + tw / 2, y),
                &format!("T = {t}"),
                14.0,
                Anchor::TopCentre,
            )?;
        }
        let y = y + 26;
        for (k, kept) in (0..levels).rev().enumerate() {
            let cap = match kept {
                0 => "none kept: a sample".to_string(),
                k => format!("coarsest {k} of {levels} kept"),
            };
            let yy = y + k as i32 * (th + gap);
            draw_text(
                &root,
                path,
                (left - 12, yy + th / 2),
                &cap,
                14.0,
                Anchor::CentreRight,
            )?;
            for j in 0..temperatures.len() {
                draw_image(
                    &root,
                    path,
                    (left + j as i32 * (tw + gap), yy),
                    built.row(k * temperatures.len() + j),
                    shape,
                    max,
                    zm,
                )?;
            }
        }
        root.present().map_err(write_err(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_pixels_and_captions() {
        let s = ImageShape::new(1, 2, 3);
        let im = |k: f64| (0..6).map(|v| f64::from(v) * 40.0 + k).collect::<Vec<_>>();
        let p = std::env::temp_dir().join(format!("nflow-grid-{}.png", std::process::id()));
        let rows = [ImageRow {
            caption: String::new(),
            images: vec![im(0.0), im(3.0), im(6.0)],
        }];
        image_grid_png(&p, "three", s, 255.0, &rows, 2).unwrap();
        let back = image::open(&p).unwrap().to_rgb8();
        // 8x zoom, 3-pixel gaps, 10 left, 44 above; two per line
        let z = 8;
        let (x, y) = (10 + (3 * z + 3) + z + z / 2, 44 + z + z / 2);
        assert_eq!(back.get_pixel(x, y).0, [163; 3]);
        let (x, y) = (10 + 2 * z + 1, 44 + (2 * z + 3) + 1);
        assert_eq!(back.get_pixel(x, y).0, [86; 3]);
        // a caption moves the images right; bad input is refused
        let rows = [ImageRow {
            caption: "label = 3".into(),
            images: vec![im(0.0)],
        }];
        image_grid_png(&p, "one", s, 255.0, &rows, 2).unwrap();
        let back = image::open(&p).unwrap().to_rgb8();
        assert_eq!(back.get_pixel(170 + z / 2, 44 + z + z / 2).0, [120; 3]);
        let e = image_grid_png(&p, "x", ImageShape::new(1, 2, 2), 255.0, &rows, 2).unwrap_err();
        assert!(e.to_string().contains("6 values"), "{e}");
        let e = image_grid_png(&p, "x", s, 0.0, &rows, 2).unwrap_err();
        assert!(e.to_string().contains("positive"), "{e}");
        let _ = std::fs::remove_file(&p);
    }
}
