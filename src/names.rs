//! Enums that configs and the command line name (`realnvp`, `alternate`, `made-mog`, ...): parsed and printed
//! through their serde names, so each name is written once, on the enum (`#[serde(rename_all = "kebab-case")]`,
//! aliases with `#[serde(alias = ...)]`), and an unknown name is an error listing the known ones.

use crate::Error;
use serde::{de::DeserializeOwned, Serialize};

/// An enum named in configs and on the command line.
pub trait Named: Serialize + DeserializeOwned {
    /// What it is, for messages (`"flow"`, `"activation"`).
    const WHAT: &'static str;

    /// The value of name `s`; an unknown name is an error naming it and the known ones.
    fn from_name(s: &str) -> Result<Self, Error> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|e| {
            let e = e.to_string();
            let known = e
                .split_once("expected one of ")
                .map(|(_, k)| k.replace('`', ""))
                .unwrap_or(e);
            Error::Config(format!("unknown {} '{s}' (known: {known})", Self::WHAT))
        })
    }

    /// Its name.
    fn name(&self) -> String {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::String(s)) => s,
            _ => unreachable!("a named enum serialises to a string"),
        }
    }
}

/// `Named`, `FromStr` and `Display` for enums whose variants serialise as plain strings.
macro_rules! named {
    ($($t:ty => $what:expr),* $(,)?) => {$(
        impl $crate::names::Named for $t {
            const WHAT: &'static str = $what;
        }
        impl std::str::FromStr for $t {
            type Err = $crate::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                <$t as $crate::names::Named>::from_name(s)
            }
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&$crate::names::Named::name(self))
            }
        }
    )*};
}

pub(crate) use named;

#[cfg(test)]
mod tests {
    use super::Named;
    use crate::dist::BaseKind;
    use crate::flows::{FlowKind, Permute};
    use crate::transforms::Mask;

    #[test]
    fn names_parse_print_and_list_the_known_ones() {
        assert_eq!("nsf-ar".parse::<FlowKind>().unwrap(), FlowKind::NsfAr);
        assert_eq!(
            FlowKind::RealnvpMultiscale.to_string(),
            "realnvp-multiscale"
        );
        assert_eq!("1x1".parse::<Permute>().unwrap(), Permute::Conv1x1);
        assert_eq!(Permute::Conv1x1.name(), "1x1");
        assert_eq!("checkerboard".parse::<Mask>().unwrap(), Mask::Alternate);
        assert_eq!("gmm".parse::<BaseKind>().unwrap(), BaseKind::Mixture);
        let e = "glowish".parse::<FlowKind>().unwrap_err().to_string();
        assert!(
            e.contains("unknown flow 'glowish'") && e.contains("realnvp") && e.contains("nsf-ar"),
            "{e}"
        );
    }
}
