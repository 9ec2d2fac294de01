//! The library's layers import only downward (docs/architecture.md): a module may use the ones listed before
//! it here, never one after it. Reads the sources (test modules and comments aside).

use std::path::Path;

/// Bottom to top.
const LAYERS: &[&str] = &[
    "engine",
    "nn",
    "dist",
    "transforms",
    "flows",
    "data",
    "io",
    "optim",
    "train",
    "plot",
];

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `text` without its `#[cfg(test)]` items (a `mod tests { ... }` block, or a single item up to its closing
/// brace or semicolon) and without line comments: the code the library is built from, wherever the tests sit.
fn without_tests(text: &str) -> String {
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .map(|l| format!("{l}\n"))
        .collect();
    let mut out = String::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..i]);
        let item = &rest[i + "#[cfg(test)]".len()..];
        // the item ends at the brace closing its first block, or at a `;` before any block opens
        let mut depth = 0usize;
        let mut end = item.len();
        for (k, c) in item.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        end = k + 1;
                        break;
                    }
                }
                ';' if depth == 0 => {
                    end = k + 1;
                    break;
                }
                _ => {}
            }
        }
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

/// The crate modules `text` names as `crate::NAME`, comments and `#[cfg(test)]` items left out.
fn uses(text: &str) -> Vec<String> {
    let code = without_tests(text);
    let mut v = Vec::new();
    for line in code.lines() {
        for (i, _) in line.match_indices("crate::") {
            let name: String = line[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            v.push(name);
        }
    }
    v
}

#[test]
fn no_module_imports_one_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut bad = Vec::new();
    for (level, m) in LAYERS.iter().enumerate() {
        let mut files = Vec::new();
        let dir = src.join(m);
        if dir.is_dir() {
            sources(&dir, &mut files);
        } else {
            files.push(src.join(format!("{m}.rs")));
        }
        assert!(!files.is_empty(), "no sources for {m}");
        for f in files {
            for u in uses(&std::fs::read_to_string(&f).unwrap()) {
                if let Some(l) = LAYERS.iter().position(|x| *x == u) {
                    if l > level {
                        bad.push(format!("{} uses crate::{u}", f.display()));
                    }
                }
            }
        }
    }
    assert!(bad.is_empty(), "upward imports:\n{}", bad.join("\n"));
}

#[test]
fn the_check_sees_an_upward_import() {
    assert_eq!(
        uses("use crate::flows::Flow;\n// crate::io\n"),
        vec!["flows"]
    );
    assert!(uses("#[cfg(test)]\nuse crate::io;").is_empty());
    // code after an early test block is still read
    assert_eq!(
        uses(
            "#[cfg(test)]\nmod tests {\n    fn f() { crate::io::x(); }\n}\nuse crate::train::T;\n"
        ),
        vec!["train"]
    );
    assert_eq!(
        uses("#[cfg(test)]\npub(crate) static L: M = M::new();\nfn g() { crate::plot::p() }\n"),
        vec!["plot"]
    );
}
