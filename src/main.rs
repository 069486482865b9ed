//! The `catdog` command line: argument parsing and output at the top, the
//! pipeline in the library below.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
