-- Splits each user's counts over up to 16 rows, so a burst of changes to one user's invoices
-- (creates, sends, payments) no longer queues on a single row lock held until each commit:
-- a change updates the row of its invoice's shard, and GET /stats/summary sums them (still a
-- handful of rows). One shard alone means nothing; its columns can even be negative.
--
-- Expand, then contract: the previous release (20261202000002) keeps updating user_stats,
-- which this release neither reads nor writes, so both can serve during a rolling deploy.
-- A later release drops user_stats. Run the previous release on this schema and the shards
-- miss its changes: rebuild them with `migrate revert --to 20261202000002` and `migrate`
-- (the down migration rebuilds user_stats from the invoices, this one copies it).

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

-- Each user's counts so far go to shard 0. user_stats is exact here: the previous release
-- maintains it, and reverting this migration rebuilds it from the invoices.
INSERT INTO user_stats_shards (user_id, shard, draft, sent, paid, paid_after_send, paid_after_send_seconds, paid_after_send_micros)
SELECT user_id, 0, draft, sent, paid, paid_after_send, paid_after_send_seconds, paid_after_send_micros
FROM user_stats;
