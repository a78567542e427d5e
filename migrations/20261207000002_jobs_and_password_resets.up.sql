-- Work done outside requests (docs/jobs.md): a queue of jobs in the application's own
-- database, the schedules of recurring ones, and the password-reset tokens the first job sends.

-- One row per job still to do, running, or failed for good; a job that succeeds is deleted.
-- `payload` is JSON text (the same on SQLite and PostgreSQL). A running job is its worker's
-- until `leased_until`; past it (the worker died) any worker may claim it again. `attempts`
-- counts the attempts toward JOB_MAX_ATTEMPTS (`jobs retry` resets it). `claim` numbers the
-- claims and only grows: every write of a worker names its claim, so one that lost its lease
-- changes nothing.
CREATE TABLE jobs (
    id           TEXT PRIMARY KEY,
    job          TEXT NOT NULL,
    payload      TEXT NOT NULL,
    state        TEXT NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'running', 'failed')),
    attempts     BIGINT NOT NULL DEFAULT 0,
    claim        BIGINT NOT NULL DEFAULT 0,
    run_at       BIGINT NOT NULL,
    leased_until BIGINT,
    last_error   TEXT,
    created_at   BIGINT NOT NULL
);

-- The claim's two ways in: a queued job that is due, a running one whose lease ran out.
CREATE INDEX jobs_due_idx ON jobs (state, run_at);
CREATE INDEX jobs_lease_idx ON jobs (state, leased_until);

-- When each recurring job is next due; whichever instance moves it forward enqueues the run.
CREATE TABLE job_schedules (
    name        TEXT PRIMARY KEY,
    next_run_at BIGINT NOT NULL
);

-- Password-reset tokens: only their SHA-256 is stored; a token is deleted when it is used.
CREATE TABLE password_resets (
    token_hash TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE INDEX password_resets_user_idx ON password_resets (user_id);
CREATE INDEX password_resets_expires_idx ON password_resets (expires_at);
