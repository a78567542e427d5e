-- Undoes 20261202000001_invoices_status_index.

DROP INDEX invoices_user_status_created_idx;
