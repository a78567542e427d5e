-- Accounts an operator can run (docs/accounts.md): a role and a disabled mark on each user,
-- and sessions that can end before their tokens expire.

ALTER TABLE users ADD COLUMN role TEXT NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'admin'));
ALTER TABLE users ADD COLUMN disabled_at BIGINT;

-- The admin list: newest first, keyset-paginated on (created_at, id).
CREATE INDEX users_created_idx ON users (created_at DESC, id DESC);

-- One row per signed-in device. The refresh token is never stored, only the SHA-256 of its
-- secret; a session is gone (deleted) once logged out, ended by an operator, or unused for
-- REFRESH_TOKEN_TTL_SECS.
CREATE TABLE sessions (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    refresh_hash TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    refreshed_at BIGINT NOT NULL
);

CREATE INDEX sessions_user_idx ON sessions (user_id);
CREATE INDEX sessions_refreshed_idx ON sessions (refreshed_at);
