//! `sandboxer`: the operator's command line.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    restore_sigpipe();
    sandboxer_host::cli::init_logging();
    let cli = sandboxer_host::cli::Cli::parse();
    match sandboxer_host::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Rust ignores SIGPIPE, so `sandboxer … | head` would panic on the closed pipe. A command-line
/// tool should end quietly instead, like other Unix tools. Every ledger write is committed
/// before anything is printed, so ending on a closed pipe loses nothing.
fn restore_sigpipe() {
    #[cfg(unix)]
    // SAFETY: called first thing in main, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
