//! The statuses' schema: append-only migrations of the manager's tables, beside the
//! ledger's in the same file. Never edit a migration that has shipped.

/// Migrations of the manager's own tables, tracked in `manager_schema` (the ledger owns
/// `PRAGMA user_version`). Append only.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: sandbox statuses.
    r#"
    CREATE TABLE manager_sandboxes (
        id              TEXT    PRIMARY KEY,
        tenant          TEXT    NOT NULL,
        state           TEXT    NOT NULL CHECK (state IN
                            ('creating', 'running', 'destroying', 'destroyed', 'failed')),
        extension_id    TEXT,
        idempotency_key TEXT,
        fingerprint     TEXT    NOT NULL,
        -- The manager instance with an operation in flight on this row (see owner.rs).
        owner           TEXT,
        created_at      INTEGER NOT NULL,
        updated_at      INTEGER NOT NULL,
        doc             TEXT    NOT NULL
    ) STRICT;
    CREATE UNIQUE INDEX manager_sandboxes_idempotency
        ON manager_sandboxes (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL;
    CREATE INDEX manager_sandboxes_by_tenant ON manager_sandboxes (tenant, created_at);
    CREATE INDEX manager_sandboxes_live ON manager_sandboxes (state, extension_id)
        WHERE state IN ('creating', 'running', 'destroying');
    "#,
    // 2: a row version, incremented by every write: a compare-and-set compares it, so a
    // writer that read the row before someone else's write (a lease renewal swapping the
    // hold) loses and reads again instead of writing back stale fields.
    r#"
    ALTER TABLE manager_sandboxes ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
    "#,
    // 3: bounded lists. Pages are keyset scans on (created_at, id), newest first, per
    // tenant (optionally in one state) and over every tenant (the CLI); `id` in the
    // indexes makes the tie-break part of the order, so a page is a range scan that
    // stops at its LIMIT. The metrics gauge counts by (state, extension) from a covering
    // index over every state; that index also serves the live-slot counts, so the
    // partial one goes.
    r#"
    DROP INDEX manager_sandboxes_by_tenant;
    DROP INDEX manager_sandboxes_live;
    CREATE INDEX manager_sandboxes_page ON manager_sandboxes (tenant, created_at, id);
    CREATE INDEX manager_sandboxes_page_by_state
        ON manager_sandboxes (tenant, state, created_at, id);
    CREATE INDEX manager_sandboxes_page_all ON manager_sandboxes (created_at, id);
    CREATE INDEX manager_sandboxes_by_state ON manager_sandboxes (state, extension_id);
    "#,
];
