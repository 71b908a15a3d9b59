//! `sandboxer credits`.

use std::process::ExitCode;

use clap::Subcommand;

use crate::config::Settings;

/// `sandboxer credits` subcommands.
#[derive(Debug, Subcommand)]
pub enum CreditsCommand {}

/// Runs a `sandboxer credits` subcommand.
pub fn run(cmd: CreditsCommand, _settings: &Settings, _json: bool) -> anyhow::Result<ExitCode> {
    match cmd {}
}
