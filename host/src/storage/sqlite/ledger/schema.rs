//! Versioned schema migrations of the SQLite ledger (`PRAGMA user_version` = number of
//! migrations applied). Append only: never edit a migration that has shipped.

/// Migration `i` brings the schema from version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    // 1: accounts, immutable transfers, idempotent requests, outbox.
    r#"
    CREATE TABLE accounts (
        id              INTEGER PRIMARY KEY,
        kind            TEXT    NOT NULL CHECK (kind IN ('tenant', 'grants', 'revenue', 'write_off')),
        name            TEXT    NOT NULL,
        currency        TEXT    NOT NULL,
        -- Cached sums of the transfers (TigerBeetle style); `verify` re-derives them.
        debits_pending  INTEGER NOT NULL DEFAULT 0,
        debits_posted   INTEGER NOT NULL DEFAULT 0,
        credits_pending INTEGER NOT NULL DEFAULT 0,
        credits_posted  INTEGER NOT NULL DEFAULT 0,
        created_at      INTEGER NOT NULL,
        UNIQUE (kind, name, currency)
    ) STRICT;

    CREATE TABLE transfers (
        id             INTEGER PRIMARY KEY,
        uid            TEXT    NOT NULL UNIQUE,
        ikey           TEXT    NOT NULL UNIQUE,
        kind           TEXT    NOT NULL CHECK (kind IN
                           ('grant', 'hold', 'post', 'void', 'overdraft', 'debt', 'write_off')),
        debit_account  INTEGER NOT NULL REFERENCES accounts (id),
        credit_account INTEGER NOT NULL REFERENCES accounts (id),
        amount         INTEGER NOT NULL CHECK (amount >= 0),
        exact          TEXT,
        currency       TEXT    NOT NULL,
        -- post / void: the hold they resolve. Unique: a hold is resolved exactly once.
        pending_id     INTEGER REFERENCES transfers (id),
        -- overdraft / debt / write_off: the hold whose excess they cover.
        hold_id        INTEGER REFERENCES transfers (id),
        sandbox_id     TEXT,
        extension      TEXT,
        note           TEXT,
        created_at     INTEGER NOT NULL,
        CHECK (debit_account <> credit_account)
    ) STRICT;
    CREATE UNIQUE INDEX transfers_resolved_once ON transfers (pending_id) WHERE pending_id IS NOT NULL;
    CREATE INDEX transfers_by_debit ON transfers (debit_account);
    CREATE INDEX transfers_by_credit ON transfers (credit_account);
    CREATE INDEX transfers_by_sandbox ON transfers (sandbox_id) WHERE sandbox_id IS NOT NULL;
    CREATE TRIGGER transfers_no_update BEFORE UPDATE ON transfers
        BEGIN SELECT RAISE(ABORT, 'transfers are immutable'); END;
    CREATE TRIGGER transfers_no_delete BEFORE DELETE ON transfers
        BEGIN SELECT RAISE(ABORT, 'transfers are immutable'); END;

    CREATE TABLE requests (
        ikey        TEXT    PRIMARY KEY,
        operation   TEXT    NOT NULL,
        fingerprint TEXT    NOT NULL,
        response    TEXT    NOT NULL,
        created_at  INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE outbox (
        seq          INTEGER PRIMARY KEY,
        id           TEXT    NOT NULL UNIQUE,
        payload      TEXT    NOT NULL,
        created_at   INTEGER NOT NULL,
        delivered_at INTEGER
    ) STRICT;
    CREATE INDEX outbox_undelivered ON outbox (seq) WHERE delivered_at IS NULL;
    "#,
];
