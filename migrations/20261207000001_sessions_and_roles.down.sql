DROP TABLE sessions;
DROP INDEX users_created_idx;
ALTER TABLE users DROP COLUMN disabled_at;
ALTER TABLE users DROP COLUMN role;
