//! `sandboxer extensions list|check`: render what the runtime reports.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use parking_lot::Mutex;
use serde::Serialize;

use crate::cli::output::{print_json, table};
use crate::config::Settings;
use crate::runtime::conformance::{self, ConformanceReport};
use crate::runtime::{
    ArtifactSource, CacheStats, CallLimits, CompileEvent, CompileHook, ExtensionSpec, Health,
    QuarantinePolicy, Runtime, RuntimeConfig,
};

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
pub fn run(cmd: ExtensionsCommand, settings: &Settings, json: bool) -> anyhow::Result<ExitCode> {
    match cmd {
        ExtensionsCommand::List => list(settings, json),
        ExtensionsCommand::Check(args) => check(args, settings, json),
        ExtensionsCommand::PruneCache(args) => prune_cache(&args, settings, json),
    }
}

fn prune_cache(args: &PruneArgs, settings: &Settings, json: bool) -> anyhow::Result<ExitCode> {
    let runtime = runtime_for(
        settings,
        RuntimeConfig::with_cache_dir(settings.cache_dir()),
    )?;
    let pruned = runtime
        .prune_cache(&settings.extensions_dir, args.dry_run)
        .context("pass the --extensions-dir the host serves, so its components stay compiled")?;
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
        settings.cache_dir().display(),
        pruned.kept
    );
    Ok(ExitCode::SUCCESS)
}

/// One row of `extensions list`.
#[derive(Debug, Serialize)]
struct Row {
    id: Option<String>,
    status: &'static str,
    kind: Option<String>,
    name: Option<String>,
    version: Option<String>,
    currency: Option<String>,
    file: PathBuf,
    sidecar: Option<PathBuf>,
    version_hash: Option<String>,
    artifact: Option<ArtifactSource>,
    health: Option<Health>,
    reason: Option<String>,
}

#[derive(Debug, Serialize)]
struct ListOutput {
    extensions_dir: PathBuf,
    extensions: Vec<Row>,
    cache: CacheStats,
}

fn list(settings: &Settings, json: bool) -> anyhow::Result<ExitCode> {
    let runtime = runtime_for(
        settings,
        RuntimeConfig::with_cache_dir(settings.cache_dir()),
    )?;
    let report = runtime.load_dir(&settings.extensions_dir).context(
        "run from the repository root after `make extensions`, or pass --extensions-dir",
    )?;
    let mut rows: Vec<Row> = report
        .loaded
        .iter()
        .map(|ext| {
            let health = ext.health();
            let info = ext.info();
            Row {
                id: Some(ext.id().to_owned()),
                status: if health.quarantine.is_some() {
                    "quarantined"
                } else {
                    "loaded"
                },
                kind: Some(info.kind.to_string()),
                name: Some(info.name.clone()),
                version: Some(info.version.clone()),
                currency: Some(info.currency.to_string()),
                file: ext.file().to_path_buf(),
                sidecar: ext.sidecar().map(Path::to_path_buf),
                version_hash: Some(ext.version_hash().to_owned()),
                artifact: Some(ext.artifact_source().clone()),
                reason: health.quarantine.as_ref().map(|q| q.reason.clone()),
                health: Some(health),
            }
        })
        .collect();
    rows.extend(report.skipped.iter().map(|s| Row {
        id: s.id.clone(),
        status: "skipped",
        kind: None,
        name: None,
        version: None,
        currency: None,
        file: s.file.clone(),
        sidecar: None,
        version_hash: None,
        artifact: None,
        health: None,
        reason: Some(s.reason.clone()),
    }));
    let cache = runtime.cache_stats();
    if json {
        print_json(&ListOutput {
            extensions_dir: settings.extensions_dir.clone(),
            extensions: rows,
            cache,
        })?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = table(["id", "kind", "version", "file", "status", "reason"]);
    for r in &rows {
        let file = match &r.sidecar {
            Some(sidecar) => format!("{} ({})", file_name(&r.file), file_name(sidecar)),
            None => file_name(&r.file),
        };
        t.add_row([
            r.id.clone().unwrap_or_else(|| "-".into()),
            r.kind.clone().unwrap_or_else(|| "-".into()),
            r.version.clone().unwrap_or_else(|| "-".into()),
            file,
            r.status.to_owned(),
            r.reason.clone().unwrap_or_default(),
        ]);
    }
    println!("{t}");
    println!(
        "{} loaded, {} skipped from {} (compiled {}, from cache {})",
        report.loaded.len(),
        report.skipped.len(),
        settings.extensions_dir.display(),
        cache.compiled,
        cache.disk_hits
    );
    Ok(ExitCode::SUCCESS)
}

fn check(args: CheckArgs, settings: &Settings, json: bool) -> anyhow::Result<ExitCode> {
    let is_sidecar = args.file.extension().is_some_and(|e| e == "toml");
    let spec = if is_sidecar {
        ExtensionSpec::from_sidecar(&args.file)
    } else {
        ExtensionSpec::from_file(&args.file)
    };
    let mut spec = spec.map_err(anyhow::Error::new)?;
    spec.config.extend(args.config);
    let defaults = CallLimits::default();
    spec.memory_limit_mib = args
        .memory_mib
        .or(spec.memory_limit_mib)
        .or(Some(defaults.memory_limit_mib));
    spec.call_timeout_ms = args.timeout_ms.or(spec.call_timeout_ms);
    let config = RuntimeConfig {
        // Every function gets its own verdict: no quarantine in a check.
        quarantine: QuarantinePolicy {
            after_traps: 0,
            ..QuarantinePolicy::default()
        },
        ..RuntimeConfig::with_cache_dir(settings.cache_dir())
    };
    let runtime = runtime_for(settings, config)?;
    let report = conformance::check_spec(&runtime, spec);
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

fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// A runtime with a spinner on stderr (when it is a terminal) while components compile.
fn runtime_for(_settings: &Settings, mut config: RuntimeConfig) -> anyhow::Result<Runtime> {
    if std::io::stderr().is_terminal() {
        config.on_compile = Some(spinner_hook());
    }
    Runtime::new(config).map_err(anyhow::Error::new)
}

fn spinner_hook() -> CompileHook {
    let current: Arc<Mutex<Option<ProgressBar>>> = Arc::new(Mutex::new(None));
    Arc::new(move |event: &CompileEvent| match event {
        CompileEvent::Started { file, size_bytes } => {
            let bar = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
                bar.set_style(style);
            }
            bar.set_message(format!(
                "compiling {} ({:.1} MB)…",
                file_name(file),
                *size_bytes as f64 / 1e6
            ));
            bar.enable_steady_tick(Duration::from_millis(100));
            *current.lock() = Some(bar);
        }
        CompileEvent::Finished { .. } => {
            if let Some(bar) = current.lock().take() {
                bar.finish_and_clear();
            }
        }
    })
}
