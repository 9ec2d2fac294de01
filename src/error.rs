//! The library's error type, and JSON errors told without the contents of the file they came from.

use crate::data;

/// Errors of the library. Messages name the file, line, column, field or layer concerned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Data(#[from] data::DataError),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("shape mismatch: {0}")]
    Shape(String),
    #[error("non-finite value (NaN/Inf) in {layer}")]
    NonFinite { layer: String },
    #[error("training diverged at step {step}: non-finite value (NaN/Inf) in {layer}")]
    Diverged { step: usize, layer: String },
    #[error("model folder {path}: {msg}")]
    Model { path: String, msg: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// A JSON error's message without the contents of the file it was read from: string values it quotes
/// (`invalid type: string "..."`) are left out, and quoted names (an unknown field or variant) kept only
/// while short and name-like. The field, the expectation and the line and column still say what is wrong;
/// a file given by mistake (a link to someone's secrets) is not printed.
pub fn json_error(e: &serde_json::Error) -> String {
    redact_quoted(&e.to_string())
}

fn redact_quoted(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    loop {
        let s = rest.find("string \"");
        let b = rest.find('`');
        match (s, b) {
            (Some(i), _) if b.is_none_or(|b| i < b) => {
                out.push_str(&rest[..i]);
                out.push_str("a string");
                // the Debug-escaped string runs to the first unescaped quote
                let body = &rest[i + "string \"".len()..];
                let mut chars = body.char_indices();
                let mut end = body.len();
                while let Some((k, c)) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' => {
                            end = k + 1;
                            break;
                        }
                        _ => {}
                    }
                }
                rest = &body[end..];
            }
            (_, Some(i)) => {
                let Some(len) = rest[i + 1..].find('`') else {
                    out.push_str(rest);
                    break;
                };
                let name = &rest[i + 1..i + 1 + len];
                out.push_str(&rest[..i]);
                let name_like = name.len() <= 24
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-.+:".contains(c));
                if name_like {
                    out.push('`');
                    out.push_str(name);
                    out.push('`');
                } else {
                    out.push_str("(a value not shown)");
                }
                rest = &rest[i + 1 + len + 1..];
            }
            _ => {
                out.push_str(rest);
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact_quoted;

    #[test]
    fn json_errors_do_not_print_the_files_strings() {
        assert_eq!(
            redact_quoted(
                r#"invalid type: string "SECRET \"x\" key", expected struct FlowConfig at line 1 column 70"#
            ),
            "invalid type: a string, expected struct FlowConfig at line 1 column 70"
        );
        assert_eq!(
            redact_quoted(
                "unknown variant `afine`, expected one of `affine`, `additive` at line 3 column 9"
            ),
            "unknown variant `afine`, expected one of `affine`, `additive` at line 3 column 9"
        );
        assert_eq!(
            redact_quoted("unknown field `sk-proj-9f8a7b6c5d4e3f2a1b0c9d8e`, expected `type`"),
            "unknown field (a value not shown), expected `type`"
        );
        assert_eq!(
            redact_quoted("integer `-3`, unterminated `"),
            "integer `-3`, unterminated `"
        );
    }
}
