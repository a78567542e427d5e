-- Undoes 20261202000002_user_stats: the aggregates go; the invoices they came from stay.

DROP TABLE user_paid_totals;
DROP TABLE user_stats;
