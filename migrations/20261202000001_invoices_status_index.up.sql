-- Serves a status-filtered page ("my unpaid invoices") as one index range: without the status
-- in the index, a rare status reads and discards every invoice of the user before the cursor.
CREATE INDEX invoices_user_status_created_idx ON invoices (user_id, status, created_at DESC, id DESC);
