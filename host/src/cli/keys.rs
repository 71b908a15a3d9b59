//! `sandboxer keys`: a tenant's own provider keys (BYOK) in OpenBao, as `/v1/keys` serves
//! them. The key is read from stdin (a JSON object of its fields, the body of
//! `PUT /v1/keys/{extension}`), never from an argument, so it stays out of shell history
//! and the process list; the OpenBao token comes from `BAO_TOKEN`.

use std::collections::BTreeMap;
use std::io::Read;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::output::{print_json, table};
use crate::app::{App, AppOptions, KeyRow, OpenBao, OpenBaoSettings};
use crate::domain::TenantId;
use crate::settings::Settings;

/// Where OpenBao is (the `[openbao]` of the host's sandboxer.toml); the token comes from
/// `BAO_TOKEN`.
#[derive(Debug, Clone, Args)]
pub struct OpenBaoArgs {
    /// OpenBao's address, e.g. http://127.0.0.1:8200.
    #[arg(long, env = "BAO_ADDR")]
    pub openbao_address: Option<String>,
    /// The KV v2 mount.
    #[arg(long, default_value = "secret")]
    pub openbao_mount: String,
    /// Where tenants' keys live under the mount (the host's `tenant_prefix`).
    #[arg(long, default_value = crate::app::DEFAULT_TENANT_PREFIX)]
    pub tenant_prefix: String,
}

impl OpenBaoArgs {
    /// A client of the OpenBao these flags name, `None` without an address.
    pub fn client(&self) -> anyhow::Result<Option<Arc<OpenBao>>> {
        let Some(address) = &self.openbao_address else {
            return Ok(None);
        };
        let token = std::env::var("BAO_TOKEN")
            .context("set BAO_TOKEN to an OpenBao token that may read tenants' keys")?;
        Ok(Some(Arc::new(OpenBao::new(
            OpenBaoSettings::with_defaults(
                address.clone(),
                token.trim().to_owned(),
                self.openbao_mount.clone(),
                self.tenant_prefix.clone(),
            ),
        ))))
    }
}

/// `sandboxer keys` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Store a tenant's own key for an extension; reads `{"FIELD": "VALUE", …}` on stdin.
    #[command(
        after_help = "Example:\n  printf '{\"api_key\":\"%s\"}' \"$E2B_KEY\" | sandboxer keys set acme e2b"
    )]
    Set {
        /// The tenant.
        #[arg(value_parser = parse_tenant)]
        tenant: TenantId,
        /// The extension id.
        extension: String,
    },
    /// The extensions that take a tenant's own key: set or not, fingerprint, when.
    List {
        /// The tenant.
        #[arg(value_parser = parse_tenant)]
        tenant: TenantId,
    },
    /// Remove a tenant's own key: its calls carry the operator's key again.
    Remove {
        /// The tenant.
        #[arg(value_parser = parse_tenant)]
        tenant: TenantId,
        /// The extension id.
        extension: String,
    },
}

/// The keys command group with its OpenBao flags.
#[derive(Debug, Args)]
pub struct Keys {
    #[command(flatten)]
    pub openbao: OpenBaoArgs,
    #[command(subcommand)]
    pub command: KeysCommand,
}

fn parse_tenant(s: &str) -> Result<TenantId, String> {
    TenantId::parse(s).map_err(|e| e.to_string())
}

/// Runs one `keys` command on an app that reaches OpenBao.
pub fn run(
    keys: Keys,
    settings: &Settings,
    options: AppOptions,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let bao = keys
        .openbao
        .client()?
        .context("set --openbao-address (or BAO_ADDR) to the OpenBao holding tenants' keys")?;
    let app = App::open(
        settings,
        AppOptions {
            openbao: Some(bao),
            ..options
        },
    );
    match keys.command {
        KeysCommand::Set { tenant, extension } => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read the key from stdin")?;
            // serde_json's message names the position, never the text.
            let fields: BTreeMap<String, String> = serde_json::from_str(&text).context(
                "expected a JSON object of string key fields on stdin, e.g. {\"api_key\": \"…\"}",
            )?;
            let row = app.set_key(&tenant, &extension, &fields)?;
            render(&[row], json)
        }
        KeysCommand::List { tenant } => {
            let list = app.list_keys(&tenant)?;
            if json {
                print_json(&list)?;
                return Ok(ExitCode::SUCCESS);
            }
            render(&list.keys, false)
        }
        KeysCommand::Remove { tenant, extension } => {
            let row = app.remove_key(&tenant, &extension)?;
            render(&[row], json)
        }
    }
}

fn render(rows: &[KeyRow], json: bool) -> anyhow::Result<ExitCode> {
    if json {
        if let [row] = rows {
            print_json(row)?;
        } else {
            print_json(&rows)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = table(["extension", "fields", "set", "fingerprint", "set at"]);
    for r in rows {
        t.add_row([
            r.extension.clone(),
            r.fields.join(","),
            if r.set { "yes" } else { "no" }.to_owned(),
            r.fingerprint.clone().unwrap_or_default(),
            r.set_at.clone().unwrap_or_default(),
        ]);
    }
    println!("{t}");
    Ok(ExitCode::SUCCESS)
}
