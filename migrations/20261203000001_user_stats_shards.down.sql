-- Undoes 20261203000001_user_stats_shards. The release before it reads user_stats, which this
-- release did not maintain: rebuild it from the invoices before dropping the shards.

DELETE FROM user_stats;

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

DROP TABLE user_stats_shards;
