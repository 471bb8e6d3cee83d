//! The `kmm` command line.

/// Runs kmm with the process arguments and returns the exit code.
pub fn main() -> i32 {
    todo!()
}
