//! The `ckan-vault` command: parse, run, print. Everything else lives in the library.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
