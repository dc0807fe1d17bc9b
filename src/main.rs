//! The `snowplow-relay` command: parses the flags and hands each subcommand to its
//! module in `cli/`; everything else is the library.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
