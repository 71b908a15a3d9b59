//! `sandboxer`: the operator's command line.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    sandboxer_host::telemetry::init_cli();
    let cli = sandboxer_host::cli::Cli::parse();
    match sandboxer_host::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
