//! The `kmm` binary: everything lives in the library; main only maps the outcome to an exit code.

fn main() {
    std::process::exit(kmm::cli::main());
}
