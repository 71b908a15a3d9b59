//! Versioned schema migrations on PostgreSQL. The table `sandboxer_schema` is the marker
//! of a sandboxer database and holds one row per component (`ledger` today) with the
//! number of its migrations applied. Opening a store checks and migrates in one
//! transaction under an advisory lock, so hosts starting together migrate once:
//!
//! - no marker and no tables: a new database, migrated from zero;
//! - no marker but tables: another application's database, refused untouched;
//! - a version above what this build knows: refused, naming both versions.
//!
//! Append only: never edit a migration that has shipped.

use postgres::Client;

use super::{AtUrl, PgError};

/// The advisory lock (two-key form) held while a schema is checked and migrated.
const MIGRATION_LOCK: (i32, i32) = (0x5342_5853, 0);

/// A component's versioned schema: migration `i` brings version `i` to `i + 1`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Schema {
    /// The component's row in `sandboxer_schema` (and its name in messages).
    pub component: &'static str,
    /// The migrations.
    pub migrations: &'static [&'static str],
}

impl Schema {
    /// How many migrations this build knows.
    pub(crate) fn known(&self) -> i32 {
        i32::try_from(self.migrations.len()).unwrap_or(i32::MAX)
    }

    /// Checks the database and brings this component's schema up to date.
    pub(crate) fn migrate(&self, client: &mut Client, url: &str) -> Result<(), PgError> {
        let known = self.known();
        let mut tx = client.transaction().at(url)?;
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, $2)",
            &[&MIGRATION_LOCK.0, &MIGRATION_LOCK.1],
        )
        .at(url)?;
        let marked: bool = tx
            .query_one("SELECT to_regclass('sandboxer_schema') IS NOT NULL", &[])
            .and_then(|r| r.try_get(0))
            .at(url)?;
        if !marked {
            let tables: i64 = tx
                .query_one(
                    "SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname = current_schema()",
                    &[],
                )
                .and_then(|r| r.try_get(0))
                .at(url)?;
            if tables > 0 {
                return Err(PgError::corrupt(
                    url,
                    format!(
                        "a PostgreSQL database with {tables} table(s) but no sandboxer_schema table: \
                         it belongs to another application, and was left untouched; give the host \
                         a database of its own"
                    ),
                ));
            }
            tx.batch_execute(
                "CREATE TABLE sandboxer_schema (
                    component  TEXT        PRIMARY KEY,
                    version    INTEGER     NOT NULL CHECK (version >= 0),
                    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
                )",
            )
            .at(url)?;
        }
        let version: i32 = tx
            .query_opt(
                "SELECT version FROM sandboxer_schema WHERE component = $1",
                &[&self.component],
            )
            .and_then(|row| row.map(|r| r.try_get(0)).transpose())
            .at(url)?
            .unwrap_or(0);
        if version > known {
            return Err(PgError::corrupt(
                url,
                format!(
                    "{} schema version {version} is newer than this build understands ({known}); \
                     run a sandboxer-host at least as new as the one that migrated it",
                    self.component
                ),
            ));
        }
        if version == known {
            return tx.commit().at(url);
        }
        let from = usize::try_from(version).unwrap_or(0);
        for sql in &self.migrations[from..] {
            tx.batch_execute(sql).at(url)?;
        }
        tx.execute(
            "INSERT INTO sandboxer_schema (component, version) VALUES ($1, $2) \
             ON CONFLICT (component) DO UPDATE SET version = EXCLUDED.version, updated_at = now()",
            &[&self.component, &known],
        )
        .at(url)?;
        tx.commit().at(url)?;
        tracing::info!(
            component = self.component,
            from = version,
            to = known,
            "database schema migrated"
        );
        Ok(())
    }
}

/// The ledger's migrations (the same tables as the SQLite ledger's, in PostgreSQL types).
pub(crate) const LEDGER: Schema = Schema {
    component: "ledger",
    migrations: &[
        // 1: accounts, immutable transfers, idempotent requests, outbox.
        r#"
        CREATE TABLE accounts (
            id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            kind            TEXT   NOT NULL CHECK (kind IN ('tenant', 'grants', 'revenue', 'write_off')),
            name            TEXT   NOT NULL,
            currency        TEXT   NOT NULL,
            -- Cached sums of the transfers (TigerBeetle style); `verify` re-derives them.
            debits_pending  BIGINT NOT NULL DEFAULT 0,
            debits_posted   BIGINT NOT NULL DEFAULT 0,
            credits_pending BIGINT NOT NULL DEFAULT 0,
            credits_posted  BIGINT NOT NULL DEFAULT 0,
            created_at      BIGINT NOT NULL,
            UNIQUE (kind, name, currency)
        );

        CREATE TABLE transfers (
            id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            uid            TEXT   NOT NULL UNIQUE,
            ikey           TEXT   NOT NULL UNIQUE,
            kind           TEXT   NOT NULL CHECK (kind IN
                               ('grant', 'hold', 'post', 'void', 'overdraft', 'debt', 'write_off')),
            debit_account  BIGINT NOT NULL REFERENCES accounts (id),
            credit_account BIGINT NOT NULL REFERENCES accounts (id),
            amount         BIGINT NOT NULL CHECK (amount >= 0),
            exact          TEXT,
            currency       TEXT   NOT NULL,
            -- post / void: the hold they resolve. Unique: a hold is resolved exactly once.
            pending_id     BIGINT REFERENCES transfers (id),
            -- overdraft / debt / write_off: the hold whose excess they cover.
            hold_id        BIGINT REFERENCES transfers (id),
            sandbox_id     TEXT,
            extension      TEXT,
            note           TEXT,
            created_at     BIGINT NOT NULL,
            CHECK (debit_account <> credit_account)
        );
        CREATE UNIQUE INDEX transfers_resolved_once ON transfers (pending_id) WHERE pending_id IS NOT NULL;
        CREATE INDEX transfers_by_debit ON transfers (debit_account, id);
        CREATE INDEX transfers_by_credit ON transfers (credit_account, id);
        CREATE INDEX transfers_by_sandbox ON transfers (sandbox_id, id) WHERE sandbox_id IS NOT NULL;
        CREATE FUNCTION sandboxer_transfers_immutable() RETURNS trigger LANGUAGE plpgsql AS
            $$ BEGIN RAISE EXCEPTION 'transfers are immutable'; END $$;
        CREATE TRIGGER transfers_immutable BEFORE UPDATE OR DELETE ON transfers
            FOR EACH ROW EXECUTE FUNCTION sandboxer_transfers_immutable();

        CREATE TABLE requests (
            ikey        TEXT   PRIMARY KEY,
            operation   TEXT   NOT NULL,
            fingerprint TEXT   NOT NULL,
            response    TEXT   NOT NULL,
            created_at  BIGINT NOT NULL
        );

        CREATE TABLE outbox (
            seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            id           TEXT   NOT NULL UNIQUE,
            payload      TEXT   NOT NULL,
            created_at   BIGINT NOT NULL,
            delivered_at BIGINT
        );
        CREATE INDEX outbox_undelivered ON outbox (seq) WHERE delivered_at IS NULL;
        "#,
    ],
};

/// The sandbox statuses' migrations (the same tables as the SQLite store's, with the
/// lease table as a migration from the start).
pub(crate) const SANDBOXES: Schema = Schema {
    component: "sandboxes",
    migrations: &[
        // 1: sandbox statuses and lease coverage.
        r#"
        CREATE TABLE manager_sandboxes (
            id              TEXT   PRIMARY KEY,
            tenant          TEXT   NOT NULL,
            state           TEXT   NOT NULL CHECK (state IN
                                ('creating', 'running', 'destroying', 'destroyed', 'failed')),
            extension_id    TEXT,
            idempotency_key TEXT,
            fingerprint     TEXT   NOT NULL,
            -- The manager instance (host) with an operation in flight on this row.
            owner           TEXT,
            created_at      BIGINT NOT NULL,
            updated_at      BIGINT NOT NULL,
            doc             TEXT   NOT NULL,
            -- Incremented by every write: what a compare-and-set compares.
            version         BIGINT NOT NULL DEFAULT 0
        );
        CREATE UNIQUE INDEX manager_sandboxes_idempotency
            ON manager_sandboxes (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL;
        CREATE INDEX manager_sandboxes_page ON manager_sandboxes (tenant, created_at, id);
        CREATE INDEX manager_sandboxes_page_by_state
            ON manager_sandboxes (tenant, state, created_at, id);
        CREATE INDEX manager_sandboxes_page_all ON manager_sandboxes (created_at, id);
        CREATE INDEX manager_sandboxes_by_state ON manager_sandboxes (state, extension_id);

        CREATE TABLE manager_leases (
            sandbox_id      TEXT   PRIMARY KEY,
            covered_secs    BIGINT NOT NULL,
            unpaid_since_ms BIGINT
        );
        "#,
    ],
};
