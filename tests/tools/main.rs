//! The tools through the `sluice` binary: `sluice decode` against the Kitex captures, `sluice
//! call` against real peers, and payload routing.

mod call;
mod decode;

/// The `sluice` binary under test.
pub(crate) fn sluice() -> String {
    std::env::var("SLUICE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_sluice").into())
}
