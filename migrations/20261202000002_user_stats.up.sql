-- Per-user aggregates, so GET /stats/summary reads a few rows instead of every invoice of the
-- user. The application changes them in the transaction of each change that moves them
-- (create, send, the payment webhook: src/routes/stats.rs); this backfills existing invoices.
-- A release older than this one does not maintain them: after running one on this schema,
-- rebuild them with `migrate revert --to 20261202000001` and `migrate`.

CREATE TABLE user_stats (
    user_id                 TEXT PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    draft                   BIGINT NOT NULL,
    sent                    BIGINT NOT NULL,
    paid                    BIGINT NOT NULL,
    -- Paid invoices that had been sent, and the sum of their paid_at - sent_at: whole seconds
    -- and the remaining microseconds apart, so the sum of a busy account cannot overflow.
    paid_after_send         BIGINT NOT NULL,
    paid_after_send_seconds BIGINT NOT NULL,
    paid_after_send_micros  BIGINT NOT NULL
);

CREATE TABLE user_paid_totals (
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    currency    TEXT NOT NULL,
    total_cents BIGINT NOT NULL,
    PRIMARY KEY (user_id, currency)
);

-- Integer division and remainder truncate toward zero on both databases, so seconds * 1000000
-- + micros is the exact sum.
INSERT INTO user_stats (user_id, draft, sent, paid, paid_after_send, paid_after_send_seconds, paid_after_send_micros)
SELECT
    user_id,
    SUM(CASE WHEN status = 'draft' THEN 1 ELSE 0 END),
    SUM(CASE WHEN status = 'sent' THEN 1 ELSE 0 END),
    SUM(CASE WHEN status = 'paid' THEN 1 ELSE 0 END),
    SUM(CASE WHEN status = 'paid' AND sent_at IS NOT NULL AND paid_at IS NOT NULL THEN 1 ELSE 0 END),
    COALESCE(SUM(CASE WHEN status = 'paid' THEN (paid_at - sent_at) / 1000000 END), 0),
    COALESCE(SUM(CASE WHEN status = 'paid' THEN (paid_at - sent_at) % 1000000 END), 0)
FROM invoices
GROUP BY user_id;

INSERT INTO user_paid_totals (user_id, currency, total_cents)
SELECT user_id, currency, SUM(amount_cents)
FROM invoices
WHERE status = 'paid'
GROUP BY user_id, currency;
