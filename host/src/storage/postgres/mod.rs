//! The PostgreSQL backend: a database several hosts can share. The plumbing its stores
//! share is here: the URL with its password hidden ([`redact`]), the connection pool
//! (`r2d2` over the sync `postgres` client), what a server error means for the operator,
//! and the versioned schema ([`schema`]: one `sandboxer_schema` row per component,
//! migrations checked and applied at open under an advisory lock).
//!
//! The ledger ([`ledger::PgCreditsStore`]) and the sandbox statuses
//! ([`sandboxes::PgSandboxStore`]) live here, in one database (docs/database.md).

pub(crate) mod ledger;
pub(crate) mod sandboxes;
pub(crate) mod schema;

use std::str::FromStr;
use std::time::Duration;

use postgres::error::SqlState;
use postgres::{Client, Config, NoTls};
use r2d2_postgres::PostgresConnectionManager;
use r2d2_postgres::r2d2;

/// The pool of a store.
pub(crate) type Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;

/// How long opening a connection may take before the server counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A PostgreSQL failure: the database (its URL, password hidden), whether the database
/// is not ours or is damaged, what went wrong, and whether retrying the transaction
/// may succeed (a deadlock or serialization failure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PgError {
    /// The URL with its password replaced by `***`.
    pub url: String,
    /// The database is not ours, or from a newer build.
    pub corrupt: bool,
    /// What went wrong.
    pub message: String,
    /// A transaction that failed only because of another one: run it again.
    pub retry: bool,
}

impl PgError {
    pub(crate) fn corrupt(url: &str, message: impl Into<String>) -> Self {
        Self {
            url: url.to_owned(),
            corrupt: true,
            message: message.into(),
            retry: false,
        }
    }

    pub(crate) fn other(url: &str, message: impl Into<String>) -> Self {
        Self {
            url: url.to_owned(),
            corrupt: false,
            message: message.into(),
            retry: false,
        }
    }

    /// What `e`, raised on the database at `url` (redacted), means for the operator.
    pub(crate) fn from_pg(url: &str, e: &postgres::Error) -> Self {
        let Some(db) = e.as_db_error() else {
            // No answer from the server (refused, timed out, closed), or a client error.
            let mut message = e.to_string();
            if let Some(src) = std::error::Error::source(e) {
                let s = src.to_string();
                if !message.contains(&s) {
                    message = format!("{message}: {s}");
                }
            }
            if e.is_closed() {
                message.push_str(" (the connection to the server was lost)");
            } else if message.contains("connecting") || message.contains("communicating") {
                message.push_str(" (is the server running and reachable at this address?)");
            }
            return Self::other(url, message);
        };
        let code = db.code();
        let retry = *code == SqlState::T_R_DEADLOCK_DETECTED
            || *code == SqlState::T_R_SERIALIZATION_FAILURE;
        let hint = if *code == SqlState::INVALID_PASSWORD
            || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        {
            " (check the user and password in the database URL)"
        } else if *code == SqlState::INVALID_CATALOG_NAME {
            " (create the database first, or fix its name in the URL)"
        } else if *code == SqlState::INSUFFICIENT_PRIVILEGE {
            " (the user may not do this; check its grants)"
        } else {
            ""
        };
        Self {
            url: url.to_owned(),
            corrupt: false,
            message: format!(
                "{}: {} [{}]{hint}",
                db.severity(),
                db.message(),
                code.code()
            ),
            retry,
        }
    }
}

/// Attaches the database URL to a client error (`.at(url)?`).
pub(crate) trait AtUrl<T> {
    /// The result with its error naming `url`.
    fn at(self, url: &str) -> Result<T, PgError>;
}

impl<T> AtUrl<T> for Result<T, postgres::Error> {
    fn at(self, url: &str) -> Result<T, PgError> {
        self.map_err(|e| PgError::from_pg(url, &e))
    }
}

/// The URL (`postgres://user:password@host/db?…`) or key/value string
/// (`host=… password=…`) with its password replaced by `***`, fit for messages and logs.
pub fn redact(url: &str) -> String {
    if let Some(rest) = url
        .strip_prefix("postgres://")
        .map(|r| ("postgres://", r))
        .or_else(|| {
            url.strip_prefix("postgresql://")
                .map(|r| ("postgresql://", r))
        })
    {
        let (scheme, rest) = rest;
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let authority = match authority.rfind('@') {
            Some(at) => {
                let (userinfo, host) = authority.split_at(at);
                match userinfo.find(':') {
                    Some(colon) => format!("{}:***{host}", &userinfo[..colon]),
                    None => authority.to_owned(),
                }
            }
            None => authority.to_owned(),
        };
        // A password may also come as a query parameter.
        let tail = match tail.find('?') {
            Some(q) => {
                let (path, query) = tail.split_at(q + 1);
                let query: Vec<String> = query
                    .split('&')
                    .map(|kv| match kv.split_once('=') {
                        Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                        _ => kv.to_owned(),
                    })
                    .collect();
                format!("{path}{}", query.join("&"))
            }
            None => tail.to_owned(),
        };
        return format!("{scheme}{authority}{tail}");
    }
    // Key/value form: password=secret or password='se cret'.
    let mut out = String::with_capacity(url.len());
    let mut rest = url;
    while let Some(i) = rest.find("password") {
        let (before, after) = rest.split_at(i);
        out.push_str(before);
        out.push_str("password");
        let after = &after["password".len()..];
        let trimmed = after.trim_start();
        if let Some(value) = trimmed.strip_prefix('=') {
            let value = value.trim_start();
            let end = if let Some(quoted) = value.strip_prefix('\'') {
                quoted.find('\'').map(|e| e + 2).unwrap_or(value.len())
            } else {
                value.find(char::is_whitespace).unwrap_or(value.len())
            };
            out.push_str("=***");
            rest = &value[end..];
        } else {
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The client configuration of `url`, with a connect timeout when it sets none.
pub(crate) fn config(url: &str, shown: &str) -> Result<Config, PgError> {
    let mut config = Config::from_str(url)
        .map_err(|e| PgError::other(shown, format!("not a usable PostgreSQL URL: {e}")))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("sandboxer-host");
    }
    Ok(config)
}

/// One connection, made now: its error is the server's own answer (refused, unknown
/// database, wrong password), which a pool would hide behind a timeout.
pub(crate) fn connect(config: &Config, shown: &str) -> Result<Client, PgError> {
    config.connect(NoTls).at(shown)
}

/// Every pooled connection commits durably: `synchronous_commit` on, whatever the
/// server's default, so an acknowledged write has reached the server's disk.
#[derive(Debug)]
struct Durable;

impl r2d2::CustomizeConnection<Client, postgres::Error> for Durable {
    fn on_acquire(&self, conn: &mut Client) -> Result<(), postgres::Error> {
        conn.batch_execute("SET synchronous_commit TO on")
    }
}

/// A pool of at most `size` connections to the database of `config`, opened lazily.
pub(crate) fn pool(config: Config, size: u32) -> Pool {
    r2d2::Pool::builder()
        .max_size(size.max(1))
        .min_idle(Some(0))
        .connection_timeout(CONNECT_TIMEOUT)
        .connection_customizer(Box::new(Durable))
        .build_unchecked(PostgresConnectionManager::new(config, NoTls))
}
