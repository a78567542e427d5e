-- Splits each user's counts over up to 16 rows, so a burst of changes to one user's invoices
-- (creates, sends, payments) no longer queues on a single row lock held until each commit:
-- a change updates the row of its invoice's shard, and GET /stats/summary sums them (still a
-- handful of rows). One shard alone means nothing; its columns can even be negative.
--
-- Expand, then contract: the previous release (20261202000002) keeps updating user_stats,
-- which this release neither reads nor writes, so both can serve during a rolling deploy.
-- A later release drops user_stats. Run the previous release on this schema and the shards
-- miss its changes: rebuild them with `migrate revert --to 20261202000002` and `migrate`
-- (the down migration rebuilds user_stats for it, this one the shards).

CREATE TABLE user_stats_shards (
    user_id                 TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    shard                   SMALLINT NOT NULL,
    draft                   BIGINT NOT NULL,
    sent                    BIGINT NOT NULL,
    paid                    BIGINT NOT NULL,
    paid_after_send         BIGINT NOT NULL,
    paid_after_send_seconds BIGINT NOT NULL,
    paid_after_send_micros  BIGINT NOT NULL,
    PRIMARY KEY (user_id, shard)
);

-- The existing invoices go to shard 0, counted as 20261202000002 counted them.
INSERT INTO user_stats_shards (user_id, shard, draft, sent, paid, paid_after_send, paid_after_send_seconds, paid_after_send_micros)
SELECT
    user_id,
    0,
    SUM(CASE WHEN status = 'draft' THEN 1 ELSE 0 END),
    SUM(CASE WHEN status = 'sent' THEN 1 ELSE 0 END),
    SUM(CASE WHEN status = 'paid' THEN 1 ELSE 0 END),
    SUM(CASE WHEN status = 'paid' AND sent_at IS NOT NULL AND paid_at IS NOT NULL THEN 1 ELSE 0 END),
    COALESCE(SUM(CASE WHEN status = 'paid' THEN (paid_at - sent_at) / 1000000 END), 0),
    COALESCE(SUM(CASE WHEN status = 'paid' THEN (paid_at - sent_at) % 1000000 END), 0)
FROM invoices
GROUP BY user_id;
