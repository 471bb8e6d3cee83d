//! Standalone fake hub. Placeholder.
fn main() {}
