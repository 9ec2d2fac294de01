//! Images as table rows: one row per image, `C*H*W` columns named `c{c}_y{y}_x{x}` (channel planes one after
//! another, the layout the image flows use), so the shape travels with the column names through CSV files.
//! PNG folders in (through the `image` crate), PNG sample grids out.

use super::{io_msg, DataError, Result, Table};
use crate::engine::conv::ImageShape;
use std::path::Path;

/// Column names of an image of shape `s`.
pub fn pixel_columns(s: ImageShape) -> Vec<String> {
    let mut v = Vec::with_capacity(s.dim());
    for c in 0..s.c {
        for y in 0..s.h {
            for x in 0..s.w {
                v.push(format!("c{c}_y{y}_x{x}"));
            }
        }
    }
    v
}

/// The image shape encoded in column names made by [`pixel_columns`], if they are exactly such names.
pub fn shape_from_columns(cols: &[String]) -> Option<ImageShape> {
    let last = cols.last()?;
    let rest = last.strip_prefix('c')?;
    let (c, rest) = rest.split_once("_y")?;
    let (y, x) = rest.split_once("_x")?;
    let s = ImageShape::new(
        c.parse::<usize>().ok()? + 1,
        y.parse::<usize>().ok()? + 1,
        x.parse::<usize>().ok()? + 1,
    );
    (pixel_columns(s) == cols).then_some(s)
}

/// Parse `C,H,W`.
pub fn parse_shape(s: &str) -> Result<ImageShape> {
    let v: Vec<usize> = s
        .split(',')
        .map(|p| p.trim().parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| {
            DataError::InvalidArgument(format!(
                "image shape '{s}': expected C,H,W (three integers)"
            ))
        })?;
    match v[..] {
        [c, h, w] if c > 0 && h > 0 && w > 0 => Ok(ImageShape::new(c, h, w)),
        _ => Err(DataError::InvalidArgument(format!(
            "image shape '{s}': expected C,H,W (three positive integers)"
        ))),
    }
}

fn list_pngs(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| DataError::Open {
        path: dir.display().to_string(),
        msg: io_msg(&e),
    })?;
    let mut v: Vec<_> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")))
        .collect();
    v.sort();
    Ok(v)
}

/// Every `*.png` in `dir` (sorted by name), or, if `dir` holds sub-folders of PNGs instead, every PNG of
/// every sub-folder with a `label` column (the sub-folder's index in name order: torchvision's ImageFolder).
/// All images must have one size; grey images give 1 channel, colour ones 3 (alpha is dropped). Pixel values
/// are 0..255.
pub fn load_png_folder(dir: &Path) -> Result<Table> {
    let src = dir.display().to_string();
    let mut files: Vec<(std::path::PathBuf, Option<usize>)> =
        list_pngs(dir)?.into_iter().map(|p| (p, None)).collect();
    if files.is_empty() {
        let mut subs: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| DataError::Open {
                path: src.clone(),
                msg: io_msg(&e),
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        subs.sort();
        for (k, sub) in subs.iter().enumerate() {
            files.extend(list_pngs(sub)?.into_iter().map(|p| (p, Some(k))));
        }
    }
    if files.is_empty() {
        return Err(DataError::NoRows {
            source_name: format!("{src} (no .png files in it or in its sub-folders)"),
        });
    }
    let labelled = files[0].1.is_some();
    let mut shape: Option<(ImageShape, std::path::PathBuf)> = None;
    let mut data = Vec::new();
    for (f, label) in &files {
        let bad = |msg: String| DataError::BadSource {
            src: f.display().to_string(),
            msg,
        };
        let img = image::open(f).map_err(|e| bad(format!("not a readable PNG: {e}")))?;
        let c = if img.color().has_color() { 3 } else { 1 };
        let s = ImageShape::new(c, img.height() as usize, img.width() as usize);
        match &shape {
            None => shape = Some((s, f.clone())),
            Some((s0, f0)) if *s0 != s => {
                return Err(bad(format!(
                    "{s} (channels x height x width) differs from {s0} of {}: all images must have one size \
                     and colour type",
                    f0.display()
                )))
            }
            _ => {}
        }
        if c == 1 {
            let g = img.to_luma8();
            data.extend(g.as_raw().iter().map(|&v| v as f64));
        } else {
            let rgb = img.to_rgb8();
            let raw = rgb.as_raw();
            for ch in 0..3 {
                data.extend(raw.iter().skip(ch).step_by(3).map(|&v| v as f64));
            }
        }
        if let Some(l) = label {
            data.push(*l as f64);
        }
    }
    let (s, _) = shape.expect("at least one image");
    let mut columns = pixel_columns(s);
    if labelled {
        columns.push("label".into());
    }
    Ok(Table::new(columns, files.len(), data, src))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_names_carry_the_shape() {
        let s = ImageShape::new(3, 2, 4);
        let c = pixel_columns(s);
        assert_eq!(c[4 * 2 + 1], "c1_y0_x1");
        assert_eq!(shape_from_columns(&c), Some(s));
        let mut d = c.clone();
        d.swap(0, 1);
        assert_eq!(shape_from_columns(&d), None);
        assert_eq!(shape_from_columns(&["a".to_string()]), None);
        assert!(parse_shape("1,28,28").is_ok());
        assert!(parse_shape("1,28").is_err() && parse_shape("0,2,2").is_err());
    }

    #[test]
    fn png_folder_round_trip_and_errors() {
        let dir = std::env::temp_dir().join(format!("nflow-png-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (k, class) in ["a", "b"].iter().enumerate() {
            std::fs::create_dir_all(dir.join(class)).unwrap();
            let px: Vec<u8> = (0..6).map(|v| (v * 40 + k * 3) as u8).collect();
            image::save_buffer(
                dir.join(class).join("x.png"),
                &px,
                3,
                2,
                image::ColorType::L8,
            )
            .unwrap();
        }
        let t = load_png_folder(&dir).unwrap();
        assert_eq!((t.rows, t.cols), (2, 7));
        assert_eq!(t.row(1), &[3.0, 43.0, 83.0, 123.0, 163.0, 203.0, 1.0]);
        assert_eq!(t.columns[6], "label");
        // a differently sized image is an error naming the file
        image::save_buffer(
            dir.join("b").join("y.png"),
            &[0u8; 4],
            2,
            2,
            image::ColorType::L8,
        )
        .unwrap();
        let e = load_png_folder(&dir).unwrap_err().to_string();
        assert!(e.contains("y.png") && e.contains("size"), "{e}");
        std::fs::write(dir.join("b").join("y.png"), b"not a png").unwrap();
        let e = load_png_folder(&dir).unwrap_err().to_string();
        assert!(e.contains("y.png"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
