//! `sandboxer sandbox exec|cp|ls`: run a command in a running sandbox (its output
//! streamed to the terminal, the command's exit code as ours), copy files in and out, list
//! a folder. The same [`App`] use cases as `POST /v1/sandboxes/{id}/exec` and
//! `…/files/{path}`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use super::output::{print_json, table};
use super::sandbox::parse_tenant;
use crate::app::{App, ExecEvent, ExecSink};
use crate::domain::{
    Command, ExecRequest, Exit, ExitStatus, FileKind, OutputStream, Scope, TenantId,
};

/// Arguments of `sandboxer sandbox exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Sandbox id (`sb-…`).
    pub id: String,
    /// Refuse unless the sandbox belongs to this tenant.
    #[arg(long, value_parser = parse_tenant)]
    pub tenant: Option<TenantId>,
    /// Kill the command after this many seconds (default 60, at most 3600).
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: Option<u64>,
    /// An environment variable for the command (repeatable).
    #[arg(long = "env", value_name = "K=V", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Working folder inside the sandbox (relative to its workspace).
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<String>,
    /// Run the words as one line by `/bin/sh -c` (pipes, globs, `&&`).
    #[arg(long)]
    pub shell: bool,
    /// The command and its arguments, after `--`.
    #[arg(required = true, last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Arguments of `sandboxer sandbox cp`.
#[derive(Debug, Args)]
pub struct CpArgs {
    /// From: a local file, or `SANDBOX:PATH`.
    pub from: String,
    /// To: `SANDBOX:PATH`, or a local file.
    pub to: String,
    /// Refuse unless the sandbox belongs to this tenant.
    #[arg(long, value_parser = parse_tenant)]
    pub tenant: Option<TenantId>,
}

/// Arguments of `sandboxer sandbox ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// `SANDBOX` (its workspace) or `SANDBOX:DIR`.
    pub target: String,
    /// Refuse unless the sandbox belongs to this tenant.
    #[arg(long, value_parser = parse_tenant)]
    pub tenant: Option<TenantId>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected K=V, got {s:?}")),
    }
}

fn scope(tenant: Option<TenantId>) -> Scope {
    tenant.map_or(Scope::Operator, Scope::Tenant)
}

/// The exit code of ours for how the command ended: its own code when it exited, else
/// the shell's conventions (124 timed out, 137 killed, 127 could not run).
pub fn exit_code(exit: &Exit) -> u8 {
    match exit.status {
        ExitStatus::Exited => exit
            .exit_code
            .map_or(1, |c| u8::try_from(c.rem_euclid(256)).unwrap_or(1)),
        ExitStatus::TimedOut => 124,
        ExitStatus::Killed => 137,
        ExitStatus::Failed => 127,
    }
}

/// Writes a streamed command's output to our stdout and stderr as it comes.
struct Terminal {
    exit: Option<(Exit, bool)>,
}

impl ExecSink for Terminal {
    fn send(&mut self, event: ExecEvent) -> bool {
        match event {
            ExecEvent::Started { .. } => true,
            ExecEvent::Output { stream, data } => {
                let ok = match stream {
                    OutputStream::Stdout => {
                        let mut out = std::io::stdout().lock();
                        out.write_all(&data.0).and_then(|()| out.flush())
                    }
                    OutputStream::Stderr => {
                        let mut err = std::io::stderr().lock();
                        err.write_all(&data.0).and_then(|()| err.flush())
                    }
                };
                // A closed pipe (`| head`): stop the command.
                ok.is_ok()
            }
            ExecEvent::Exit { exit, truncated } => {
                self.exit = Some((exit, truncated));
                true
            }
        }
    }
}

/// Runs `sandboxer sandbox exec`.
pub fn exec(a: ExecArgs, app: &App, json: bool) -> anyhow::Result<ExitCode> {
    let command = if a.shell {
        Command::Shell(a.command.join(" "))
    } else {
        Command::Argv(a.command)
    };
    let request = ExecRequest {
        command,
        env: a.env,
        cwd: a.cwd,
        stdin: Vec::new(),
        keep_stdin_open: false,
        timeout_ms: a.timeout.map_or(0, |s| s * 1000),
        output_limit_bytes: 0,
    };
    let scope = scope(a.tenant);
    if json {
        let answer = app.exec(&scope, &a.id, request)?;
        print_json(&answer)?;
        return Ok(ExitCode::from(exit_code(&answer.exit)));
    }
    let mut term = Terminal { exit: None };
    app.exec_streamed(&scope, &a.id, request, &mut term)?;
    let Some((exit, truncated)) = term.exit else {
        // The output went nowhere (a closed pipe); the command was killed.
        return Ok(ExitCode::from(141));
    };
    if truncated {
        eprintln!("sandboxer: output over the cap was dropped");
    }
    match exit.status {
        ExitStatus::Exited => {}
        ExitStatus::TimedOut => eprintln!(
            "sandboxer: the command timed out after {} ms and was killed",
            exit.duration_ms
        ),
        ExitStatus::Killed => eprintln!("sandboxer: the command was killed ({})", exit.detail),
        ExitStatus::Failed => eprintln!("sandboxer: the command could not run: {}", exit.detail),
    }
    Ok(ExitCode::from(exit_code(&exit)))
}

/// `sb-…:PATH` → (id, path); a local path otherwise.
fn remote(arg: &str) -> Option<(&str, &str)> {
    let (id, path) = arg.split_once(':')?;
    (id.starts_with("sb-") && !id.contains('/')).then_some((id, path))
}

/// Runs `sandboxer sandbox cp`.
pub fn cp(a: CpArgs, app: &App, json: bool) -> anyhow::Result<ExitCode> {
    let scope = scope(a.tenant);
    match (remote(&a.from), remote(&a.to)) {
        (None, Some((id, path))) => {
            let data = std::fs::read(&a.from)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", a.from))?;
            let path = if path.is_empty() || path.ends_with('/') {
                format!("{path}{}", file_name(Path::new(&a.from))?)
            } else {
                path.to_owned()
            };
            let written = app.write_file(&scope, id, &path, &data)?;
            if json {
                print_json(&written)?;
            } else {
                println!(
                    "{} → {id}:{} ({} bytes)",
                    a.from, written.path, written.size
                );
            }
        }
        (Some((id, path)), None) => {
            let data = app.read_file(&scope, id, path)?;
            let mut dest = PathBuf::from(&a.to);
            if dest.is_dir() {
                dest.push(file_name(Path::new(path))?);
            }
            std::fs::write(&dest, &data)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", dest.display()))?;
            if json {
                print_json(&serde_json::json!({"path": dest, "size": data.len()}))?;
            } else {
                println!("{id}:{path} → {} ({} bytes)", dest.display(), data.len());
            }
        }
        (Some(_), Some(_)) => {
            anyhow::bail!("copy between two sandboxes is not supported: copy to a local file first")
        }
        (None, None) => anyhow::bail!(
            "name a sandbox on one side, e.g. `sandboxer sandbox cp data.csv sb-…:in/data.csv`"
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn file_name(p: &Path) -> anyhow::Result<String> {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| anyhow::anyhow!("{} names no file", p.display()))
}

/// Runs `sandboxer sandbox ls`.
pub fn ls(a: LsArgs, app: &App, json: bool) -> anyhow::Result<ExitCode> {
    let (id, path) = remote(&a.target).unwrap_or((a.target.as_str(), ""));
    let list = app.list_files(&scope(a.tenant), id, path.trim_end_matches('/'))?;
    if json {
        print_json(&list)?;
        return Ok(ExitCode::SUCCESS);
    }
    if list.entries.is_empty() {
        println!("empty folder");
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = table(["name", "kind", "size", "modified (UTC)"]);
    for e in &list.entries {
        let kind = match e.kind {
            FileKind::File => "file",
            FileKind::Directory => "folder",
            FileKind::Symlink => "symlink",
            FileKind::Other => "other",
        };
        let modified = e
            .modified_ms
            .and_then(|ms| chrono::DateTime::from_timestamp_millis(i64::try_from(ms).ok()?))
            .map_or_else(
                || "-".to_owned(),
                |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
            );
        t.add_row([
            e.name.clone(),
            kind.to_owned(),
            e.size.to_string(),
            modified,
        ]);
    }
    println!("{t}");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_paths_are_told_from_local_ones() {
        assert_eq!(remote("sb-123:in/a.txt"), Some(("sb-123", "in/a.txt")));
        assert_eq!(remote("sb-123:"), Some(("sb-123", "")));
        assert_eq!(remote("./a:b"), None);
        assert_eq!(remote("C:/x"), None);
        assert_eq!(remote("dir/sb-1:x"), None);
    }

    #[test]
    fn exit_codes_follow_the_shell() {
        let e = |status, code| Exit {
            status,
            exit_code: code,
            duration_ms: 0,
            cpu_ms: None,
            detail: String::new(),
        };
        assert_eq!(exit_code(&e(ExitStatus::Exited, Some(3))), 3);
        assert_eq!(exit_code(&e(ExitStatus::Exited, Some(256))), 0);
        assert_eq!(exit_code(&e(ExitStatus::TimedOut, None)), 124);
        assert_eq!(exit_code(&e(ExitStatus::Killed, None)), 137);
        assert_eq!(exit_code(&e(ExitStatus::Failed, None)), 127);
    }
}
