//! `nflow plot`: the density of a 2-D model, pairs of a wider one, the layer-by-layer figure (on a plane of
//! two columns for a wider model), and the sizes and options it refuses.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

#[test]
fn plot_draws_the_density_of_a_2d_model() {
    let d = tmp("heat-map");
    let png = d.join("p.png");
    ok(&cmd(
        "plot --model {} --data toy:moons:500 --grid 40 --out {}",
        &[&realnvp_model(), &png],
    ));
    is_png(&png);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn higher_dimensional_csv_and_pairs_plot() {
    let d = tmp("hd");
    let csv = d.join("d.csv.gz");
    let rows = 400;
    let mut v = Vec::new();
    for i in 0..rows {
        let t = i as f64 * 0.37;
        v.extend_from_slice(&[
            t.sin(),
            t.cos() + 0.1 * t.sin(),
            (2.0 * t).sin(),
            (i % 3) as f64,
        ]);
    }
    let names = ["a", "b", "c", "class"].iter().map(|s| s.to_string());
    let table = nflow::data::Table::new(names.collect(), rows, v, "d");
    nflow::data::write_csv(&csv, &table).unwrap();
    let model = d.join("m");
    ok(&train_small(
        s(&csv),
        &model,
        &["--drop", "class", "--flow", "nice"],
    ));
    let cfg = std::fs::read_to_string(model.join("config.json")).unwrap();
    assert!(cfg.contains("\"nice\""));
    let png = d.join("pairs.png");
    ok(&cmd(
        "plot --model {} --data {} --out {}",
        &[&model, &csv, &png],
    ));
    assert!(png.exists());
    std::fs::remove_dir_all(&d).unwrap();
}

/// `plot --samples 0` is an error, not a panic.
#[test]
fn plot_needs_at_least_one_sample() {
    let d = tmp("samples-0");
    let o = cmd(
        "plot --model {} --samples 0 --out {}",
        &[&moons_model(), &d.join("p.png")],
    );
    fails(&o, &["--samples must be at least 1"]);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_grid_too_large_for_memory_is_refused() {
    let d = tmp("grid");
    fails(
        &cmd(
            "plot --model {} --grid 1000000 --out {}",
            &[&moons_model(), &d.join("p.png")],
        ),
        &["--grid 1000000", "memory available"],
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn layer_by_layer_figure_of_a_2d_model() {
    let d = tmp("layers");
    let m = d.join("m");
    ok(&train_small("toy:moons:600", &m, &["--flow", "nsf-c"]));
    let png = d.join("layers.png");
    let o = cmd("plot --model {} --layers --grid 40 --out {}", &[&m, &png]);
    ok(&o);
    // nsf-c with 2 layers: spline coupling, LU, spline coupling, plus the data stage
    assert!(stderr(&o).contains("(4 stages)"));
    is_png(&png);
}

/// A maf on three columns (six rows, no validation rows), for the layer figure on a plane.
fn three_column_model() -> &'static Path {
    static M: OnceLock<PathBuf> = OnceLock::new();
    M.get_or_init(|| {
        let d = tmp("three");
        let (m3, csv) = (d.join("m3"), d.join("three.csv"));
        write_three_columns(&csv);
        ok(&train_small(
            s(&csv),
            &m3,
            &["--flow", "maf", "--val-fraction", "0"],
        ));
        m3
    })
}

/// Three columns: the plane of two of them through a reference row.
#[test]
fn layer_figure_of_a_3d_model_on_a_plane() {
    let d = tmp("plane");
    let png = d.join("layers.png");
    let o = cmd(
        "plot --model {} --layers --axes c,a --reference 1,2,3 --grid 30 --out {}",
        &[&three_column_model(), &png],
    );
    ok(&o);
    is_png(&png);
}

#[test]
fn bad_axes_and_reference_rows_are_named() {
    let d = tmp("axes");
    let (m3, png) = (three_column_model(), d.join("layers.png"));
    for (axes, needle) in [
        ("c,z", "no column 'z'"),
        ("a,a", "two different"),
        ("a", "two column"),
    ] {
        fails(
            &cmd(
                "plot --model {} --layers --axes {} --out {}",
                &[&m3, &axes, &png],
            ),
            &["--axes", needle],
        );
    }
    fails(
        &cmd(
            "plot --model {} --layers --reference 1,2 --out {}",
            &[&m3, &png],
        ),
        &["--reference has 2 values", "3 columns"],
    );
}
