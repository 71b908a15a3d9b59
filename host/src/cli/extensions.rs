//! `sandboxer extensions list|check|prune-cache`: the live extensions (the same answer
//! as `GET /v1/extensions` with the admin token), a component's conformance check, and
//! cleaning the compile cache.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::output::{print_json, table};
use crate::app::{App, CheckOptions, ConformanceReport, ExtensionStatus};
use crate::domain::Scope;

/// `sandboxer extensions` subcommands.
#[derive(Debug, Subcommand)]
pub enum ExtensionsCommand {
    /// List the extensions folder: every extension loaded or skipped, with the reason.
    List,
    /// Load one component, call each function with a sample request and validate the answers.
    Check(CheckArgs),
    /// Delete compiled artifacts no extension in the folder can use any more: earlier
    /// versions of replaced components, artifacts of another wasmtime version, writes a
    /// crash interrupted. The folder's current components stay compiled.
    #[command(
        after_help = "Examples:\n  sandboxer extensions prune-cache --dry-run\n  sandboxer extensions prune-cache"
    )]
    PruneCache(PruneArgs),
}

/// `sandboxer extensions prune-cache`.
#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Only list what would be deleted.
    #[arg(long)]
    pub dry_run: bool,
}

/// `sandboxer extensions check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The component (`.wasm`), or a sidecar (`.toml`) naming one with its configuration.
    pub file: PathBuf,
    /// A `wasi:config` value handed to the component, as KEY=VALUE (repeatable; added to a
    /// sidecar's `[config]`).
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub config: Vec<(String, String)>,
    /// Time budget of each call, in milliseconds (default: the sidecar's, else 1000).
    #[arg(long, value_name = "MS")]
    pub timeout_ms: Option<u64>,
    /// Memory cap of each instance, in MiB (default: the sidecar's, else 64).
    #[arg(long, value_name = "MIB")]
    pub memory_mib: Option<u64>,
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// Runs a `sandboxer extensions` subcommand.
pub fn run(cmd: ExtensionsCommand, app: &App, json: bool) -> anyhow::Result<ExitCode> {
    match cmd {
        ExtensionsCommand::List => list(app, json),
        ExtensionsCommand::Check(args) => check(args, app, json),
        ExtensionsCommand::PruneCache(args) => prune_cache(&args, app, json),
    }
}

fn prune_cache(args: &PruneArgs, app: &App, json: bool) -> anyhow::Result<ExitCode> {
    let pruned = app.prune_cache(args.dry_run)?;
    if json {
        print_json(&pruned)?;
        return Ok(ExitCode::SUCCESS);
    }
    let freed: u64 = pruned.removed.iter().map(|f| f.bytes).sum();
    if !pruned.removed.is_empty() {
        let mut t = table(["artifact", "MB", "why"]);
        for f in &pruned.removed {
            let name = f
                .path
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            // The content hash is 64 hex digits: its head is enough to tell files apart.
            let short = match name.split_once('-') {
                Some((sha, rest)) if sha.len() > 12 => format!("{}…-{rest}", &sha[..12]),
                _ => name,
            };
            t.add_row(vec![
                short,
                format!("{:.1}", f.bytes as f64 / 1e6),
                f.reason.to_owned(),
            ]);
        }
        println!("{t}");
    }
    println!(
        "{} {} artifact(s), {:.1} MB, from {}; kept {} in use",
        if args.dry_run {
            "would delete"
        } else {
            "deleted"
        },
        pruned.removed.len(),
        freed as f64 / 1e6,
        app.cache_dir().display(),
        pruned.kept
    );
    Ok(ExitCode::SUCCESS)
}

fn list(app: &App, json: bool) -> anyhow::Result<ExitCode> {
    let list = app.extensions(&Scope::Operator).map_err(|e| {
        anyhow::anyhow!(
            "{e} (run from the repository root after `make extensions`, or pass --extensions-dir)"
        )
    })?;
    if json {
        print_json(&list)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = table(["id", "kind", "version", "file", "status", "reason"]);
    for r in &list.extensions {
        let file = match &r.sidecar {
            Some(sidecar) => format!("{} ({sidecar})", r.file.as_deref().unwrap_or("-")),
            None => r.file.clone().unwrap_or_else(|| "-".into()),
        };
        let status = match r.status {
            ExtensionStatus::Loaded => "loaded",
            ExtensionStatus::Quarantined => "quarantined",
            ExtensionStatus::Skipped => "skipped",
        };
        t.add_row([
            r.id.clone().unwrap_or_else(|| "-".into()),
            r.kind.map_or_else(|| "-".into(), |k| k.to_string()),
            r.version.clone().unwrap_or_else(|| "-".into()),
            file,
            status.to_owned(),
            r.reason.clone().unwrap_or_default(),
        ]);
    }
    println!("{t}");
    let skipped = list
        .extensions
        .iter()
        .filter(|r| r.status == ExtensionStatus::Skipped)
        .count();
    let cache = list.cache.unwrap_or_default();
    println!(
        "{} loaded, {skipped} skipped from {} (compiled {}, from cache {})",
        list.extensions.len() - skipped,
        app.settings().extensions_dir.display(),
        cache.compiled,
        cache.disk_hits
    );
    for id in &list.pending {
        println!("{id}: still compiling");
    }
    Ok(ExitCode::SUCCESS)
}

fn check(args: CheckArgs, app: &App, json: bool) -> anyhow::Result<ExitCode> {
    let options = CheckOptions {
        config: args.config,
        timeout_ms: args.timeout_ms,
        memory_mib: args.memory_mib,
    };
    let report = app.check_extension(&args.file, &options)?;
    if json {
        print_json(&report)?;
    } else {
        render_check(&report);
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn render_check(report: &ConformanceReport) {
    println!("checking {} as {:?}", report.file.display(), report.id);
    for c in &report.checks {
        let mark = if c.passed { "PASS" } else { "FAIL" };
        println!(
            "{mark}  {:<22} {:>10}  {}",
            c.name,
            format_micros(c.micros),
            c.detail
        );
    }
    let failed = report.checks.iter().filter(|c| !c.passed).count();
    if report.passed {
        println!(
            "verdict: PASS ({} checks) — {} meets the extension contract",
            report.checks.len(),
            report.file.display()
        );
    } else {
        println!(
            "verdict: FAIL ({failed} of {} checks failed) — {}",
            report.checks.len(),
            report.file.display()
        );
    }
}

fn format_micros(us: u64) -> String {
    if us >= 10_000 {
        format!("{:.0} ms", us as f64 / 1000.0)
    } else {
        format!("{:.2} ms", us as f64 / 1000.0)
    }
}
