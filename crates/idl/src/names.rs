//! How errors name places and alternatives.

/// A path into a value for an error message; the top level has no name of its own.
pub(crate) fn here(at: &str) -> String {
    if at.is_empty() {
        "(top)".to_owned()
    } else {
        at.to_owned()
    }
}

/// Names as a comma-separated list, or `none`.
pub(crate) fn join<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<&str> = names.collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}
