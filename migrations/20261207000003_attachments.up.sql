-- Files attached to invoices (docs/files.md). A row exists only for a completely stored
-- object, whose key is `attachments/{id}`; an object without a row is swept after an hour.

CREATE TABLE attachments (
    id           TEXT PRIMARY KEY,
    invoice_id   TEXT NOT NULL REFERENCES invoices (id) ON DELETE CASCADE,
    user_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    filename     TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size_bytes   BIGINT NOT NULL CHECK (size_bytes > 0),
    sha256       TEXT NOT NULL,
    created_at   BIGINT NOT NULL
);

-- An invoice's attachments, oldest first.
CREATE INDEX attachments_invoice_idx ON attachments (invoice_id, created_at, id);
-- A user's total for the quota, read from the index alone.
CREATE INDEX attachments_user_size_idx ON attachments (user_id, size_bytes);
