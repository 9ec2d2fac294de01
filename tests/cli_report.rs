//! `nflow report`: one HTML page with every section and its images inline (the reports of conditional and
//! image models are tested with those models, in cli_conditional.rs and cli_images.rs).

mod common;

use common::*;

#[test]
fn report_page_has_every_section_and_decodable_images() {
    let d = tmp("report");
    let m = d.join("m");
    ok(&train_small("toy:moons:800", &m, &["--flow", "nsf-c"]));
    let html = d.join("r.html");
    ok(&cmd(
        "report --model {} --data toy:moons:500 --samples 300 --out {}",
        &[&m, &html],
    ));
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.starts_with("<!DOCTYPE html>") && page.trim_end().ends_with("</html>"));
    has_sections(&page, &["card", "curve", "test", "samples", "layers"]);
    assert!(page.contains("nsf-c") && page.contains("mean log-likelihood"));
    // no network: every image inline, and each one a PNG that decodes
    assert!(!page.contains("http://") && !page.contains("https://"));
    let imgs = inline_images(&page);
    assert_eq!(imgs.len(), 3, "curve, samples, layers");
    for im in imgs {
        assert!(im.width() > 200 && im.height() > 200);
    }
}

/// A 3-D model: pairs instead of the density, the layer figure on the plane of its first two columns; a
/// name that is not .html is refused.
#[test]
fn report_of_a_3d_model_shows_pairs_and_a_plane() {
    let d = tmp("report-3d");
    let csv = d.join("three.csv");
    let mut text = String::from("a,b,c\n");
    for i in 0..300 {
        let v = i as f64 / 30.0;
        text += &format!("{},{},{}\n", v.sin(), v.cos() + 0.1 * v, v / 10.0);
    }
    std::fs::write(&csv, text).unwrap();
    let (m3, html) = (d.join("m3"), d.join("r.html"));
    ok(&train_small(s(&csv), &m3, &["--flow", "maf"]));
    ok(&cmd("report --model {} --out {}", &[&m3, &html]));
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("<section id=\"samples\">") && page.contains("<section id=\"layers\">"));
    assert!(page.contains("through the median row"));
    fails(
        &cmd("report --model {} --out {}", &[&m3, &d.join("r.txt")]),
        &["r.txt", ".html"],
    );
}
