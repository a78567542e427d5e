-- One schema for SQLite and PostgreSQL: portable types only. Ids are UUID text, times are
-- unix microseconds in BIGINT, money is integer cents.

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    email         TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    CONSTRAINT users_email_key UNIQUE (email)
);

CREATE TABLE invoices (
    id             TEXT PRIMARY KEY,
    user_id        TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    customer_name  TEXT NOT NULL,
    customer_phone TEXT,
    amount_cents   BIGINT NOT NULL CHECK (amount_cents > 0),
    currency       TEXT NOT NULL,
    due_date       TEXT,
    description    TEXT,
    status         TEXT NOT NULL DEFAULT 'draft' CHECK (status IN ('draft', 'sent', 'paid')),
    created_at     BIGINT NOT NULL,
    sent_at        BIGINT,
    paid_at        BIGINT
);

-- Serves "my invoices, newest first" with keyset pagination on (created_at, id).
CREATE INDEX invoices_user_created_idx ON invoices (user_id, created_at DESC, id DESC);

CREATE TABLE webhook_events (
    event_id     TEXT PRIMARY KEY,
    event_type   TEXT NOT NULL,
    invoice_id   TEXT NOT NULL REFERENCES invoices (id) ON DELETE CASCADE,
    amount_cents BIGINT NOT NULL,
    received_at  BIGINT NOT NULL
);

CREATE INDEX webhook_events_invoice_idx ON webhook_events (invoice_id);
