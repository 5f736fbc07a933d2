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
pub(crate) fn join<S: AsRef<str>>(names: impl Iterator<Item = S>) -> String {
    let mut out = String::new();
    for n in names {
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push_str(n.as_ref());
    }
    if out.is_empty() {
        out.push_str("none");
    }
    out
}
