//! `sandboxer extensions`.

use std::process::ExitCode;

use clap::Subcommand;

use crate::config::Settings;

/// `sandboxer extensions` subcommands.
#[derive(Debug, Subcommand)]
pub enum ExtensionsCommand {}

/// Runs a `sandboxer extensions` subcommand.
pub fn run(cmd: ExtensionsCommand, _settings: &Settings, _json: bool) -> anyhow::Result<ExitCode> {
    match cmd {}
}
